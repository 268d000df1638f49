"""AUTOMATIC1111 / Forge / reForge command-line flags of Perfusion (read before the command line is parsed)."""


def preload(parser) -> None:
    parser.add_argument(
        "--perfusion-dir", type=str, default=None,
        help="folder of Perfusion concept files (default: models/perfusion)",
    )

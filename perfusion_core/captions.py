"""Caption corpora for estimating the text-encoder second moment: the shipped one or a user's own."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from .errors import PerfusionError

DEFAULT_CAPTIONS: Path = Path(__file__).resolve().parent / "data" / "captions.txt.gz"
_GZIP_MAGIC = b"\x1f\x8b"
_HINT = "give a UTF-8 text file (.txt or .txt.gz) with one caption per line"


def load_captions(path: str | os.PathLike | None = None) -> list[str]:
    """Captions from `path` (default: the file `$PERFUSION_CAPTIONS` names, else the shipped corpus), one per
    line.

    Plain text or gzip (recognised by content, whatever the name). Lines are stripped; empty lines and
    lines starting with `#` are skipped. Raises `PerfusionError` for a missing, unreadable, corrupt or
    empty file.
    """
    path = Path(path if path is not None else os.environ.get("PERFUSION_CAPTIONS") or DEFAULT_CAPTIONS)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PerfusionError(f"caption file {path} does not exist: {_HINT}") from None
    except OSError as e:
        raise PerfusionError(f"cannot read caption file {path} ({e.strerror or e}): {_HINT}") from None
    try:
        if data.startswith(_GZIP_MAGIC):
            data = gzip.decompress(data)
        text = data.decode("utf-8-sig")  # tolerate the byte-order mark some editors write
    except (OSError, EOFError, zlib.error) as e:
        raise PerfusionError(f"caption file {path} is not a valid gzip file ({e}): {_HINT}") from None
    except UnicodeDecodeError as e:
        raise PerfusionError(f"caption file {path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                             f"{_HINT}") from None
    captions = [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]
    if not captions:
        raise PerfusionError(f"caption file {path} is empty (no captions, only blank or # lines): {_HINT}")
    return captions

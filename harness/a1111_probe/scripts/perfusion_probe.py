"""A test-only web UI extension that tests/test_a1111_server.py links into its server's `extensions/`: it lists the
Perfusion cards as the extra-networks page builds them."""

from modules import script_callbacks, ui_extra_networks

CARD_FIELDS = ("name", "description", "search_terms", "metadata")


def _routes(_demo, app) -> None:
    @app.get("/perfusion-probe/v1/cards")
    def cards() -> list[dict]:
        page = next(p for p in ui_extra_networks.extra_pages if p.name == "perfusion")
        return [{key: item[key] for key in CARD_FIELDS} for item in page.list_items()]


script_callbacks.on_app_started(_routes)

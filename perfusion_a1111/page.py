"""The "Perfusion" page of the extra-networks cards: one card per concept file."""

from __future__ import annotations

from modules import shared, ui_extra_networks
from modules.ui_extra_networks import quote_js

from perfusion_core import PerfusionError
from perfusion_core.knobs import GATE

from .library import ConceptLibrary


class PerfusionPage(ui_extra_networks.ExtraNetworksPage):
    def __init__(self, library: ConceptLibrary) -> None:
        super().__init__("Perfusion")
        self.library = library

    def refresh(self) -> None:
        self.library.refresh()

    def list_items(self):
        self.library.refresh()
        for index, name in enumerate(list(self.library.files)):
            item = self.create_item(name, index)
            if item is not None:
                yield item

    def create_item(self, name: str, index: int | None = None, enable_filter: bool = True) -> dict | None:
        try:
            file = self.library.find(name)
        except PerfusionError:  # removed since the page was listed
            return None
        stem = str(file.path.with_suffix(""))
        item = {
            "name": name,
            "filename": str(file.path),
            "shorthash": file.shorthash,
            "preview": self.find_preview(stem) or file.thumbnail or None,
            "description": file.summary if file.error else self.find_description(stem) or file.summary,
            "search_terms": [self.search_terms_from_path(str(file.path)), file.word, file.superclass, file.family],
            "local_preview": f"{stem}.{shared.opts.samples_format}",
            "metadata": file.card_metadata(),
            "sort_keys": {"default": index, **self.get_sort_keys(str(file.path))},
        }
        self.read_user_metadata(item)
        beta = item["user_metadata"].get("preferred weight") or GATE["beta"].default
        item["prompt"] = quote_js(file.card_prompt(float(beta)))
        return item

    def allowed_directories_for_previews(self) -> list[str]:
        return [str(self.library.folder)]


"""Pasting an infotext: tags name the concept by the local file that has the recorded hash."""

from __future__ import annotations

from .library import ConceptLibrary
from .tags import parse_hashes, rename_tags

PROMPT_FIELDS = ("Prompt", "Hires prompt")


def rename_by_hash(params: dict, library: ConceptLibrary) -> None:
    """Rewrite `<perfusion:NAME` in the pasted prompts to the local name of the file with NAME's hash."""
    hashes = parse_hashes(params.get("Perfusion hashes", ""))
    if not hashes:
        return
    library.refresh()
    renames = {}
    for name, shorthash in hashes.items():
        file = library.by_hash(shorthash)
        if file is not None and file.name != name:
            renames[name] = file.name
    for key in PROMPT_FIELDS:
        if isinstance(params.get(key), str):
            params[key] = rename_tags(params[key], renames)

"""Trigger words in prompts and vocabularies, the same for every host."""

from __future__ import annotations

import re
from collections.abc import Mapping


def in_vocabulary(tokenizer, word: str) -> bool:
    """Whether `word` is already a token of `tokenizer` (CLIP's BPE holds a whole word as `word</w>`)."""
    vocabulary = tokenizer.get_vocab()
    return word in vocabulary or f"{word}</w>" in vocabulary


def to_superclass(prompt: str, superclasses: Mapping[str, str]) -> str:
    """`prompt` with each concept word (`superclasses` maps it to its superclass word) replaced where it stands as a
    whole word, in any case: with `{"hugsy": "teddy"}`, "Hugsy, hugsy!" becomes "teddy, teddy!" and "hugsys" stays."""
    if not superclasses:
        return prompt
    lookup = {word.lower(): superclass for word, superclass in superclasses.items()}
    words = "|".join(re.escape(word) for word in sorted(lookup, key=len, reverse=True))
    return re.sub(rf"(?<!\w)({words})(?!\w)", lambda m: lookup[m.group(1).lower()], prompt, flags=re.IGNORECASE)

"""Trigger words in prompts and vocabularies, the same for every host."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from .errors import TrainingError


def in_vocabulary(tokenizer, word: str) -> bool:
    """Whether `word` is already a token of `tokenizer` (CLIP's BPE lower-cases and holds a whole word as
    `word</w>`)."""
    vocabulary = tokenizer.get_vocab()
    return any(w in vocabulary for w in (word, word.lower(), f"{word.lower()}</w>"))


PROMPT_SYNTAX = "<>:,()[]{}"  # characters that prompt syntax (weights, tags, wildcards) of some host reads


def check_training_words(word: str, superclass: str) -> None:
    """Refuse a concept word or superclass that is not one plain word (the tokenizers' check follows, per host)."""
    for label, value, example in (("concept word", word, "hugsy"), ("superclass", superclass, "teddy")):
        if not value or any(c.isspace() or c in PROMPT_SYNTAX for c in value):
            raise TrainingError(f"the {label} {value!r} must be one plain word without spaces or any of "
                                f"{PROMPT_SYNTAX}, e.g. '{example}'")


def superclass_token(superclass: str, tokenize: Callable[[str], list[list[int]]]) -> list[int]:
    """The superclass's one token id per text encoder; `tokenize(text)` gives its ids without special tokens, one
    list per encoder. `TrainingError` where a tokenizer splits it, suggesting the words of it that are one token."""
    ids = tokenize(superclass)
    if any(len(i) != 1 for i in ids):
        parts = [p for p in superclass.split() if p != superclass and all(len(i) == 1 for i in tokenize(p))]
        hint = ", ".join(repr(p) for p in parts) if parts else "'dog', 'teddy' or 'sculpture'"
        raise TrainingError(f"the superclass {superclass!r} is {max(len(i) for i in ids)} tokens for this model's "
                            f"tokenizer; it must be one token: use a single common noun such as {hint}")
    return [i[0] for i in ids]


def known_word(word: str) -> TrainingError:
    """The error for training a concept on a word the model already knows."""
    return TrainingError(f"the concept word {word!r} is already a word of this model's vocabulary, so training would "
                         "change what it means in every prompt: choose a made-up word such as 'hugsy'")


def whole_words(words: Iterable[str]) -> re.Pattern:
    """A pattern of `words` where they stand as whole words, in any case, and not as a name after a colon
    (ComfyUI's `embedding:hugsy`)."""
    alternatives = "|".join(re.escape(w) for w in sorted({w.lower() for w in words}, key=len, reverse=True))
    return re.compile(rf"(?<![\w:])({alternatives})(?!\w)", re.IGNORECASE)


def mentions(prompt: str, words: Iterable[str]) -> bool:
    """Whether one of `words` stands in `prompt` as a whole word, in any case."""
    words = list(words)
    return bool(words) and whole_words(words).search(prompt) is not None


def to_superclass(prompt: str, superclasses: Mapping[str, str]) -> str:
    """`prompt` with each concept word (`superclasses` maps it to its superclass word) replaced where it stands as a
    whole word, in any case: with `{"hugsy": "teddy"}`, "Hugsy, hugsy!" becomes "teddy, teddy!" and "hugsys" stays."""
    if not superclasses:
        return prompt
    lookup = {word.lower(): superclass for word, superclass in superclasses.items()}
    return whole_words(lookup).sub(lambda m: lookup[m.group(1).lower()], prompt)

"""The CLIP side: a per-clone tokenizer that maps trigger words to learned embeddings, and the
second encoding (superclass word in place of the trigger) that global locking needs."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping

import comfy.conds
from torch import Tensor, nn

from ..perfusion_core import Concept, IncompatibleConceptError
from ..perfusion_core.layers import skip_layer_name
from ..perfusion_core.words import mentions, to_superclass, whole_words
from .patching import SUPERCLASS_CONTEXT

SUPERCLASS_TOKENS = "perfusion_superclass"
"""Key, in a token dict, of the prompt tokenized with each globally locked trigger replaced by its superclass."""
_ENCODE = "encode_token_weights"


def encoders(clip) -> list[tuple[str, object, nn.Module]]:
    """`(name, SDTokenizer, text encoder)` of each text encoder of `clip`, CLIP-L first (the file's order)."""
    return [(name, tokenizer, getattr(clip.cond_stage_model, name))
            for name, tokenizer in _named_tokenizers(base_tokenizer(clip.tokenizer))]


def text_encoder_layer(clip) -> str:
    """The layer of the (first) text encoder that the UNet reads, named as concept files name it."""
    _, _, encoder = encoders(clip)[0]
    # the encoder's own setting, not its current one: the last encode of a CLIP Set Last Layer clone leaves that
    # clone's layer on the shared module until the next encode resets it
    layer, index = encoder.options_default[:2]
    if clip.layer_idx is not None:  # CLIP Set Last Layer
        layer, index = "hidden", clip.layer_idx
    if layer != "hidden":
        return layer
    return skip_layer_name(encoder.num_layers - index % encoder.num_layers)  # A1111's CLIP skip, counted from 1


def base_tokenizer(tokenizer):
    return tokenizer.base if isinstance(tokenizer, TriggerWordTokenizer) else tokenizer


class TriggerWordTokenizer:
    """Tokenizes each concept's trigger word to its learned embedding(s), through ComfyUI's own embedding
    path (so chunking, weights and `(word:1.2)` emphasis work as for textual inversions); the host's
    tokenizer is left as it is. With globally locked concepts it also tokenizes the superclass prompt."""

    def __init__(self, base, concepts: Mapping[str, Concept], superclass: Mapping[str, str]) -> None:
        self.base = base
        self.concepts = dict(concepts)
        self.superclass = dict(superclass)
        self._inner = copy.copy(base)
        by_word = {c.word.lower(): c for c in self.concepts.values()}
        for k, (name, tokenizer) in enumerate(_named_tokenizers(base)):
            own = copy.copy(tokenizer)
            own._try_get_embedding = functools.partial(_embedding_for, tokenizer, by_word, k)
            if own.embedding_directory is None:
                own.embedding_directory = []
            setattr(self._inner, name, own)
        self._triggers = whole_words(by_word) if by_word else None

    def _mark(self, text: str) -> str:
        return self._triggers.sub(lambda m: f" embedding:{m.group(1).lower()} ", text) if self._triggers else text

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        tokens = self._inner.tokenize_with_weights(self._mark(text), return_word_ids, **kwargs)
        if mentions(text, self.superclass):
            superclass_text = self._mark(to_superclass(text, self.superclass))
            tokens[SUPERCLASS_TOKENS] = self._inner.tokenize_with_weights(superclass_text, return_word_ids, **kwargs)
        return tokens

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not yet initialised (copy, pickle): no delegation
            raise AttributeError(name)
        return getattr(self._inner, name)


def _named_tokenizers(tokenizer) -> list[tuple[str, object]]:
    """The per-encoder `SDTokenizer`s inside a ComfyUI tokenizer, CLIP-L first."""
    names = [name for name, value in vars(tokenizer).items()
             if hasattr(value, "tokenize_with_weights") and hasattr(value, "embedding_size")]
    names.sort(key=lambda name: (name != "clip_l", name))
    return [(name, getattr(tokenizer, name)) for name in names]


def _embedding_for(tokenizer, concepts: Mapping[str, Concept], index: int, name: str):
    """`SDTokenizer._try_get_embedding` for a trigger word; other names go to the host's own lookup.

    The host parses the name and leftover text itself and only the embedding is replaced, so its result keeps
    whatever shape that ComfyUI release returns (`(embed, leftover)`, or from 0.27 `(embed, name, leftover)`)."""
    found = tokenizer._try_get_embedding(name)
    concept = concepts.get(name.split()[0].lower()) if name.split() else None
    if concept is None:
        return found
    embedding = concept.embeddings[index] if index < len(concept.embeddings) else None
    if embedding is None or embedding.shape[-1] != tokenizer.embedding_size:
        raise IncompatibleConceptError(
            f"concept '{concept.name}' has no word embedding for this text encoder ({tokenizer.embedding_size} wide): "
            f"it was trained for {concept.family}; use a {concept.family} checkpoint"
        )
    return (embedding, *found[1:])


def _encode_with_superclass(model: nn.Module, tokens: dict):
    """`encode_token_weights` that also encodes the superclass prompt and attaches it as a model condition."""
    tokens = dict(tokens)
    superclass_tokens = tokens.pop(SUPERCLASS_TOKENS, None)
    out = type(model).encode_token_weights(model, tokens)
    context: Tensor = out[0]
    superclass = context if superclass_tokens is None else type(model).encode_token_weights(model, superclass_tokens)[0]
    extra = dict(out[2]) if len(out) > 2 else {}
    extra["model_conds"] = {**extra.get("model_conds", {}), SUPERCLASS_CONTEXT: comfy.conds.CONDCrossAttn(superclass)}
    return out[0], out[1], extra


def with_concepts(clip, concepts: Mapping[str, Concept], superclass: Mapping[str, str]):
    """A clone of `clip` whose tokenizer knows `concepts` (by trigger word); `superclass` maps the trigger
    words of globally locked concepts to their superclass words."""
    clone = clip.clone()
    clone.tokenizer = TriggerWordTokenizer(base_tokenizer(clip.tokenizer), concepts, superclass)
    if superclass:
        model = clone.patcher.model
        clone.patcher.add_object_patch(_ENCODE, functools.partial(_encode_with_superclass, model))
    else:
        clone.patcher.object_patches.pop(_ENCODE, None)
    return clone


def clip_concepts(clip) -> tuple[dict[str, Concept], dict[str, str]]:
    """The concepts (by trigger word) and global superclass words that `clip` already carries."""
    if isinstance(clip.tokenizer, TriggerWordTokenizer):
        return dict(clip.tokenizer.concepts), dict(clip.tokenizer.superclass)
    return {}, {}

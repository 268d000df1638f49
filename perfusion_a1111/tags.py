"""The `<perfusion:NAME:BETA[:TAU][:tau=..][:strength=..][:lock=global][:region=..][:region_weight=..]>` prompt
tag and its infotext lines. Without `lock`, a concept applies with the lock it was trained with.

`region` is a named region (left, right, top, bottom, centre, top-left, ...) or the name of a mask saved in the
concept folder's `regions/` (from the Perfusion tab). Infotext: `Perfusion: hugsy:0.70:0.15,
teddy:0.60:0.15:strength=0.80:lock=global:region=left` (one entry per concept, the same fields as the tag), and
`Perfusion hashes: hugsy: 0123456789ab, ...` (file hashes, for pasting).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from perfusion_core import PerfusionError
from perfusion_core.knobs import GATE, check_gate
from perfusion_core.patch import LOCKS

TAG = "perfusion"
_NAMED = (*GATE, "lock", "region")
_TAG_NAME = re.compile(rf"<{TAG}:([^:>]+)")


@dataclass(frozen=True)
class ConceptRequest:
    """One concept as asked for in a prompt: the file name and its runtime settings."""

    name: str
    beta: float = GATE["beta"].default
    tau: float = GATE["tau"].default
    strength: float = GATE["strength"].default
    lock: str | None = None  # None: the lock the concept was trained with
    region: str | None = None
    region_weight: float = GATE["region_weight"].default

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ":,<>"):
            raise PerfusionError(f"perfusion concept name {self.name!r} is empty or contains one of : , < >")
        if self.region is not None and (not self.region or any(c in self.region for c in ":,<>")):
            raise PerfusionError(f"<{TAG}:{self.name}:...>: region {self.region!r} is empty or contains one of : , < >")
        check_gate(f"<{TAG}:{self.name}:...>", **{name: getattr(self, name) for name in GATE})
        if self.lock is not None and self.lock not in LOCKS:
            raise PerfusionError(f"<{TAG}:{self.name}:...>: lock must be one of {', '.join(LOCKS)}, got {self.lock!r}")

    def fields(self) -> list[str]:
        """`name`, β, τ, then the named settings that differ from their defaults (a region with its weight)."""
        items = [self.name, f"{self.beta:.2f}", f"{self.tau:.2f}"]
        items += [f"{knob}={getattr(self, knob):.2f}" for knob in GATE if knob not in ("beta", "tau", "region_weight")
                  and getattr(self, knob) != GATE[knob].default]
        if self.lock is not None:
            items.append(f"lock={self.lock}")
        if self.region is not None:  # the weight always, so that a later default cannot change a pasted image
            items += [f"region={self.region}", f"region_weight={self.region_weight:.2f}"]
        return items

    @property
    def tag(self) -> str:
        return f"<{TAG}:{':'.join(self.fields())}>"


def _number(name: str, what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PerfusionError(f"<{TAG}:{name}:...>: {what} must be a number, got {text!r}") from None


def parse_request(positional: Sequence[str], named: Mapping[str, str]) -> ConceptRequest:
    """A request from a tag's arguments, as A1111 splits them: `NAME[:BETA[:TAU]]` plus `key=value` items."""
    if not positional or not str(positional[0]).strip():
        raise PerfusionError(f"<{TAG}:...> needs a concept name first, e.g. <{TAG}:hugsy:0.7>")
    name = str(positional[0]).strip()
    named = {str(k).strip(): str(v).strip() for k, v in named.items()}
    if len(positional) > 3:
        raise PerfusionError(f"<{TAG}:{name}:...>: too many values; use <{TAG}:{name}:BETA:TAU> and key=value")
    unknown = sorted(set(named) - set(_NAMED))
    if unknown:
        raise PerfusionError(f"<{TAG}:{name}:...>: unknown setting {', '.join(unknown)}; known: {', '.join(_NAMED)}")
    values = dict(zip(("beta", "tau"), positional[1:], strict=False)) | named
    numbers = {knob: _number(name, knob, values[knob]) for knob in GATE if knob in values}
    lock = values.get("lock")
    return ConceptRequest(name=name, lock=None if lock is None else str(lock).strip(), region=values.get("region"),
                          **numbers)


def parse_items(items: Sequence[str]) -> ConceptRequest:
    """A request from colon-separated fields, sorted into positional and `key=value` ones."""
    positional = [i for i in items if "=" not in i]
    return parse_request(positional, dict(i.split("=", 1) for i in items if "=" in i))


def format_infotext(requests: Iterable[ConceptRequest]) -> str:
    return ", ".join(":".join(r.fields()) for r in requests)


def parse_infotext(text: str) -> list[ConceptRequest]:
    """The requests of a `Perfusion:` infotext value (the inverse of `format_infotext`)."""
    return [parse_items([f.strip() for f in entry.split(":")]) for entry in text.split(",") if entry.strip()]


def format_hashes(hashes: Mapping[str, str]) -> str:
    return ", ".join(f"{name}: {short}" for name, short in hashes.items())


def parse_hashes(text: str) -> dict[str, str]:
    pairs = (entry.split(":", 1) for entry in text.split(",") if ":" in entry)
    return {name.strip(): short.strip() for name, short in pairs}


def rename_tags(prompt: str, renames: Mapping[str, str]) -> str:
    """`prompt` with `<perfusion:OLD` turned into `<perfusion:NEW` for every OLD in `renames`."""
    return _TAG_NAME.sub(lambda m: f"<{TAG}:{renames.get(m.group(1), m.group(1))}", prompt)

"""Node inputs from the core's knob tables, and the type check of inputs that ComfyUI passes unchecked."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..perfusion_core import PerfusionError
from ..perfusion_core.knobs import Knob


def number_input(knob: Knob, tooltip: str = "", **overrides) -> io.Float.Input | io.Int.Input:
    """A widget for `knob`: its default, range, step and meaning (`tooltip` replaces the meaning)."""
    spec = {"default": knob.default, "min": knob.low, "max": knob.high, "step": knob.step,
            "tooltip": tooltip or knob.meaning} | overrides
    return (io.Int if knob.integer else io.Float).Input(knob.name, **spec)


def require(value: object, kind: type | tuple[type, ...], input_name: str, expected: str) -> None:
    """Refuse an input of another type than `kind` (a raw value sent through the API where a link belongs)."""
    if not isinstance(value, kind):
        raise PerfusionError(f"input '{input_name}' must be {expected}, got {type(value).__name__}: connect the "
                             f"output of a node that gives {expected}")

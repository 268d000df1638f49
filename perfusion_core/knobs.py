"""The numbers a user sets, in two tables: the gate knobs of an applied concept and the training recipe.

Each host derives its inputs from these tables (ComfyUI's node inputs and tooltips, A1111's prompt tag and Train
tab, the diffusers loader's keyword arguments, the command line's flags), and `check` is the one test of a value:
a non-finite or out-of-range number is refused, naming the knob, its value and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import PerfusionError


@dataclass(frozen=True)
class Knob:
    """A number with its default, its closed range [low, high], a UI step and what it means."""

    name: str
    default: float | int
    low: float | int
    high: float | int
    step: float | int
    meaning: str

    @property
    def integer(self) -> bool:
        return isinstance(self.default, int)

    def check(self, value: object, owner: str = "") -> float | int:
        """`value` as this knob's number type; `PerfusionError` where it is not a finite number in range."""
        where = f"{owner}: " if owner else ""
        allowed = f"a{'n integer' if self.integer else ' number'} from {self.low} to {self.high}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PerfusionError(f"{where}{self.name} must be {allowed}, got {value!r}")
        if not math.isfinite(value) or not self.low <= value <= self.high or (self.integer and value != int(value)):
            raise PerfusionError(f"{where}{self.name} must be {allowed}, got {value}")
        return int(value) if self.integer else float(value)


def _table(*knobs: Knob) -> dict[str, Knob]:
    return {k.name: k for k in knobs}


GATE = _table(
    Knob("beta", 0.7, 0.0, 1.0, 0.01,
         "Gate bias β: tokens less similar to the concept than β are left alone. Lower = more of the concept, less "
         "of the prompt (useful 0.6–0.75)."),
    Knob("tau", 0.15, 0.01, 1.0, 0.01, "Gate temperature τ: how sharply the gate switches on around β."),
    Knob("strength", 1.0, 0.0, 2.0, 0.05, "Scales the whole edit; 1 is the exact Perfusion formula."),
    # two toy-world concepts painted on image halves keep every sample from w 0.1 to 2 (benchmarks/toyworld.py)
    Knob("region_weight", 0.75, 0.0, 5.0, 0.01,
         "How strongly the concept is kept out of the image outside its region (scaled with the noise level); inside "
         "it the model attends as usual. Used only with a region."),
)

RECIPE = _table(
    Knob("steps", 400, 1, 100_000, 1, "Optimizer steps (the paper: 400)."),
    Knob("lr_target", 0.03, 1e-6, 1.0, 0.001, "Learning rate of the value targets o*_V (the paper: 0.03)."),
    Knob("lr_embedding", 0.006, 1e-6, 1.0, 0.0005, "Learning rate of the trigger word's embedding (the paper: 0.006)."),
    Knob("batch_size", 4, 1, 64, 1, "Images per forward pass."),
    Knob("grad_accum", 0, 0, 1024, 1, "Forward passes per optimizer step (0: an effective batch of 16, the paper's)."),
    Knob("beta", 0.75, 0.0, 1.0, 0.01, "Gate bias β during training (the paper: 0.75)."),
    Knob("tau", 0.10, 0.01, 1.0, 0.01, "Gate temperature τ during training (the paper: 0.10)."),
    Knob("flip", 0.5, 0.0, 1.0, 0.05, "Probability of a horizontal flip of a training image (0 for asymmetric "
                                      "objects)."),
    Knob("mask_floor", 0.0, 0.0, 1.0, 0.05, "Loss weight outside an image's mask (0: only the masked concept)."),
    Knob("seed", 0, 0, 2**31 - 1, 1, "Seed of the image, timestep and noise draws, and of the previews."),
    Knob("save_every", 100, 0, 100_000, 1, "Write the concept and its resumable state every N steps (0: only at the "
                                           "end)."),
    Knob("preview_every", 0, 0, 100_000, 1, "Render previews every N steps (0: none)."),
)


def check_gate(owner: str, **values: object) -> dict[str, float]:
    """The gate knobs `values` (names of `GATE`) checked; `owner` (e.g. "concept 'hugsy'") starts any message."""
    unknown = sorted(set(values) - set(GATE))
    if unknown:
        raise PerfusionError(f"{owner}: unknown setting {', '.join(unknown)}; known: {', '.join(GATE)}")
    return {name: GATE[name].check(value, owner) for name, value in values.items()}

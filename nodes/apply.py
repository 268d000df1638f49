"""Apply Perfusion and Perfusion Gate Sweep: the gated rank-1 edit on a MODEL, the trigger word on a CLIP."""

from __future__ import annotations

import comfy.model_patcher
import comfy.sd
from comfy_api.v0_0_2 import io

from ..perfusion_core import Concept, ConceptUse, PerfusionError
from ..perfusion_core.knobs import GATE
from ..perfusion_core.layers import check_embedding_widths, check_text_encoder_layer
from ..perfusion_core.patch import LOCKS
from .concepts import ConceptType
from .inputs import number_input, require
from .patching import apply_uses, current_uses
from .text import clip_concepts, encoders, text_encoder_layer, with_concepts

TRAINED = "trained"
LOCK_TOOLTIP = ("trained: the lock the concept was trained with (default; local for older files). local: the "
                "concept's keys are locked to its superclass token by token. global: "
                "the keys read the whole prompt encoded with the superclass word (richer scenes; use β 0.4–0.6). "
                "context: keys and values read it, the concept only its own word's value: for concepts trained "
                "with lock context, which compose two in one prompt.")


def gate_inputs(*left_out: str) -> list:
    """A widget per gate knob but `left_out` and the region's weight (it follows the region), then the lock."""
    knobs = [number_input(k) for name, k in GATE.items() if name not in (*left_out, "region_weight")]
    return [*knobs, io.Combo.Input("lock", options=[TRAINED, *LOCKS], default=TRAINED, tooltip=LOCK_TOOLTIP)]


def lock_of(choice: str) -> str | None:
    """The `ConceptUse` lock of a lock widget's choice (None: the concept's own)."""
    return None if choice == TRAINED else choice


def check_clip(clip, concept: Concept) -> None:
    """Refuse a concept whose word embeddings or text-encoder layer do not fit `clip`."""
    check_embedding_widths(concept, [tokenizer.embedding_size for _, tokenizer, _ in encoders(clip)], "this CLIP")
    check_text_encoder_layer(concept, text_encoder_layer(clip))


def apply_concept(model, clip, use: ConceptUse):
    """`(model, clip)` with `use` added to the joint patch (replacing the same concept applied earlier)."""
    require(model, comfy.model_patcher.ModelPatcher, "model", "a MODEL")
    require(clip, comfy.sd.CLIP, "clip", "a CLIP")
    patched = apply_uses(model, [*current_uses(model), use])  # refuses another family with the core's error
    check_clip(clip, use.concept)
    concepts, superclass = clip_concepts(clip)
    concepts[use.concept.word] = use.concept
    superclass.pop(use.concept.word, None)
    if use.lock != "local":
        superclass[use.concept.word] = use.concept.superclass
    return patched, with_concepts(clip, concepts, superclass)


class ApplyPerfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PerfusionApply",
            display_name="Apply Perfusion",
            category="perfusion",
            description="Applies a Perfusion concept: a gated rank-1 edit of every cross-attention K/V on a "
                        "clone of the model, and the trigger word on a clone of the CLIP. Chain several for "
                        "several concepts: they form one joint edit.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; LoRAs may be applied before or after."),
                io.Clip.Input("clip", tooltip="The text encoder; use the returned CLIP in your CLIPTextEncode "
                                              "nodes so the trigger word reads the learned embedding."),
                ConceptType.Input("concept", tooltip="From Load Perfusion Concept or Train Perfusion."),
                *gate_inputs(),
                io.Mask.Input("region", optional=True,
                              tooltip="Where the concept goes (white = here), at the image's aspect ratio: its "
                                      "word is kept out of attention everywhere else in the same sampling pass. "
                                      "Give each concept its own mask for several concepts side by side."),
                number_input(GATE["region_weight"]),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
            ],
        )

    @classmethod
    def execute(cls, model, clip, concept: Concept, lock: str, region=None, **knobs: float) -> io.NodeOutput:
        use = ConceptUse(concept, lock=lock_of(lock), region=region, **knobs)
        return io.NodeOutput(*apply_concept(model, clip, use))


class PerfusionGateSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PerfusionGateSweep",
            display_name="Perfusion Gate Sweep",
            category="perfusion",
            description="One model per β value, so that one queue run renders the same seed across β.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model."),
                io.Clip.Input("clip", tooltip="The text encoder; use the returned CLIP to encode the prompt."),
                ConceptType.Input("concept", tooltip="From Load Perfusion Concept or Train Perfusion."),
                io.String.Input("betas", default="0.5, 0.6, 0.7, 0.8",
                                tooltip="Comma-separated β values in [0, 1], one model each."),
                *gate_inputs("beta"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", is_output_list=True,
                                tooltip="One model per β, in the order given."),
                io.Clip.Output(display_name="CLIP"),
                io.Float.Output(display_name="beta", is_output_list=True, tooltip="The β of each model."),
            ],
        )

    @classmethod
    def validate_inputs(cls, betas: str) -> bool | str:  # only `betas`: ComfyUI checks the other inputs itself
        try:
            parse_betas(betas)
        except PerfusionError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model, clip, concept: Concept, betas: str, lock: str, **knobs: float) -> io.NodeOutput:
        values = parse_betas(betas)
        results = [apply_concept(model, clip, ConceptUse(concept, b, lock=lock_of(lock), **knobs)) for b in values]
        return io.NodeOutput([m for m, _ in results], results[0][1], values)


def parse_betas(text: str) -> list[float]:
    """`"0.5, 0.6"` → `[0.5, 0.6]`, each a valid gate bias."""
    parts = [part.strip() for part in str(text).replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise PerfusionError(f"betas must be comma-separated numbers such as '0.5, 0.6, 0.7', got {text!r}")
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise PerfusionError(f"betas must be comma-separated numbers such as '0.5, 0.6, 0.7', got {part!r} in "
                                 f"{text!r}") from None
    return [GATE["beta"].check(b, "betas") for b in values]

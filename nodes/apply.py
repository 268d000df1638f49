"""Apply Perfusion and Perfusion Gate Sweep: the gated rank-1 edit on a MODEL, the trigger word on a CLIP."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..perfusion_core import Concept, ConceptUse, IncompatibleConceptError
from ..perfusion_core.layers import check_text_encoder_layer
from ..perfusion_core.regions import WEIGHT
from .concepts import ConceptType
from .patching import apply_uses, current_uses
from .text import clip_concepts, encoders, text_encoder_layer, with_concepts

LOCK_TOOLTIP = ("local: the concept's keys are locked to its superclass token by token (default). global: "
                "the keys read the whole prompt encoded with the superclass word (richer scenes; use β 0.4–0.6).")


def gate_inputs(beta_default: float = 0.7) -> list:
    return [
        io.Float.Input("tau", default=0.15, min=0.01, max=1.0, step=0.01,
                       tooltip="Gate temperature τ: how sharply the gate switches on around β."),
        io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                       tooltip="Scales the whole edit; 1 is the exact Perfusion formula."),
        io.Combo.Input("lock", options=["local", "global"], default="local", tooltip=LOCK_TOOLTIP),
    ]


def check_clip(clip, concept: Concept) -> None:
    """Refuse a concept whose word embeddings or text-encoder layer do not fit `clip`."""
    widths = [tokenizer.embedding_size for _, tokenizer, _ in encoders(clip)]
    if [e.shape[-1] for e in concept.embeddings] != widths:
        raise IncompatibleConceptError(
            f"concept '{concept.name}' ({concept.family}) has word embeddings of widths "
            f"{[e.shape[-1] for e in concept.embeddings]} but this CLIP's encoders take {widths}: "
            f"connect the CLIP of a {concept.family} checkpoint"
        )
    check_text_encoder_layer(concept, text_encoder_layer(clip))


def apply_concept(model, clip, use: ConceptUse):
    """`(model, clip)` with `use` added to the joint patch (replacing the same concept applied earlier)."""
    patched = apply_uses(model, [*current_uses(model), use])  # refuses another family with the core's error
    check_clip(clip, use.concept)
    concepts, superclass = clip_concepts(clip)
    concepts[use.concept.word] = use.concept
    superclass.pop(use.concept.word, None)
    if use.lock == "global":
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
                io.Float.Input("beta", default=0.7, min=0.0, max=1.0, step=0.01,
                               tooltip="Gate bias β: tokens less similar to the concept than β are left alone. "
                                       "Lower = more of the concept, less of the prompt (useful 0.6–0.75)."),
                *gate_inputs(),
                io.Mask.Input("region", optional=True,
                              tooltip="Where the concept goes (white = here), at the image's aspect ratio: its "
                                      "word's attention is drawn into the region in the same sampling pass. Give "
                                      "each concept its own mask for several concepts side by side."),
                io.Float.Input("region_weight", default=WEIGHT, min=0.0, max=5.0, step=0.01,
                               tooltip="How strongly the region draws the concept's attention (eDiffi's w; "
                                       "scaled with the noise level). Used only with a region."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
            ],
        )

    @classmethod
    def execute(cls, model, clip, concept: Concept, beta: float, tau: float, strength: float, lock: str,
                region=None, region_weight: float = WEIGHT) -> io.NodeOutput:
        use = ConceptUse(concept, beta, tau, strength, lock, region, region_weight)
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
                *gate_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", is_output_list=True,
                                tooltip="One model per β, in the order given."),
                io.Clip.Output(display_name="CLIP"),
                io.Float.Output(display_name="beta", is_output_list=True, tooltip="The β of each model."),
            ],
        )

    @classmethod
    def validate_inputs(cls, betas: str, **_) -> bool | str:
        try:
            parse_betas(betas)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model, clip, concept: Concept, betas: str, tau: float, strength: float,
                lock: str) -> io.NodeOutput:
        values = parse_betas(betas)
        results = [apply_concept(model, clip, ConceptUse(concept, b, tau, strength, lock)) for b in values]
        return io.NodeOutput([m for m, _ in results], results[0][1], values)


def parse_betas(text: str) -> list[float]:
    """`"0.5, 0.6"` → `[0.5, 0.6]`; each in [0, 1]."""
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"betas must be comma-separated numbers such as '0.5, 0.6, 0.7', got {text!r}") from None
    if not values or not all(0.0 <= b <= 1.0 for b in values):
        raise ValueError(f"betas must be one or more numbers in [0, 1], got {text!r}")
    return values

"""Perfusion: key-locked, gated rank-1 editing of cross-attention for text-to-image personalisation.

Standalone: imports only torch, safetensors and numpy. Hosts (ComfyUI, A1111, diffusers)
drive it through the public API below; `load_perfusion` and its companions drive a diffusers pipeline
they are given without importing diffusers.
"""

from .concept import Concept
from .diffusers_pipeline import load_perfusion, set_perfusion, unload_perfusion
from .errors import ConceptFileError, IncompatibleConceptError, PerfusionError, TrainingError
from .files import load_concept, save_concept
from .layers import CrossAttentionLayer, check_concept, cross_attention_layers
from .patch import ConceptUse, LayerPatch, PatchHandle, build_patch, patch_unet
from .rank1 import GatedProjection, GateSettings, JointProjector, gate
from .second_moment import SecondMoment, second_moment

__version__ = "0.1.0"

__all__ = [
    "Concept",
    "ConceptFileError",
    "ConceptUse",
    "CrossAttentionLayer",
    "GateSettings",
    "GatedProjection",
    "IncompatibleConceptError",
    "JointProjector",
    "LayerPatch",
    "PatchHandle",
    "PerfusionError",
    "SecondMoment",
    "TrainingError",
    "build_patch",
    "check_concept",
    "cross_attention_layers",
    "gate",
    "load_concept",
    "load_perfusion",
    "patch_unet",
    "save_concept",
    "second_moment",
    "set_perfusion",
    "unload_perfusion",
]

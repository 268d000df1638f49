"""ComfyUI nodes for Perfusion. Thin: everything goes through `perfusion_core`."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .apply import ApplyPerfusion, PerfusionGateSweep
from .concepts import register_folder
from .images import LoadPerfusionTrainingImages
from .loader import LoadPerfusionConcept
from .routes import register_routes
from .train import TrainPerfusion

register_folder()
register_routes()


class PerfusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadPerfusionConcept, ApplyPerfusion, PerfusionGateSweep, TrainPerfusion, LoadPerfusionTrainingImages]


async def comfy_entrypoint() -> PerfusionExtension:
    return PerfusionExtension()

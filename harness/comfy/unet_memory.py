"""Peak memory of one training micro-step through ComfyUI's own UNet, on fake tensors.

Run with ComfyUI's interpreter from its folder: `python unet_memory.py {sd1,sdxl} {on,off}` prints one JSON line:
the UNet's weight bytes (fp16, as ComfyUI loads SD1.5 and SDXL on a card with fp16) and the peak bytes alive during
the forward and backward pass of a batch of 4 at 512 / 1024 px, with Perfusion's gated patch on every
cross-attention layer, the context requiring a gradient (the word embedding's path), and gradient checkpointing as
`nodes.host.ComfyHost` switches it on (ComfyUI's own `comfy_extras.nodes_train.patch`). `benchmarks/train_memory.py`
runs it when COMFYUI_PATH is set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from comfy.cli_args import args

args.cpu = True  # before comfy.model_management is imported: no accelerator is probed
args.use_pytorch_cross_attention = True  # what ComfyUI picks on a CUDA card with torch 2 (on a CPU: sub-quadratic)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: perfusion_core, harness

import comfy.ops  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, patch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from harness.a1111_model import SDXL_UNET  # noqa: E402
from harness.fake_memory import LiveBytes, weight_bytes  # noqa: E402
from perfusion_core import Concept, ConceptUse, build_patch, cross_attention_layers  # noqa: E402
from perfusion_core.patch import install_patch  # noqa: E402

SD15_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "num_heads": 8, "use_spatial_transformer": True,
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
}
SHAPES = {"sd1": (SD15_UNET, 64, 768), "sdxl": (SDXL_UNET, 128, 2048)}  # config, latent side, context width
BATCH = 4


def main(family: str, checkpointing: bool) -> dict:
    config, side, width = SHAPES[family]
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        unet = UNetModel(image_size=32, **config, legacy=False, dtype=torch.float16,
                         operations=comfy.ops.disable_weight_init).requires_grad_(False)
    layers = cross_attention_layers(unet)
    i_star = torch.randn(width)
    concept = Concept(word="hugsy", superclass="teddy", family=family, context_dim=width, text_encoder_layer="last",
                      i_star=i_star, v=i_star.clone(), i_super=torch.randn(width), embeddings=[torch.randn(width)],
                      o_v={layer.name: torch.zeros(layer.v_dim, requires_grad=True) for layer in layers})
    patches = build_patch(layers, [ConceptUse(concept, 0.75, 0.1)])
    with fake:
        install_patch(unet, layers, patches)
        if checkpointing:
            for module in find_all_highest_child_module_with_forward(unet):
                patch(module)
        tracker = LiveBytes(unet)
        with tracker:
            context = torch.randn(BATCH, 77, width, requires_grad=True)
            x = torch.randn(BATCH, 4, side, side, dtype=torch.float16)
            adm = config.get("adm_in_channels")
            y = torch.randn(BATCH, adm, dtype=torch.float16) if adm else None
            out = unet(x, torch.rand(BATCH) * 999, context=context.half(), y=y, transformer_options={}).float()
            (out - torch.randn_like(out)).square().mean().backward()
    return {"weights": weight_bytes(unet), "step": tracker.peak}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2] == "on")))

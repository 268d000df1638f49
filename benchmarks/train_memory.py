"""Peak memory of one training micro-step at the real SD1.5 (512 px) and SDXL (1024 px) shapes, at the shipped defaults
(batch 4, half-precision UNet), with gradient checkpointing off and on.

Method: the real model classes at full size (diffusers' UNet, transformers' CLIP text encoders as the command line
loads them) run the host's own code (`DiffusersHost.encode` with the trainable word embedding, `DiffusersHost.predict`,
the trainer's gated patch with its float32 targets, the loss, the backward pass) on fake tensors (torch's
FakeTensorMode: shapes, dtypes, no data), while a dispatch mode adds up the bytes of every storage alive, op by op.
The peak is the weights plus the most that is alive at once: what autograd keeps for the backward pass and the
transient outputs. Not counted: the CUDA context (0.3-0.5 GiB), the caching allocator's rounding and fragmentation,
and the VAE, which encodes the images one at a time before training and then waits on the CPU.
With COMFYUI_PATH set, ComfyUI's own UNet runs the same way under its interpreter (`harness/comfy/unet_memory.py`,
with the attention ComfyUI picks on a CUDA card and its own checkpointing patch, as `nodes.host` uses it).
Run: [COMFYUI_PATH=/path/to/ComfyUI] .venv/bin/python -m benchmarks.train_memory  (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from harness.comfy.server import comfyui_tree
from harness.fake_memory import LiveBytes, weight_bytes
from perfusion_core import Concept, ConceptUse, build_patch, cross_attention_layers
from perfusion_core.diffusers_host import DiffusersHost
from perfusion_core.memory import ACTIVATIONS_GIB
from perfusion_core.patch import install_patch
from perfusion_core.train import TEMPLATES
from tests.builders import WORDS, clip_tokenizer

GIB = 2**30
GOALS_GIB = {"sd1": 6.0, "sdxl": 11.0}  # an 8 GB card trains SD1.5, a 12 GB card SDXL
BATCH = 4
UNET_MEMORY = Path(__file__).resolve().parents[1] / "harness" / "comfy" / "unet_memory.py"
# The text encoders' storage per host path: the command line loads them in float32; ComfyUI, A1111 and Forge keep
# them in fp16 (ComfyUI computes them in float32 layer by layer, recomputed in the backward pass)
PATHS = {"cli": ("command line (text encoders fp32)", torch.float32),
         "hosts": ("A1111, Forge (diffusers UNet, text fp16)", torch.float16)}


@dataclass(frozen=True)
class Family:
    name: str
    pixels: int
    unet: dict
    text: tuple[dict, ...]


CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280)
FAMILIES = {
    "sd1": Family("sd1", 512, dict(cross_attention_dim=768), (CLIP_L,)),
    "sdxl": Family("sdxl", 1024, dict(
        block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                               "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), use_linear_projection=True, cross_attention_dim=2048,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        sample_size=128), (CLIP_L, CLIP_G)),
}


def _built_in(dtype: torch.dtype, build) -> torch.nn.Module:
    """A frozen module built with `dtype` weights (fake tensors cannot be cast in place)."""
    torch.set_default_dtype(dtype)
    try:
        return build().eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(torch.float32)


def _host(family: Family, dtype: torch.dtype, text_dtype: torch.dtype) -> DiffusersHost:
    """The command line's host as `DiffusersHost.__init__` builds it (UNet in `dtype`, text encoders in `text_dtype`),
    from full-size configs on fake tensors instead of a model folder."""
    host = DiffusersHost.__new__(DiffusersHost)
    host.unet = _built_in(dtype, lambda: UNet2DConditionModel(**family.unet))
    host.tokenizers = [clip_tokenizer(WORDS, max_length=77) for _ in family.text]
    host.text_encoders = [
        _built_in(text_dtype, lambda config=config: (
            CLIPTextModelWithProjection if "projection_dim" in config else CLIPTextModel
        )(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **config)))
        for config in family.text
    ]
    host.device, host.compute_dtype, host.vae, host._vae_offloaded = torch.device("cpu"), dtype, None, True
    host.text_encoder_layer = "penultimate" if family.name == "sdxl" else "last"
    host.resolution, host.word = family.pixels, "hugsy"
    host._word_ids = [tokenizer.convert_tokens_to_ids("teddy</w>") for tokenizer in host.tokenizers]
    return host


def _concept(layers: list, family: Family) -> Concept:
    """A concept as the trainer holds it mid-run: float32 targets that require gradients (real tensors: a concept
    checks its values)."""
    d = layers[0].context_dim
    i_star = torch.randn(d)
    return Concept(word="hugsy", superclass="teddy", family=family.name, context_dim=d, text_encoder_layer="last",
                   i_star=i_star, v=i_star.clone(), i_super=torch.randn(d),
                   embeddings=[torch.randn(c["hidden_size"], requires_grad=True) for c in family.text],
                   o_v={layer.name: torch.zeros(layer.v_dim, requires_grad=True) for layer in layers})


def micro_step(family: Family, dtype: torch.dtype, text_dtype: torch.dtype, checkpointing: bool) -> dict:
    """Peak bytes of one micro-step, from the weights up."""
    fake = FakeTensorMode(allow_non_fake_inputs=True)  # one mode: another would copy every weight it reads
    with fake:
        host = _host(family, dtype, text_dtype)
    layers = cross_attention_layers(host.unet)
    concept = _concept(layers, family)
    patches = build_patch(layers, [ConceptUse(concept, 0.75, 0.1)])
    with fake:
        install_patch(host.unet, layers, patches)
        host.set_gradient_checkpointing(checkpointing)
        weights = weight_bytes(host.unet, *host.text_encoders)
        trained = sum(t.numel() * 4 * 3 for t in [*concept.o_v.values(), *concept.embeddings])  # and Adam's moments
        latent = family.pixels // 8
        tracker = LiveBytes(host.unet, *host.text_encoders)
        with tracker:
            prompts = [TEMPLATES[k].format("teddy") for k in range(BATCH)]
            cond = host.encode(prompts, concept.embeddings)
            noisy = torch.randn(BATCH, 4, latent, latent)
            t = torch.randint(1000, (BATCH,))
            prediction = host.predict(noisy, t, cond).float()
            loss = (prediction - torch.randn_like(prediction)).square().mean()
            loss.backward()
    return {"weights": weights, "trained": trained, "step": tracker.peak, "peak": weights + trained + tracker.peak}


def comfyui_step(tree, family: Family, checkpointing: bool) -> dict:
    """ComfyUI's own UNet (`harness/comfy/unet_memory.py`, run by the tree's interpreter), plus the weights of the text
    encoders in fp16 as ComfyUI keeps them."""
    out = subprocess.run([tree.python, str(UNET_MEMORY), family.name, "on" if checkpointing else "off"],
                         cwd=tree.root, env={**os.environ, "PYTHONPATH": str(tree.root)}, capture_output=True,
                         text=True, check=True)
    unet = json.loads(out.stdout.strip().splitlines()[-1])
    with FakeTensorMode():
        text = weight_bytes(*_host(family, torch.float16, torch.float16).text_encoders)
    weights = unet["weights"] + text
    return {"weights": weights, "step": unet["step"], "peak": weights + unet["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    args = parser.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    print(f"one training micro-step, batch {BATCH}, UNet in {args.dtype}, fake tensors")
    print(f"{'model':<6} {'px':>5} {'host path':<40} {'checkpointing':>13} {'weights GiB':>11} {'step GiB':>9} "
          f"{'peak GiB':>9} {'goal':>5}")
    figures: dict[str, float] = {}
    tree = comfyui_tree()
    paths = {**PATHS, **({"comfyui": (f"{tree}, its own UNet (text fp16)", None)} if tree else {})}
    for name, family in FAMILIES.items():
        for path, (label, text_dtype) in paths.items():
            for checkpointing in (False, True):
                if path == "comfyui":
                    r = comfyui_step(tree, family, checkpointing)
                else:
                    r = micro_step(family, dtype, text_dtype, checkpointing)
                tag = f"{name}_{path}_{'ckpt' if checkpointing else 'no_ckpt'}"
                figures[f"{tag}_peak_gib"] = round(r["peak"] / GIB, 2)
                figures[f"{tag}_step_gib"] = round(r["step"] / GIB, 2)
                print(f"{name:<6} {family.pixels:>5} {label:<40} {'on' if checkpointing else 'off':>13} "
                      f"{r['weights'] / GIB:>11.2f} {r['step'] / GIB:>9.2f} {r['peak'] / GIB:>9.2f} "
                      f"{GOALS_GIB[name]:>5.0f}")
        for path in paths:
            tag = f"{name}_{path}"
            figures[f"{tag}_ckpt_vs_goal"] = round(figures[f"{tag}_ckpt_peak_gib"] / GOALS_GIB[name], 3)
            saved = figures[f"{tag}_ckpt_peak_gib"] / figures[f"{tag}_no_ckpt_peak_gib"]
            figures[f"{tag}_ckpt_vs_no_ckpt"] = round(saved, 3)
        per_image = figures[f"{name}_cli_no_ckpt_step_gib"] / BATCH
        print(f"  {name}: {per_image:.2f} GiB of activations per image without checkpointing "
              f"(perfusion_core.memory estimates {ACTIVATIONS_GIB[name]:.2f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

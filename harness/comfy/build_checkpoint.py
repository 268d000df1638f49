"""Build random-weight test models with ComfyUI's own classes.

Run with ComfyUI's interpreter from its folder: `python build_checkpoint.py OUT_DIR` writes
`OUT_DIR/tiny-sd15.safetensors` (a small SD1.5-shaped checkpoint), two LoRAs, a ControlNet and a hypernetwork
for it (the files of `graphs.SD1_FILES`); `python build_checkpoint.py OUT_DIR --sdxl` writes a full-size SDXL UNet
(ComfyUI knows SDXL only by its real shapes: 2.6 B parameters, 5 GB in fp16), its two CLIP text encoders and a
TAESD VAE, as separate files for UNETLoader, DualCLIPLoader and VAELoader. The SDXL UNet's arguments and the
random UNet weights are shared with the Forge builder (harness/a1111_model.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from comfy.cli_args import args
from safetensors.torch import save_file

args.cpu = True  # before comfy.model_management is imported: no accelerator is probed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/, for what Forge's builder shares

import comfy.cldm.cldm  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.sdxl_clip  # noqa: E402
import comfy.taesd.taesd  # noqa: E402
from a1111_model import SDXL_UNET, random_unet_tensor  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402


def attn2_widths(unet: torch.nn.Module) -> dict[str, int]:
    """Cross-attention layer name -> value width, for building test concepts outside ComfyUI."""
    return {name: m.to_v.weight.shape[0] for name, m in unet.named_modules() if name.endswith("attn2")}


def randomize_unet(unet: torch.nn.Module) -> None:
    """Random weights in place (comfy ops leave them uninitialised)."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(random_unet_tensor(name, p.shape, p.dtype))


def randomize_clip(clip: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if "layer_norm" in name or "final_layer_norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim > 1:
                p.copy_(torch.randn_like(p) * 0.02)
            else:
                p.zero_()


TINY_UNET = dict(
    image_size=32, in_channels=4, model_channels=320, num_res_blocks=[1, 1], channel_mult=[1, 2], num_heads=8,
    use_spatial_transformer=True, transformer_depth=[1, 1], context_dim=768, use_linear_in_transformer=False,
    transformer_depth_middle=1, operations=comfy.ops.disable_weight_init,
)
"""A small UNet that ComfyUI detects as SD1.x: model_channels 320, context 768."""


def unet_state() -> dict[str, torch.Tensor]:
    unet = UNetModel(out_channels=4, transformer_depth_output=[1, 1, 1, 1], **TINY_UNET)
    randomize_unet(unet)
    LAYERS.update(attn2_widths(unet))
    return {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}


def clip_state() -> dict[str, torch.Tensor]:
    clip = comfy.sd1_clip.SDClipModel(dtype=torch.float32)
    randomize_clip(clip)
    state = clip.transformer.state_dict()
    return {f"cond_stage_model.transformer.{k}": v for k, v in state.items()}


def vae_state() -> dict[str, torch.Tensor]:
    taesd = comfy.taesd.taesd.TAESD()  # comfy ops leave weights uninitialised
    with torch.no_grad():
        for name, p in taesd.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            elif name not in ("vae_scale",):
                p.zero_()
        last = taesd.taesd_decoder[-1]
        last.weight.mul_(0.5)  # random TAESD saturates: scale its last conv so pixels sit mid-grey
        last.bias.fill_(0.5)
    return {f"first_stage_model.{k}": v for k, v in taesd.state_dict().items()}


def lora_state(unet_keys: list[str], seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A kohya-style LoRA on every cross-attention to_k / to_v (and attn1 to_q)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in unet_keys:
        if not key.endswith(("attn2.to_k.weight", "attn2.to_v.weight", "attn1.to_q.weight")):
            continue
        path = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
        name = "lora_unet_" + path.replace(".", "_")
        shape = STATE[key].shape
        out[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=g) * 0.1
        out[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=g) * 0.1
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


def controlnet_state() -> dict[str, torch.Tensor]:
    """A random ControlNet for the tiny UNet, in the original `control_model.` layout (detected as SD1.x)."""
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, **TINY_UNET)
    randomize_unet(net)
    return {f"control_model.{k}": v.half() for k, v in net.state_dict().items()}


def hypernetwork_state(seed: int = 3) -> dict:
    """A hypernetwork for context width 768 (two linear layers each for K and V), in the format ComfyUI reads."""
    g = torch.Generator().manual_seed(seed)

    def side() -> dict[str, torch.Tensor]:
        return {f"linear.{k}.{kind}": torch.randn(*shape, generator=g) * 0.02
                for k, (a, b) in enumerate(((768, 192), (192, 768)))
                for kind, shape in (("weight", (b, a)), ("bias", (b,)))}

    return {768: [side(), side()], "activation_func": "relu", "is_layer_norm": False}


def write_sdxl(target: Path) -> None:
    """The full-size SDXL UNet (fp16), CLIP-L and CLIP-G in Hugging Face layout, and a TAESD VAE."""
    unet = UNetModel(image_size=32, **SDXL_UNET, legacy=False, dtype=torch.float16,
                     operations=comfy.ops.disable_weight_init)
    randomize_unet(unet)
    (target / "sdxl.layers.json").write_text(json.dumps(attn2_widths(unet)))
    save_file(unet.state_dict(), str(target / "sdxl-unet.safetensors.tmp"))
    del unet
    clip = comfy.sdxl_clip.SDXLClipModel(dtype=torch.float16)
    randomize_clip(clip)
    save_file(clip.clip_l.transformer.state_dict(), str(target / "sdxl-clip-l.safetensors"))
    save_file(clip.clip_g.transformer.state_dict(), str(target / "sdxl-clip-g.safetensors"))
    save_file({k.removeprefix("first_stage_model."): v for k, v in vae_state().items()},
              str(target / "sdxl-taesd.safetensors"))
    (target / "sdxl-unet.safetensors.tmp").rename(target / "sdxl-unet.safetensors")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if "--sdxl" in sys.argv[2:]:
        write_sdxl(target)
        sys.exit()
    LAYERS: dict[str, int] = {}
    STATE = {**unet_state(), **clip_state(), **vae_state()}
    half = {k: v.half() if v.is_floating_point() else v for k, v in STATE.items()}
    save_file(half, str(target / "tiny-sd15.safetensors.tmp"))
    for seed, name in ((1, "a"), (2, "b")):
        save_file(lora_state(list(STATE), seed), str(target / f"tiny-lora-{name}.safetensors"))
    save_file(controlnet_state(), str(target / "tiny-controlnet.safetensors"))
    torch.save(hypernetwork_state(), target / "tiny-hypernetwork.pt")  # ComfyUI reads hypernetworks from .pt only
    (target / "tiny-sd15.layers.json").write_text(json.dumps(LAYERS))
    (target / "tiny-sd15.safetensors.tmp").rename(target / "tiny-sd15.safetensors")

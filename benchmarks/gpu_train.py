"""Speed and peak memory of the default training recipe on a CUDA GPU, at real model sizes.

The real loop (`perfusion_core.train.Trainer` on a `DiffusersHost`) with the default `TrainSettings` (batch 4,
gradient accumulation 4: effective batch 16; gradient checkpointing chosen by `perfusion_core.memory` unless forced)
on random-weight models of real size: SD1.5 (UNet, CLIP-L, SD VAE) at 512 px and SDXL (base UNet, CLIP-L + OpenCLIP
bigG, VAE) at 1024 px, each in bf16 (where the card has it) and fp16, 4 random training images. Each family's model
folder is built once (random init on the GPU, saved in fp16) and each setting runs in its own process, so that its
peak memory is its own. Per setting: --warmup steps (default 2; the first includes C over 256 captions, the latents
and the target initialisation), then --steps timed steps (default 5; wall time, synchronised). The projected
400-step time is compared with the paper's "roughly 4 minutes" per concept. Peak memory is
`torch.cuda.max_memory_allocated` from the loaded model on (warm-up: C, VAE encoding and the first steps; steps: the
timed steps alone).
Run: .venv/bin/python -m benchmarks.gpu_train [--steps N] [--warmup N] [--families sd1 sdxl] [--precisions bf16 fp16]
     [--gradient-checkpointing auto|on|off]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:  # the model libraries load in the child processes only, so that a CPU-only machine is told at once
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from perfusion_core.train import StepInfo

PAPER_S, PAPER_STEPS = 240.0, 400  # the paper: "roughly 4 minutes" for a concept's 400 steps
CLIP_VOCAB = 49408
GIB = 2**30


class Encoder(NamedTuple):
    hidden: int
    layers: int
    heads: int
    intermediate: int
    act: str
    projection: bool = False


class Family(NamedTuple):
    resolution: int
    vae_scaling: float
    encoders: tuple[Encoder, ...]
    unet: dict


CLIP_L = Encoder(768, 12, 12, 3072, "quick_gelu")
FAMILIES = {
    "sd1": Family(512, 0.18215, (CLIP_L,), dict(sample_size=64, cross_attention_dim=768)),
    "sdxl": Family(1024, 0.13025, (CLIP_L, Encoder(1280, 32, 20, 5120, "gelu", projection=True)), dict(
        sample_size=128, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)),
}


# -- the model folder ----------------------------------------------------------------------------------------------

def _tokenizer(tiny: bool) -> CLIPTokenizer:
    """tests.builders' offline CLIP BPE tokenizer (the superclass "teddy" and nearly every template word one token);
    unless tiny, its vocabulary padded with unused entries to CLIP's 49,408 so the embedding tables are real-sized."""
    from transformers import CLIPTokenizer

    from tests.builders import WORDS, clip_tokenizer

    small = clip_tokenizer(WORDS, max_length=77)
    if tiny:
        return small
    ids = small.get_vocab()
    words = sorted(ids, key=ids.get)  # ends with <|startoftext|>, <|endoftext|>
    words = [*words[:-2], *(f"<unused{k}>" for k in range(CLIP_VOCAB - len(words))), *words[-2:]]
    merges = [tuple(m) for m in json.loads(small.backend_tokenizer.to_str())["model"]["merges"]]
    return CLIPTokenizer(vocab={w: i for i, w in enumerate(words)}, merges=merges, model_max_length=77)


def _text_encoder(spec: Encoder, tokenizer: CLIPTokenizer, tiny: bool) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=1 if tiny else spec.layers,
        num_attention_heads=2 if tiny else spec.heads, intermediate_size=64 if tiny else spec.intermediate,
        hidden_act=spec.act, max_position_embeddings=77, projection_dim=spec.hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if spec.projection else CLIPTextModel)(config)


def _vae(family: Family, tiny: bool) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    blocks = (8, 8) if tiny else (128, 256, 512, 512)
    return AutoencoderKL(
        block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=1 if tiny else 2, latent_channels=4,
        norm_num_groups=4 if tiny else 32, sample_size=16 if tiny else family.resolution,
        scaling_factor=family.vae_scaling)


def build_folder(root: Path, name: str, device: str, tiny: bool) -> dict:
    """Write a random-weight diffusers folder of family `name` (fp16 on CUDA); return its build time and size."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from harness.models import tiny_unet
    from tests.builders import SD_SCHEDULE

    start, family = time.perf_counter(), FAMILIES[name]
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)

    def save(make, where: str) -> None:
        with torch.device(device):
            model = make()
        model.to(dtype).save_pretrained(root / where)

    save(lambda: tiny_unet(name) if tiny else UNet2DConditionModel(**family.unet), "unet")
    save(lambda: _vae(family, tiny), "vae")
    tokenizer = _tokenizer(tiny)
    for k, spec in enumerate(family.encoders):
        suffix = "_2" if k else ""
        tokenizer.save_pretrained(root / f"tokenizer{suffix}")
        save(lambda spec=spec: _text_encoder(spec, tokenizer, tiny), f"text_encoder{suffix}")
    DDPMScheduler(**SD_SCHEDULE).save_pretrained(root / "scheduler")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    return {"build_s": time.perf_counter() - start, "gib_on_disk": size / GIB, "bf16": bf16}


# -- one setting ---------------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the self-check on a CPU: the process's peak


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def train_setting(folder: Path, precision: str, device: str, steps: int, warmup: int,
                  checkpointing: bool | None) -> dict:
    """Load the folder as a `DiffusersHost`, run `Trainer` for warmup + steps steps; return times and peaks."""
    from perfusion_core.diffusers_host import DiffusersHost
    from perfusion_core.errors import TrainingError
    from perfusion_core.train import TEMPLATES, Trainer, TrainingData, TrainSettings

    captions = [f"{t.format(noun)} {place}" for place in ("on the beach", "in the snow")
                for t in TEMPLATES for noun in ("teddy", "bear", "dog", "cat", "toy")][:256]
    with tempfile.TemporaryDirectory(prefix="perfusion-gpu-train-") as tmp:
        start = time.perf_counter()
        host = DiffusersHost(folder, device=device, precision=precision, captions=captions, cache_dir=tmp)
        _sync(device)
        result: dict = {"load_s": time.perf_counter() - start}
        images = torch.rand(4, 3, host.resolution, host.resolution, generator=torch.Generator().manual_seed(0))
        settings = TrainSettings(word="hugsy", superclass="teddy", steps=warmup + steps,
                                 gradient_checkpointing=checkpointing)
        stamps: dict[int, float] = {}

        def progress(info: StepInfo) -> None:
            _sync(device)
            stamps[info.step] = time.perf_counter()
            if info.step == warmup:
                result["warmup_peak_gib"] = _peak_bytes(device) / GIB
                _reset_peak(device)
            if info.step == settings.steps:
                result["step_peak_gib"] = _peak_bytes(device) / GIB
                result["checkpointing"] = bool(host.unet.is_gradient_checkpointing)

        _reset_peak(device)
        start = time.perf_counter()
        try:
            trainer = Trainer(host, TrainingData(images), settings, Path(tmp) / "hugsy.safetensors")
            trainer.run(progress=progress)
        except (TrainingError, torch.cuda.OutOfMemoryError) as e:
            return {**result, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
    s_per_step = (stamps[warmup + steps] - stamps[warmup]) / steps
    return {**result, "first_step_s": stamps[1] - start, "s_per_step": s_per_step, "steps_per_s": 1 / s_per_step,
            "peak_gib": max(result["warmup_peak_gib"], result["step_peak_gib"]),
            "loss_scale": trainer.scaler.scale if trainer.scaler.enabled else None}


# -- the driver ----------------------------------------------------------------------------------------------------

def _child(args: argparse.Namespace, *extra: str) -> dict:
    """Run this module with `extra` in a fresh process (stderr passes through); its last stdout line is JSON."""
    command = [sys.executable, "-m", "benchmarks.gpu_train", "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--gradient-checkpointing", args.gradient_checkpointing, *(["--tiny-cpu"] if args.tiny_cpu else []),
               *extra]
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        return {"error": f"the child process exited with code {out.returncode} (see its traceback above)"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(builds: dict[str, dict], results: dict[str, dict], args: argparse.Namespace, total_s: float) -> None:
    device = "CPU (tiny self-check)" if args.tiny_cpu else torch.cuda.get_device_name()
    print(f"{device}; default recipe (batch 4 x accumulation 4), {args.warmup} warm-up + {args.steps} timed steps, "
          f"gradient checkpointing {args.gradient_checkpointing}")
    for name, build in builds.items():
        print(f"{name} folder: built in {build['build_s']:.1f} s, {build['gib_on_disk']:.2f} GiB on disk")
    print(f"{'setting':<11} {'load s':>6} {'1st step s':>10} {'s/step':>7} {'steps/s':>7} {'400 steps s':>11} "
          f"{'x 4 min':>7} {'peak GiB':>8} {'step GiB':>8} {'ckpt':>5} {'loss scale':>10}")
    figures: dict[str, float | bool | str | None] = {}
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<11} failed: {r['error']}")
            figures[f"{key}_error"] = r["error"]
            continue
        projected = PAPER_STEPS * r["s_per_step"]
        print(f"{key:<11} {r['load_s']:>6.1f} {r['first_step_s']:>10.1f} {r['s_per_step']:>7.3f} "
              f"{r['steps_per_s']:>7.3f} {projected:>11.0f} {projected / PAPER_S:>7.2f} {r['peak_gib']:>8.2f} "
              f"{r['step_peak_gib']:>8.2f} {'on' if r['checkpointing'] else 'off':>5} "
              f"{'-' if r['loss_scale'] is None else format(r['loss_scale'], 'g'):>10}")
        figures.update({f"{key}_steps_per_s": round(r["steps_per_s"], 4), f"{key}_peak_gib": round(r["peak_gib"], 3),
                        f"{key}_vs_paper_4min": round(projected / PAPER_S, 3),
                        f"{key}_gradient_checkpointing": r["checkpointing"]})
        if r["loss_scale"] is not None:
            figures[f"{key}_loss_scale"] = r["loss_scale"]
    for name in builds:  # fp16 against bf16 of the same family, both measured here
        bf16, fp16 = results.get(f"{name}_bf16", {}), results.get(f"{name}_fp16", {})
        if "s_per_step" in bf16 and "s_per_step" in fp16:
            figures[f"{name}_fp16_over_bf16_time"] = round(fp16["s_per_step"] / bf16["s_per_step"], 3)
    figures.update({f"{name}_build_s": round(b["build_s"], 1) for name, b in builds.items()})
    figures["total_s"] = round(total_s, 1)
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first includes the set-up)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--precisions", nargs="+", choices=("bf16", "fp16", "fp32"), default=["bf16", "fp16"],
                        help="bf16 is skipped where the card lacks it")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="auto: perfusion_core.memory's choice for the card's free memory")
    parser.add_argument("--tiny-cpu", action="store_true",
                        help=argparse.SUPPRESS)  # self-check: the same code, tiny models, on the CPU in fp32
    parser.add_argument("--child-build", type=Path, help=argparse.SUPPRESS)  # build a folder (one family)
    parser.add_argument("--child-train", type=Path, help=argparse.SUPPRESS)  # train one setting from a folder
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if not args.tiny_cpu and not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_train needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False)")
    device = "cpu" if args.tiny_cpu else "cuda"
    if args.child_build:
        print(json.dumps(build_folder(args.child_build, args.families[0], device, args.tiny_cpu)))
        return
    if args.child_train:
        checkpointing = {"auto": None, "on": True, "off": False}[args.gradient_checkpointing]
        print(json.dumps(train_setting(args.child_train, args.precisions[0], device, args.steps, args.warmup,
                                       checkpointing)))
        return
    start = time.perf_counter()
    builds: dict[str, dict] = {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="perfusion-gpu-models-") as tmp:
        for name in args.families:
            folder = Path(tmp) / name
            builds[name] = _child(args, "--child-build", str(folder), "--families", name)
            if "error" in builds[name]:
                sys.exit(f"building the {name} folder failed: {builds[name]['error']}")
            precisions = ["fp32"] if args.tiny_cpu else [
                p for p in args.precisions if p != "bf16" or builds[name]["bf16"]]
            for precision in precisions:
                results[f"{name}_{precision}"] = _child(args, "--child-train", str(folder), "--precisions", precision)
            shutil.rmtree(folder)  # free the disk before the next family
    _report(builds, results, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()

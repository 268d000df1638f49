"""API-format graphs for the tests: the test checkpoint, optional LoRAs and Apply Perfusion nodes."""

from __future__ import annotations

import hashlib
import json
from itertools import count
from pathlib import Path

import torch

from perfusion_core import Concept, save_concept
from perfusion_core.knobs import GATE

from .server import ComfyServer

CHECKPOINT = "tiny-sd15.safetensors"
TRAINING_FOLDER = "concept"  # in ComfyUI's input directory
SD1_FILES = {"checkpoints": (CHECKPOINT,), "diffusion_models": (CHECKPOINT,),  # UNETLoader reads a checkpoint's UNet
             "loras": ("tiny-lora-a.safetensors", "tiny-lora-b.safetensors"),
             "controlnet": ("tiny-controlnet.safetensors",), "hypernetworks": ("tiny-hypernetwork.pt",)}
SDXL_FILES = {"diffusion_models": ("sdxl-unet.safetensors",), "vae": ("sdxl-taesd.safetensors",),
              "text_encoders": ("sdxl-clip-l.safetensors", "sdxl-clip-g.safetensors")}  # models/ folder: files


def test_concept(layers_json: Path, word: str, seed: int, family: str = "sd1", superclass: str = "teddy") -> Concept:
    """A concept with random targets for the test checkpoint's layers (or, for `sdxl`, one that cannot fit)."""
    widths = json.loads(layers_json.read_text())
    g = torch.Generator().manual_seed(seed)
    d = {"sd1": 768, "sdxl": 2048}[family]
    i_star = torch.randn(d, generator=g)
    return Concept(
        word=word, superclass=superclass, family=family, context_dim=d,
        text_encoder_layer="penultimate" if family == "sdxl" else "last",  # what each family's host reads
        i_star=i_star, v=i_star.clone(), i_super=torch.randn(d, generator=g),
        embeddings=[torch.randn(768, generator=g) * 0.02]
        + ([torch.randn(1280, generator=g) * 0.02] if d == 2048 else []),
        o_v={name: torch.randn(w, generator=g) for name, w in widths.items()},
        training={"steps": "0", "images": "0"},
    )


def write_concept(folder: Path, name: str, concept: Concept) -> str:
    save_concept(concept, folder / f"{name}.safetensors")
    return f"{name}.safetensors"


MODEL_STAGES = ("loras", "concepts", "hypernetwork")


def sample_graph(prompt: str = "a photo of hugsy on the beach", seed: int = 1, steps: int = 4, size: int = 64,
                 loras: tuple[str, ...] = (), concepts: tuple[dict, ...] = (), order: tuple[str, ...] = MODEL_STAGES,
                 hypernetwork: bool = False, controlnet: bool = False, negative: str = "", save: bool = True,
                 checkpoint: str = CHECKPOINT, sdxl: bool = False, clip_skip: int = 1, keys: str = "") -> dict:
    """Checkpoint (or, with `sdxl`, the SDXL UNet, CLIP pair and VAE files; `clip_skip` as A1111 counts it) → LoRAs,
    Apply Perfusion nodes and the test hypernetwork (each stage if asked for, in `order`) (→ with `keys`, the test node
    that saves the first cross-attention layer's keys there) → encode (→ the test ControlNet on a flat hint image) →
    KSampler → decode → save."""
    if sdxl:
        g: dict[str, dict] = {
            "unet": {"class_type": "UNETLoader",
                     "inputs": {"unet_name": SDXL_FILES["diffusion_models"][0], "weight_dtype": "default"}},
            "clip": {"class_type": "DualCLIPLoader", "inputs": {
                "clip_name1": SDXL_FILES["text_encoders"][0], "clip_name2": SDXL_FILES["text_encoders"][1],
                "type": "sdxl"}},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": SDXL_FILES["vae"][0]}},
        }
        model, clip, vae = ["unet", 0], ["clip", 0], ["vae", 0]
    else:
        g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
        model, clip, vae = ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]
    if clip_skip > 1:
        g["skip"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": clip, "stop_at_clip_layer": -clip_skip}}
        clip = ["skip", 0]

    def add_loras():
        nonlocal model, clip
        for k, lora in enumerate(loras):
            g[f"lora{k}"] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": lora, "strength_model": 1.0, "strength_clip": 1.0}}
            model, clip = [f"lora{k}", 0], [f"lora{k}", 1]

    def add_concepts():
        nonlocal model, clip
        for k, c in enumerate(concepts):
            g[f"load{k}"] = {"class_type": "PerfusionLoadConcept", "inputs": {"concept_name": c["name"]}}
            g[f"apply{k}"] = {"class_type": "PerfusionApply", "inputs": {
                "model": model, "clip": clip, "concept": [f"load{k}", 0], "beta": c.get("beta", 0.7),
                "tau": c.get("tau", 0.15), "strength": c.get("strength", 1.0), "lock": c.get("lock", "trained"),
                "region_weight": c.get("region_weight", GATE["region_weight"].default)}}
            if "region" in c:
                g[f"apply{k}"]["inputs"]["region"] = add_half_mask(f"region{k}", c["region"])
            model, clip = [f"apply{k}", 0], [f"apply{k}", 1]

    def add_half_mask(name: str, side: str) -> list:
        """A mask of the image's left or right half, from ComfyUI's own mask nodes."""
        g[f"{name}_empty"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": size, "height": size}}
        g[f"{name}_half"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": size // 2, "height": size}}
        g[name] = {"class_type": "MaskComposite", "inputs": {
            "destination": [f"{name}_empty", 0], "source": [f"{name}_half", 0], "x": 0 if side == "left" else size // 2,
            "y": 0, "operation": "add"}}
        return [name, 0]

    def add_hypernetwork():
        nonlocal model
        if hypernetwork:
            g["hyper"] = {"class_type": "HypernetworkLoader", "inputs": {
                "model": model, "hypernetwork_name": SD1_FILES["hypernetworks"][0], "strength": 1.0}}
            model = ["hyper", 0]

    stages = {"loras": add_loras, "concepts": add_concepts, "hypernetwork": add_hypernetwork}
    for stage in order:
        stages[stage]()
    if keys:
        g["keys"] = {"class_type": "PerfusionTestKeys", "inputs": {"model": model, "path": keys}}
        model = ["keys", 0]
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": negative}}
    positive, negative_cond = ["pos", 0], ["neg", 0]
    if controlnet:
        g["cnet"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": SD1_FILES["controlnet"][0]}}
        g["hint"] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                            "color": 0xC08040}}
        g["control"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative_cond, "control_net": ["cnet", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        positive, negative_cond = ["control", 0], ["control", 1]
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative_cond, "latent_image": ["latent", 0],
        "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": vae}}
    g["save"] = {"class_type": "SaveImage" if save else "PreviewImage",
                 "inputs": {"images": ["decode", 0], **({"filename_prefix": "test"} if save else {})}}
    return g


def sweep_graph(betas: str, prefix: str, concept: str = "hugsy.safetensors", **sampling) -> dict:
    """`sample_graph(**sampling)` with its model and CLIP from a Perfusion Gate Sweep of `concept` over `betas`."""
    graph = sample_graph(**sampling)
    graph["load"] = {"class_type": "PerfusionLoadConcept", "inputs": {"concept_name": concept}}
    graph["sweep"] = {"class_type": "PerfusionGateSweep", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "concept": ["load", 0], "betas": betas,
        "tau": 0.15, "strength": 1.0, "lock": "trained"}}
    graph["sample"]["inputs"]["model"] = ["sweep", 0]
    for node in ("pos", "neg"):
        graph[node]["inputs"]["clip"] = ["sweep", 1]
    graph["save"]["inputs"]["filename_prefix"] = prefix
    return graph


def write_training_images(folder: Path, count: int = 2, size: int = 64) -> list[str]:
    """`count` seeded noise-and-shape PNGs (with an alpha channel marking the shape) written into `folder`."""
    from PIL import Image, ImageDraw

    names = []
    g = torch.Generator().manual_seed(7)
    for k in range(count):
        pixels = (torch.rand(size, size, 3, generator=g) * 80 + 60).byte().numpy()
        image = Image.fromarray(pixels).convert("RGBA")
        draw = ImageDraw.Draw(image)
        draw.ellipse((8 + 4 * k, 12, size - 10, size - 8), fill=(200, 120, 40, 255))
        alpha = Image.new("L", (size, size), 0)
        ImageDraw.Draw(alpha).ellipse((8 + 4 * k, 12, size - 10, size - 8), fill=255)
        image.putalpha(alpha)
        names.append(f"concept-{k}.png")
        image.save(folder / names[-1])
    return names


def training_folder(input_dir: Path) -> str:
    """Training images written into the folder `TRAINING_FOLDER` of ComfyUI's input directory; its name."""
    (input_dir / TRAINING_FOLDER).mkdir(parents=True, exist_ok=True)
    write_training_images(input_dir / TRAINING_FOLDER)
    return TRAINING_FOLDER


def train_graph(folder: str, name: str, steps: int = 5, seed: int = 0, save_every: int = 0,
                preview_every: int = 5, resume: bool = False, caption_count: int = 64, batch_size: int = 4,
                checkpoint: str = CHECKPOINT, compute_dtype: str | None = None,
                weight_dtype: str | None = None, word: str = "hugsy", superclass: str = "teddy",
                resolution: int = 64) -> dict:
    """Checkpoint (its UNet stored in `weight_dtype` through UNETLoader and computing in `compute_dtype`, if given) +
    the input directory's `folder` of images (and their alpha as the mask) → Train Perfusion → save the loss curve
    and previews."""
    g: dict[str, dict] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    model = ["ckpt", 0]
    if weight_dtype:
        g["unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": checkpoint, "weight_dtype": weight_dtype}}
        model = ["unet", 0]
    if compute_dtype:
        g["dtype"] = {"class_type": "ModelComputeDtype", "inputs": {"model": model, "dtype": compute_dtype}}
        model = ["dtype", 0]
    g["images"] = {"class_type": "PerfusionTrainingImages", "inputs": {"folder": folder, "resolution": resolution}}
    g["train"] = {"class_type": "PerfusionTrain", "inputs": {
        "model": model, "clip": ["ckpt", 1], "vae": ["ckpt", 2], "images": ["images", 0], "mask": ["images", 1],
        "word": word,
        "superclass": superclass, "name": name, "steps": steps, "lr_target": 0.03, "lr_embedding": 0.006,
        "batch_size": batch_size, "seed": seed, "beta": 0.75, "tau": 0.1, "preview_every": preview_every,
        "save_every": save_every, "resume": resume, "caption_count": caption_count}}
    g["loss"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 1], "filename_prefix": f"{name}-loss"}}
    g["previews"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 2], "filename_prefix": f"{name}-pv"}}
    return g


_outputs = count()


def render(server: ComfyServer, **kwargs) -> str:
    """Run a sampling graph (forced to execute) and return the hash of the saved PNG."""
    graph = sample_graph(**kwargs)
    graph["save"]["inputs"]["filename_prefix"] = f"t{next(_outputs)}"  # a new output: the graph re-executes
    entry = server.run(graph)
    return hashlib.sha256(server.images(entry, "save")[0]).hexdigest()


def keys(server: ComfyServer, **kwargs) -> torch.Tensor:
    """The keys of the first cross-attention layer in the first UNet call of `render(server, **kwargs)`: K after its
    projection, with every patch of the graph applied."""
    from safetensors.torch import load_file

    path = server.base / "output" / f"keys-{next(_outputs)}.safetensors"
    render(server, keys=str(path), **kwargs)
    return load_file(path)["keys"]


def fresh(server: ComfyServer, **kwargs) -> str:
    """`render` after `/free`, so that every node and model is loaded anew."""
    server.free()
    return render(server, **kwargs)

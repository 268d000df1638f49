"""API-format graphs for the tests: the test checkpoint, optional LoRAs and Apply Perfusion nodes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from perfusion_core import Concept, save_concept

CHECKPOINT = "tiny-sd15.safetensors"


def test_concept(layers_json: Path, word: str, seed: int, family: str = "sd1", superclass: str = "teddy") -> Concept:
    """A concept with random targets for the test checkpoint's layers (or, for `sdxl`, one that cannot fit)."""
    widths = json.loads(layers_json.read_text())
    g = torch.Generator().manual_seed(seed)
    d = {"sd1": 768, "sdxl": 2048}[family]
    i_star = torch.randn(d, generator=g)
    return Concept(
        word=word, superclass=superclass, family=family, context_dim=d, text_encoder_layer="last",
        i_star=i_star, v=i_star.clone(), i_super=torch.randn(d, generator=g),
        embeddings=[torch.randn(768, generator=g) * 0.02] + ([torch.randn(1280, generator=g) * 0.02] if d == 2048 else []),
        o_v={name: torch.randn(w, generator=g) for name, w in widths.items()},
        training={"steps": "0", "images": "0"},
    )


def write_concept(folder: Path, name: str, concept: Concept) -> str:
    save_concept(concept, folder / f"{name}.safetensors")
    return f"{name}.safetensors"


def sample_graph(prompt: str = "a photo of hugsy on the beach", seed: int = 1, steps: int = 4, size: int = 64,
                 loras: tuple[str, ...] = (), concepts: tuple[dict, ...] = (), apply_first: bool = False,
                 negative: str = "", save: bool = True, checkpoint: str = CHECKPOINT) -> dict:
    """Checkpoint → (LoRAs, Apply Perfusion nodes, in the order asked) → encode → KSampler → decode → save."""
    g: dict[str, dict] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    model, clip = ["ckpt", 0], ["ckpt", 1]

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
                "tau": c.get("tau", 0.15), "strength": c.get("strength", 1.0), "lock": c.get("lock", "local")}}
            model, clip = [f"apply{k}", 0], [f"apply{k}", 1]

    for step in ((add_concepts, add_loras) if apply_first else (add_loras, add_concepts)):
        step()
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": negative}}
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage" if save else "PreviewImage",
                 "inputs": {"images": ["decode", 0], **({"filename_prefix": "test"} if save else {})}}
    return g

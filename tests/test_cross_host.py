"""A concept trained in one host works in every other: one random-weight SD1.5-shaped checkpoint (`harness.sd15`) in
ComfyUI (the first tree of `COMFYUI_PATH`), in AUTOMATIC1111 (`A1111_PATH`) and, as a diffusers folder of the same
weights, for the command line and `load_perfusion`. Each host trains a concept for a few steps; each file is then
read and applied in the other hosts. See tests/README.md, "Across hosts"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.a1111_server import running_webui, webui_host
from harness.comfy.graphs import render, train_graph, training_folder, write_training_images
from harness.comfy.server import cache_dir, comfyui_tree, running_server
from harness.sd15 import NAME, SIZE, shared_model
from perfusion_core import cross_attention_layers, load_concept, load_perfusion, unload_perfusion

_MISSING = [name for name in ("COMFYUI_PATH", "A1111_PATH") if not os.environ.get(name)]
pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.a1111,
    pytest.mark.skipif(bool(_MISSING), reason=f"the cross-host test needs a ComfyUI and an A1111: "
                                              f"{' and '.join(_MISSING)} not set (see tests/README.md)"),
]

REPO = Path(__file__).resolve().parents[1]
HOSTS = ("cli", "comfyui", "a1111")
WORDS = {"cli": "wugsy", "comfyui": "hugsy", "a1111": "zorbly"}  # the concept each host trains (file WORD.safetensors)
STEPS = 3
# what every file records, whichever host trained it: superclass, family, text-encoder layer, training gate (β, τ)
RECORD = {"superclass": "teddy", "family": "sd1", "text_encoder_layer": "last", "beta": "0.75", "tau": "0.1",
          "steps": str(STEPS)}


@pytest.fixture(scope="module")
def model() -> tuple[Path, Path]:
    return shared_model(webui_host("A1111"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_training_images(folder)
    return folder


@pytest.fixture(scope="module")
def comfy(model):
    with running_server(comfyui_tree()) as server:
        (server.base / "models" / "checkpoints" / model[0].name).symlink_to(model[0])
        yield server


@pytest.fixture(scope="module")
def webui(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for source in (model[0], model[0].with_suffix(".yaml")):  # A1111 reads the config beside the checkpoint
        (folder / source.name).symlink_to(source)
    with running_webui(webui_host("A1111"), root, folder / model[0].name) as server:
        yield server


@pytest.fixture(scope="module")
def pipe(model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(model[1])


def _train_cli(folder: Path, images: Path, out: Path) -> None:
    command = [sys.executable, "-m", "perfusion_core", "train", "--model", str(folder), "--images", str(images),
               "--superclass", RECORD["superclass"], "--token", WORDS["cli"], "--out", str(out), "--steps", str(STEPS),
               "--batch-size", "1", "--grad-accum", "1", "--save-every", "0", "--caption-count", "64",
               "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PERFUSION_CACHE": str(cache_dir() / "second-moments")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]


def _train_comfyui(server) -> Path:
    server.run(train_graph(training_folder(server.base / "input"), WORDS["comfyui"], steps=STEPS,
                           preview_every=STEPS, batch_size=1, checkpoint=f"{NAME}.safetensors", word=WORDS["comfyui"],
                           superclass=RECORD["superclass"]))
    return server.perfusion_dir / f"{WORDS['comfyui']}.safetensors"


def _train_a1111(server, images: Path) -> Path:
    status, outcome = server.call("/perfusion/v1/train", {
        "word": WORDS["a1111"], "superclass": RECORD["superclass"], "images": str(images), "steps": STEPS,
        "batch_size": 1, "grad_accum": 1, "resolution": SIZE, "save_every": 0})
    assert status == 200, outcome
    return Path(outcome["path"])


@pytest.fixture(scope="module")
def trained(model, images, comfy, webui, tmp_path_factory) -> dict[str, Path]:
    """Each host's concept, copied into the concept folders of the others."""
    files = {"cli": tmp_path_factory.mktemp("cli") / f"{WORDS['cli']}.safetensors"}
    _train_cli(model[1], images, files["cli"])
    files["comfyui"] = _train_comfyui(comfy)
    files["a1111"] = _train_a1111(webui, images)
    for path in files.values():
        for folder in (comfy.perfusion_dir, webui.concepts):
            if path.parent != folder:
                shutil.copy(path, folder / path.name)
    return files


def test_the_checkpoint_and_the_diffusers_folder_hold_the_same_weights(model, pipe):
    from safetensors import safe_open

    with safe_open(str(model[0]), "pt") as checkpoint:
        for layer in cross_attention_layers(pipe.unet):
            for side in ("to_k", "to_v"):
                stored = checkpoint.get_tensor(f"model.diffusion_model.{layer.name}.{side}.weight")
                assert torch.equal(getattr(layer, side).weight, stored), (layer.name, side)
        embeddings = checkpoint.get_tensor("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, embeddings)


@pytest.mark.parametrize("source", HOSTS)
def test_every_host_reads_the_same_record(source, trained, comfy, webui, pipe):
    """The file's layer names and widths are the diffusers UNet's (LDM names); its word, family, text-encoder layer
    and training gate are the same as the core, ComfyUI's loader and A1111's card read them."""
    word = WORDS[source]
    concept = load_concept(trained[source])
    assert {name: t.shape[0] for name, t in concept.o_v.items()} == {
        layer.name: layer.v_dim for layer in cross_attention_layers(pipe.unet)}
    core = {"word": concept.word, "superclass": concept.superclass, "family": concept.family,
            "text_encoder_layer": concept.text_encoder_layer, **concept.training}
    assert core.items() >= {"word": word, **RECORD}.items()
    described = comfy.get(f"/perfusion/concept?name={word}.safetensors")
    assert {k: described[k] for k in ("word", "superclass", "family", "text_encoder_layer", "steps")} == {
        "word": word, **{k: RECORD[k] for k in ("superclass", "family", "text_encoder_layer", "steps")}}
    card = next(c for c in webui.call("/perfusion/v1/concepts")[1] if c["name"] == word)
    assert (card["trigger word"], card["superclass"], card["base model"], card["text-encoder layer"],
            card["training beta"], card["training tau"], card["training steps"]) == (
        word, *(RECORD[k] for k in ("superclass", "family", "text_encoder_layer", "beta", "tau", "steps")))


def _in_comfyui(comfy, word: str) -> None:
    prompt, checkpoint = f"a photo of {word}", f"{NAME}.safetensors"
    plain = render(comfy, prompt=prompt, checkpoint=checkpoint)
    applied = render(comfy, prompt=prompt, checkpoint=checkpoint,
                     concepts=({"name": f"{word}.safetensors", "beta": 0.7, "tau": 0.15},))
    assert applied != plain
    assert render(comfy, prompt=prompt, checkpoint=checkpoint) == plain


def _in_a1111(webui, word: str) -> None:
    prompt = f"a photo of {word}"
    plain = webui.generate(prompt)["images"][0]
    applied = webui.generate(f"<perfusion:{word}:0.7:tau=0.15> {prompt}")
    assert applied["images"][0] != plain and f'Perfusion: "{word}:0.70:0.15"' in applied["infotext"]
    assert webui.generate(prompt)["images"][0] == plain


def _image(pipe, prompt: str) -> bytes:
    return pipe(prompt, num_inference_steps=4, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(1),
                output_type="np").images[0].tobytes()


def _in_diffusers(pipe, path: Path) -> None:
    prompt = f"a photo of {load_concept(path).word}"
    plain = _image(pipe, prompt)
    load_perfusion(pipe, path, beta=0.7, tau=0.15)
    try:
        applied = _image(pipe, prompt)
    finally:
        unload_perfusion(pipe)
    assert applied != plain
    assert _image(pipe, prompt) == plain


@pytest.mark.parametrize(("source", "target"), [(s, t) for s in HOSTS for t in ("diffusers", "comfyui", "a1111")
                                                if t != s and (s, t) != ("cli", "diffusers")])
def test_a_concept_from_one_host_applies_in_another(source, target, trained, comfy, webui, pipe):
    """Applied with β 0.7 and τ 0.15, the concept changes the image; a plain run after it equals the one before."""
    if target == "diffusers":
        _in_diffusers(pipe, trained[source])
    elif target == "comfyui":
        _in_comfyui(comfy, WORDS[source])
    else:
        _in_a1111(webui, WORDS[source])

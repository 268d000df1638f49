"""Acceptance: this repository as an extension of a real AUTOMATIC1111 (`A1111_PATH`, its interpreter in
`A1111_PYTHON`, default `$A1111_PATH/venv/bin/python`) and, with `FORGE_PATH` / `FORGE_PYTHON`, of Forge or
reForge: the web UI started offline on CPU in API mode with random-weight SD1-architecture and SDXL checkpoints
that these tests build. Each test runs once per web UI. See tests/README.md, "AUTOMATIC1111"."""

from __future__ import annotations

import base64
import io
import re
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.a1111_server import OFFLINE, build_model, is_forge_backend, is_reforge, running_webui, webui_host
from perfusion_a1111.tags import ConceptRequest, parse_infotext
from perfusion_core import load_concept
from perfusion_core.concept import family_for_width
from perfusion_core.knobs import GATE

pytestmark = pytest.mark.a1111

HOSTS = ("A1111", "FORGE")  # environment variable prefixes: A1111_PATH, A1111_PYTHON, FORGE_PATH, ...
HYPERNETWORK = "testhyper"


def pytest_generate_tests(metafunc):
    """Run every test once per web UI; one not configured reports each test skipped, by name."""
    if "server" in metafunc.fixturenames:
        params = [pytest.param(prefix, id=prefix.lower(), marks=pytest.mark.skipif(
            not webui_host(prefix)[0],
            reason=f"{metafunc.function.__name__}[{prefix.lower()}]: {prefix}_PATH is not set (see tests/README.md)",
        )) for prefix in HOSTS]
        metafunc.parametrize("server", params, indirect=True, scope="module")


def _write_lora(path: Path, context_dim: int, channels: int) -> None:
    """A rank-2 LoRA (kohya names) on the K and V projections of the tiny UNet's first cross-attention."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {}
    for projection in ("to_k", "to_v"):
        name = f"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_{projection}"
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, context_dim, generator=g)
        tensors[f"{name}.lora_up.weight"] = torch.randn(channels, 2, generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(2.0)
    path.parent.mkdir(parents=True)
    save_file(tensors, path)


def _write_hypernetwork(path: Path, context_dim: int) -> None:
    """A hypernetwork in A1111's format, one linear layer per side: K reads `x + x Wᵀ + b` (`_hypernetwork_keys`)."""
    g = torch.Generator().manual_seed(0)
    sides = tuple({"linear.0.weight": torch.randn(context_dim, context_dim, generator=g) * 0.2,
                   "linear.0.bias": torch.randn(context_dim, generator=g) * 0.2} for _ in range(2))
    path.parent.mkdir(parents=True)
    # the legacy format: A1111's pickle check refuses the zip format's `.format_version` entry of newer torch
    torch.save({context_dim: sides, "layer_structure": [1, 1], "activation_func": "linear", "is_layer_norm": False,
                "activate_output": False, "dropout_structure": [0, 0], "name": path.stem}, path,
               _use_new_zipfile_serialization=False)


def _hypernetwork_keys(path: Path, context: torch.Tensor) -> torch.Tensor:
    """What A1111's attention hands K for `context` with the hypernetwork at `path` loaded at strength 1."""
    side = next(sides[0] for width, sides in torch.load(path).items() if isinstance(width, int))
    return context + torch.nn.functional.linear(context, side["linear.0.weight"], side["linear.0.bias"])


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    host = webui_host(request.param)
    # Forge and reForge know a checkpoint only by its UNet's shapes: SD1- and SD2-shaped test models there
    (width, wide), channels = ((768, 1024), 320) if is_forge_backend(host) or is_reforge(host) else ((64, 96), 32)
    root = tmp_path_factory.mktemp(request.param.lower())
    models, concepts = root / "models" / "Stable-diffusion", root / "models" / "perfusion"
    concepts.mkdir(parents=True)
    tiny = build_model(host, models, "tiny", width, 0, (concepts / "hugsy.safetensors", concepts / "teddo.safetensors"))
    build_model(host, models, "tiny2", width, 1)
    build_model(host, models, "wide", wide, 2)
    build_model(host, models, "xl", 2048, 3, (concepts / "xlsy.safetensors",))  # Forge, reForge: a full-size UNet
    _write_lora(root / "models" / "Lora" / "testlora.safetensors", width, channels)
    _write_hypernetwork(root / "models" / "hypernetworks" / f"{HYPERNETWORK}.pt", width)
    try:
        with running_webui(host, root, tiny, families=(family_for_width(width), family_for_width(wide))) as instance:
            yield instance
    finally:
        for checkpoint in models.glob("*.safetensors"):
            checkpoint.unlink()  # up to 7 GB each; pytest keeps the last runs' folders (server.log stays)


@pytest.fixture(scope="module")
def baseline(server) -> str:
    """An image of the concept word without the tag, made before the tag was ever used."""
    return server.generate("a photo of hugsy")["images"][0]


def test_tag_changes_the_image_and_leaves_no_trace(server, baseline):
    tagged = server.generate("<perfusion:hugsy:0.7> a photo of hugsy")
    assert tagged["images"][0] != baseline
    # again: the patch of one generation does not stack on the last one's
    assert server.generate("<perfusion:hugsy:0.7> a photo of hugsy")["images"][0] == tagged["images"][0]
    assert 'Perfusion: "hugsy:0.70:0.15"' in tagged["infotext"]
    assert "Perfusion hashes: " in tagged["infotext"]
    after = [server.generate("a photo of hugsy")["images"][0] for _ in range(2)]
    assert after == [baseline, baseline]


def test_two_concepts_each_with_its_own_gate(server):
    def image(prompt: str) -> str:
        return server.generate(prompt)["images"][0]

    both = server.generate("<perfusion:hugsy:0.7> <perfusion:teddo:0.6:tau=0.2> hugsy and teddo")
    assert 'Perfusion: "hugsy:0.70:0.15, teddo:0.60:0.20"' in both["infotext"]
    singles = {image("<perfusion:hugsy:0.7> hugsy and teddo"), image("<perfusion:teddo:0.6:tau=0.2> hugsy and teddo")}
    assert both["images"][0] not in singles and len(singles) == 2
    assert image("<perfusion:hugsy:0.7> <perfusion:teddo:0.4:tau=0.2> hugsy and teddo") != both["images"][0]


def test_regions_paint_each_concept_and_leave_no_trace(server, baseline):
    from PIL import Image

    prompt = "hugsy and teddo"
    plain = server.generate(f"<perfusion:hugsy:0.7> <perfusion:teddo:0.7> {prompt}")["images"][0]
    painted = server.generate(f"<perfusion:hugsy:0.7:region=left> <perfusion:teddo:0.7:region=right> {prompt}")
    weight = f"region_weight={GATE['region_weight'].default:.2f}"
    assert f'Perfusion: "hugsy:0.70:0.15:region=left:{weight}, teddo:0.70:0.15:region=right:{weight}"' in \
        painted["infotext"]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    path = server.root / "models" / "perfusion" / "regions" / "left-mask.png"
    path.parent.mkdir(exist_ok=True)
    mask.save(path)
    from_mask = server.generate(f"<perfusion:hugsy:0.7:region=left-mask> <perfusion:teddo:0.7:region=right> {prompt}")
    swapped = server.generate(f"<perfusion:hugsy:0.7:region=right> <perfusion:teddo:0.7:region=left> {prompt}")
    locked = server.generate(f"<perfusion:hugsy:0.7:lock=global:region=left> "
                             f"<perfusion:teddo:0.7:lock=global:region=right> {prompt}")
    assert f"hugsy:0.70:0.15:lock=global:region=left:{weight}, " in locked["infotext"]
    locked_plain = server.generate(f"<perfusion:hugsy:0.7:lock=global> <perfusion:teddo:0.7:lock=global> {prompt}")
    images = {plain, painted["images"][0], swapped["images"][0], locked["images"][0], locked_plain["images"][0]}
    assert len(images) == 5
    assert from_mask["images"][0] == painted["images"][0]  # the saved left half is the named left half
    status, error = server.call("/sdapi/v1/txt2img", {"prompt": "<perfusion:hugsy:0.7:region=nowhere> hugsy",
                                                      "steps": 2, "width": 64, "height": 64})
    assert status == 500 and "region 'nowhere' is neither" in error["errors"]
    assert server.generate("a photo of hugsy")["images"][0] == baseline


def test_unknown_concept_stops_the_generation_with_its_name(server, baseline):
    status, error = server.call("/sdapi/v1/txt2img", {"prompt": "<perfusion:nope:0.7> a photo", "steps": 2,
                                                      "width": 64, "height": 64})
    assert status == 500
    assert "perfusion concept 'nope' not found" in error["errors"]
    assert server.generate("a photo of hugsy")["images"][0] == baseline


def test_global_and_context_lock_keys_read_the_superclass_prompt(server, baseline):
    prompt = "a photo of hugsy"
    superclass = load_concept(server.concepts / "hugsy.safetensors").superclass
    # K of the concept prompt under global locking is K of the superclass prompt, token for token (the negative
    # prompt's rows are their own superclass prompt); locally locked, K reads the concept prompt
    reference = server.keys(f"a photo of {superclass}")["output"]
    assert torch.equal(server.keys(f"<perfusion:hugsy:0.5:lock=global> {prompt}")["output"], reference)
    assert not torch.allclose(server.keys(f"<perfusion:hugsy:0.5:strength=0> {prompt}")["output"], reference)
    # strength 0 leaves every projection's input as it is, so only where K reads matters
    local = server.generate(f"<perfusion:hugsy:0.5:strength=0> {prompt}")
    global_ = server.generate(f"<perfusion:hugsy:0.5:strength=0:lock=global> {prompt}")
    assert global_["images"][0] != local["images"][0]
    assert 'Perfusion: "hugsy:0.50:0.15:strength=0.00:lock=global"' in global_["infotext"]
    full = server.generate(f"<perfusion:hugsy:0.5:lock=global> {prompt}")["images"][0]
    assert full not in (global_["images"][0], baseline)
    assert server.generate(f"<perfusion:hugsy:0.5:lock=global> {prompt}")["images"][0] == full  # cached conds
    # context locking: the same keys, V reads the superclass prompt too (on Forge and reForge through the relay)
    assert torch.equal(server.keys(f"<perfusion:hugsy:0.5:lock=context> {prompt}")["output"], reference)
    context = server.generate(f"<perfusion:hugsy:0.5:lock=context> {prompt}")
    assert context["images"][0] not in (full, baseline)
    assert 'lock=context"' in context["infotext"]
    assert server.generate(prompt)["images"][0] == baseline


def test_a_hypernetwork_reaches_the_keys_in_both_lock_modes(server, baseline):
    """A1111's attention runs a loaded hypernetwork on the context before K and V read it. Under global locking K reads
    the superclass prompt through the hypernetwork's K side, as the superclass prompt alone would; locally locked
    (strength 0: the gated edit leaves K's input as it is), K reads the prompt through it."""
    if server.forge or server.reforge:
        pytest.skip("Forge and reForge: their UNet clones run their own attention; hypernetworks are not checked there")
    prompt, hyper = "a photo of hugsy", f"<hypernet:{HYPERNETWORK}:1>"
    superclass = load_concept(server.concepts / "hugsy.safetensors").superclass
    file = server.root / "models" / "hypernetworks" / f"{HYPERNETWORK}.pt"
    plain = server.keys(f"a photo of {superclass}")["input"]
    reference = server.keys(f"{hyper} a photo of {superclass}")
    assert torch.allclose(reference["input"], _hypernetwork_keys(file, plain), atol=1e-5)
    global_ = server.keys(f"{hyper} <perfusion:hugsy:0.5:lock=global> {prompt}")
    assert torch.equal(global_["input"], reference["input"]) and torch.equal(global_["output"], reference["output"])
    local = server.keys(f"<perfusion:hugsy:0.5:strength=0> {prompt}")["input"]
    local_hyper = server.keys(f"{hyper} <perfusion:hugsy:0.5:strength=0> {prompt}")["input"]
    assert torch.allclose(local_hyper, _hypernetwork_keys(file, local), atol=1e-5)
    images = {server.generate(f"{tag} <perfusion:hugsy:0.5:lock={lock}> {prompt}")["images"][0]
              for tag in ("", hyper) for lock in ("local", "global")}
    assert len(images) == 4  # the hypernetwork changes the image in either mode
    assert server.generate(prompt)["images"][0] == baseline


def test_a_damaged_concept_is_listed_with_its_error_and_applying_it_fails_with_that_error(server, baseline):
    good = (server.concepts / "hugsy.safetensors").read_bytes()
    path = server.concepts / "broken.safetensors"
    path.write_bytes(good[: len(good) // 2])
    try:
        listed = {c["name"]: c for c in server.call("/perfusion/v1/concepts")[1]}
        message = listed["broken"]["error"]
        assert "broken.safetensors" in message and not listed["hugsy"]["error"]
        cards = {c["name"]: c for c in server.call("/perfusion-probe/v1/cards")[1]}
        assert cards["broken"]["description"] == f"damaged: {message}"
        assert cards["broken"]["metadata"]["damaged"] == message
        status, error = server.call("/sdapi/v1/txt2img", {"prompt": "<perfusion:broken:0.7> a photo", "steps": 2,
                                                          "width": 64, "height": 64})
        assert status == 500 and message in error["errors"] and "not found" not in error["errors"]
    finally:
        path.unlink()
    assert server.generate("a photo of hugsy")["images"][0] == baseline


def test_lora_and_perfusion_apply_together(server, baseline):
    prompt = "a photo of hugsy"
    lora = server.generate(f"<lora:testlora:1> {prompt}")["images"][0]
    perfusion = server.generate(f"<perfusion:hugsy:0.7> {prompt}")["images"][0]
    both = server.generate(f"<lora:testlora:1> <perfusion:hugsy:0.7> {prompt}")
    assert lora != baseline and both["images"][0] not in (lora, perfusion)
    assert "Lora hashes" in both["infotext"] and "Perfusion hashes" in both["infotext"]
    assert server.generate(prompt)["images"][0] == baseline


def test_img2img_applies_the_concept(server, baseline):
    def img2img(prompt: str) -> str:
        status, result = server.call("/sdapi/v1/img2img", {
            "init_images": [baseline], "prompt": prompt, "denoising_strength": 0.6, "steps": 4, "width": 64,
            "height": 64, "seed": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny", "enable_pnginfo": False}})
        assert status == 200, result
        return result["images"][0]

    plain = img2img("a photo of hugsy")
    assert img2img("<perfusion:hugsy:0.7> a photo of hugsy") != plain
    assert img2img("a photo of hugsy") == plain


def test_infotext_round_trips_and_pasting_renames_by_hash(server):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    prompt = "<perfusion:hugsy:0.65:tau=0.2:strength=0.8> a photo of hugsy"
    first = server.generate(prompt, pnginfo=True)
    status, pasted = server.call("/sdapi/v1/png-info", {"image": "data:image/png;base64," + first["images"][0]})
    assert status == 200
    if "parameters" not in pasted:  # A1111 1.6: png-info returns the text only; pasting (and its callback) is UI-only
        written = re.search(r'Perfusion: "([^"]*)"', pasted["info"])
        assert pasted["info"].startswith(prompt + "\n") and written
        assert parse_infotext(written[1]) == [ConceptRequest("hugsy", 0.65, 0.2, 0.8)]
        pytest.skip("this A1111 (< 1.7) parses no infotext in /sdapi/v1/png-info: the rest is checked from 1.7 on")
    params = pasted["parameters"]
    assert params["Prompt"] == prompt
    assert parse_infotext(params["Perfusion"]) == [ConceptRequest("hugsy", 0.65, 0.2, 0.8)]
    again = server.generate(params["Prompt"], pnginfo=True, seed=int(params["Seed"]), steps=int(params["Steps"]),
                            cfg_scale=float(params["CFG scale"]), sampler_name=params["Sampler"])
    assert again["images"][0] == first["images"][0]

    # the same image as someone else shared it, naming the concept differently: the hash finds our file
    image = Image.open(io.BytesIO(base64.b64decode(first["images"][0])))
    info = PngInfo()
    info.add_text("parameters", pasted["info"].replace("hugsy:", "their_teddy:").replace(
        "<perfusion:hugsy", "<perfusion:their_teddy"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    status, renamed = server.call("/sdapi/v1/png-info",
                                  {"image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()})
    assert status == 200
    assert renamed["parameters"]["Prompt"] == prompt


def test_hires_fix_applies_the_concept_in_both_passes(server):
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5,
             "hr_second_pass_steps": 2}
    if server.forge:  # its API fails on the default (None) of this Forge-only field
        hires["hr_additional_modules"] = ["Use same choices"]
    plain = server.generate("a photo of hugsy", **hires)
    tagged = server.generate("<perfusion:hugsy:0.7> a photo of hugsy", **hires)
    assert tagged["images"][0] != plain["images"][0]
    assert 'Perfusion: "hugsy:0.70:0.15"' in tagged["infotext"] and "Hires upscale: 2" in tagged["infotext"]
    assert server.generate("a photo of hugsy", **hires)["images"][0] == plain["images"][0]


def test_model_switch_keeps_working_and_another_base_is_refused(server):
    on_tiny = server.generate("<perfusion:hugsy:0.7> a photo of hugsy")["images"][0]
    plain2 = server.generate("a photo of hugsy", model="tiny2")["images"][0]
    tagged2 = server.generate("<perfusion:hugsy:0.7> a photo of hugsy", model="tiny2")["images"][0]
    assert tagged2 != plain2
    status, error = server.call("/sdapi/v1/txt2img", {
        "prompt": "<perfusion:hugsy:0.7> a photo of hugsy", "steps": 2, "width": 64, "height": 64,
        "override_settings": {"sd_model_checkpoint": "wide"}})
    assert status == 500
    tiny, wide = server.families
    assert f"concept 'hugsy' is for {tiny}" in error["errors"] and f"this model is {wide}" in error["errors"]
    assert server.generate("<perfusion:hugsy:0.7> a photo of hugsy")["images"][0] == on_tiny
    assert server.generate("a photo of hugsy", model="tiny2")["images"][0] == plain2


def test_sdxl_concept_in_both_text_encoders_changes_the_image_and_leaves_no_trace(server):
    """An SDXL model (A1111: `sd_xl_base.yaml` with a small UNet and the full OpenCLIP bigG text tower; Forge and
    reForge: full size): the word reaches CLIP-L and CLIP-G, the patch covers every cross-attention layer, global
    locking reads both encoders' superclass prompt, nothing stays behind."""
    before = server.generate("a photo of xlsy", model="xl")["images"][0]
    applied = server.generate("<perfusion:xlsy:0.7> a photo of xlsy", model="xl")
    assert applied["images"][0] != before and 'Perfusion: "xlsy:0.70:0.15"' in applied["infotext"]
    assert server.generate("a photo of xlsy", model="xl")["images"][0] == before
    # global locking: K reads the prompt encoded with the superclass word in both text encoders
    local = server.generate("<perfusion:xlsy:0.5:strength=0> a photo of xlsy", model="xl")["images"][0]
    global_ = server.generate("<perfusion:xlsy:0.5:strength=0:lock=global> a photo of xlsy", model="xl")["images"][0]
    assert global_ != local
    assert server.generate("a photo of xlsy", model="xl")["images"][0] == before
    status, error = server.call("/sdapi/v1/txt2img", {
        "prompt": "<perfusion:hugsy:0.7> a photo of hugsy", "steps": 2, "width": 64, "height": 64,
        "override_settings": {"sd_model_checkpoint": "xl", **OFFLINE["xl"]}})
    assert status == 500 and "concept 'hugsy' is for" in error["errors"] and "sdxl" in error["errors"]
    server.generate("a photo of hugsy")  # the tiny model loaded again: training uses the loaded one


def _images_folder(root: Path) -> Path:
    from PIL import Image

    folder = root / "train-images"
    folder.mkdir(exist_ok=True)
    for k in range(3):
        pixels = bytes((k * 70 + x * 3 + y) % 256 for y in range(64) for x in range(64) for _ in range(4))
        image = Image.frombytes("RGBA", (64, 64), pixels)
        image.putalpha(255 if k else 128)
        image.save(folder / f"{k}.png")
    return folder


def test_train_route_writes_a_loadable_concept_and_resumes(server):
    request = {"word": "zorbly", "superclass": "toy", "images": str(_images_folder(server.root)), "steps": 5,
               "batch_size": 1, "grad_accum": 1, "resolution": 64, "save_every": 2, "preview_every": 5,
               "preview_steps": 2}
    status, outcome = server.call("/perfusion/v1/train", request)
    assert status == 200, outcome
    path = Path(outcome["path"])
    assert path == server.concepts / "zorbly.safetensors" and outcome["steps"] == 5
    concept = load_concept(path)
    assert (concept.word, concept.superclass, concept.family, concept.text_encoder_layer) == (
        "zorbly", "toy", server.families[0], "last")
    assert len(concept.o_v) == 7 and concept.training["steps"] == "5"
    assert path.with_suffix(".preview.png").is_file() and (server.concepts / "zorbly.state.safetensors").is_file()
    names = [c["name"] for c in server.call("/perfusion/v1/concepts")[1]]
    assert "zorbly" in names

    plain = server.generate("a photo of zorbly")["images"][0]
    assert server.generate("<perfusion:zorbly:0.7> a photo of zorbly")["images"][0] != plain

    resume = {**request, "steps": 7, "resume": True, "gradient_checkpointing": True}
    status, resumed = server.call("/perfusion/v1/train", resume)
    assert status == 200, resumed
    assert resumed["steps"] == 7 and resumed["losses"][:5] == outcome["losses"]
    assert load_concept(path).training["steps"] == "7"


def test_sdxl_training_learns_the_word_in_both_text_encoders(server):
    """A Train tab run on the SDXL model (the trainer's gradient checkpointing on): one embedding per text encoder,
    a value target for every cross-attention layer, keys locked, and the concept changes the image."""
    request = {"word": "xlzor", "superclass": "toy", "images": str(_images_folder(server.root)), "steps": 3,
               "batch_size": 1, "grad_accum": 1, "resolution": 64, "save_every": 3, "preview_every": 3,
               "preview_steps": 2, "gradient_checkpointing": True}
    keys = ("sd_model_checkpoint", *OFFLINE["xl"])
    before = {key: server.call("/sdapi/v1/options")[1][key] for key in keys}
    assert server.call("/sdapi/v1/options", {"sd_model_checkpoint": "xl", **OFFLINE["xl"]})[0] == 200
    try:
        status, outcome = server.call("/perfusion/v1/train", request)
        assert status == 200, outcome
        concept = load_concept(Path(outcome["path"]))
        assert (concept.family, concept.text_encoder_layer) == ("sdxl", "penultimate")
        assert [e.shape[-1] for e in concept.embeddings] == [768, 1280]
        assert set(concept.o_v) == set(load_concept(server.concepts / "xlsy.safetensors").o_v) and not concept.o_k
        assert len(outcome["losses"]) == 3
        # gradients reached the word's embedding in both text encoders (AdamW keeps no moments for a parameter
        # that never had one)
        state = load_file(server.concepts / "xlzor.state.safetensors")
        moments = [state.get(f"optimizer.embedding.{k}.exp_avg") for k in (0, 1)]
        assert all(m is not None and m.abs().max() > 0 for m in moments)
        plain = server.generate("a photo of xlzor", model="xl")["images"][0]
        assert server.generate("<perfusion:xlzor:0.7> a photo of xlzor", model="xl")["images"][0] != plain
    finally:
        server.call("/sdapi/v1/options", before)


def test_interrupting_training_keeps_the_last_checkpoint(server):
    request = {"word": "quibble", "superclass": "toy", "images": str(_images_folder(server.root)), "steps": 100000,
               "batch_size": 1, "grad_accum": 1, "resolution": 64}
    threading.Timer(8, lambda: server.call("/sdapi/v1/interrupt", {})).start()
    status, error = server.call("/perfusion/v1/train", request)
    assert status == 400
    stopped = re.search(r"training stopped at step (\d+)", error["detail"])
    assert stopped, error
    if int(stopped.group(1)) > 0:
        assert "quibble.state.safetensors) is kept" in error["detail"]
        assert load_concept(server.concepts / "quibble.safetensors").training["steps"] == stopped.group(1)


def test_bad_training_input_is_reported(server):
    status, error = server.call("/perfusion/v1/train", {"word": "w", "superclass": "toy", "images": "/nonexistent"})
    assert status == 400 and "does not exist" in error["detail"]
    status, error = server.call("/perfusion/v1/train", {"word": "w", "superclass": "toy", "images": "/x", "lr": 1})
    assert status == 422 and "unknown fields ['lr']" in error["detail"]
    # a word the model knows (the superclass itself) would be overridden everywhere: refused, as in every host
    request = {"word": "toy", "superclass": "toy", "images": str(_images_folder(server.root)), "steps": 1,
               "resolution": 64}
    status, error = server.call("/perfusion/v1/train", request)
    assert status == 400 and "already a word of this model's vocabulary" in error["detail"]

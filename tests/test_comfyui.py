"""The node pack against a real ComfyUI (`COMFYUI_PATH`), driven through its HTTP API on CPU, one thread.

Images are compared bit for bit, always between runs that really executed at the same thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from harness.comfy.graphs import fresh, keys, render, sample_graph, sweep_graph
from harness.comfy.server import ComfyError, ComfyServer, cache_dir, comfyui_trees, running_server
from perfusion_core.knobs import GATE, RECIPE

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not comfyui_trees(), reason="set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI tests"),
]


@pytest.fixture(scope="module", params=comfyui_trees(), ids=str)
def server(request):
    from harness.comfy.graphs import test_concept, write_concept

    with running_server(request.param) as s:
        layers = cache_dir() / "models" / "tiny-sd15.layers.json"
        for word, seed in (("hugsy", 0), ("wugsy", 1)):
            write_concept(s.perfusion_dir, word, test_concept(layers, word, seed))
        skippy = dataclasses.replace(test_concept(layers, "skippy", 4), text_encoder_layer="hidden9")  # an old name
        write_concept(s.perfusion_dir, "skippy", skippy)
        write_concept(s.perfusion_dir, "xlsy", test_concept(layers, "xlsy", 2, family="sdxl"))
        yield s


HUGSY = {"name": "hugsy.safetensors"}
WUGSY = {"name": "wugsy.safetensors"}
PROMPT = "a photo of hugsy on the beach"  # the graphs' default prompt
SUPERCLASS_PROMPT = "a photo of teddy on the beach"  # with the test concepts' superclass in the concept word's place


def test_pack_loads_with_its_nodes(server):
    info = server.get("/object_info")
    for node in ("PerfusionLoadConcept", "PerfusionApply", "PerfusionGateSweep"):
        assert node in info, f"{node} missing; server log:\n{server.log.read_text()[-3000:]}"
    apply = info["PerfusionApply"]["input"]["required"]
    assert all(spec[1].get("tooltip") for spec in apply.values())
    # the gate and recipe widgets are the core's tables: defaults, ranges and meanings
    sweep = info["PerfusionGateSweep"]["input"]["required"]
    train = info["PerfusionTrain"]["input"]["required"]
    for inputs, table, left_out in ((apply, GATE, ()), (sweep, GATE, ("beta", "region_weight")),
                                    (train, RECIPE, ("grad_accum", "flip", "mask_floor", "preview_every"))):
        for name, knob in table.items():
            if name not in left_out:
                spec = inputs[name][1]
                assert (spec["default"], spec["min"], spec["max"]) == (knob.default, knob.low, knob.high), name
    assert "hugsy.safetensors" in info["PerfusionLoadConcept"]["input"]["required"]["concept_name"][1]["options"]
    log = server.log.read_text()
    assert "custom_nodes/perfusion" in log and "(IMPORT FAILED)" not in log


def test_apply_changes_the_image_and_leaves_no_trace(server):
    before = fresh(server)
    applied = render(server, concepts=(HUGSY,))
    assert applied != before
    assert render(server) == before
    assert fresh(server) == before


@pytest.mark.parametrize("order", [("loras", "concepts"), ("concepts", "loras")], ids=["lora-then-apply",
                                                                                      "apply-then-lora"])
def test_lora_and_concept_in_every_load_sequence(server, order):
    """The load sequences in which ComfyUI dropped or leaked LoRA weights of patched layers (shared/docs/comfyui.md):
    each LoRA + concept run equals the patch on LoRA-merged weights, and the plain runs after it are unchanged."""
    lora = ("tiny-lora-a.safetensors",)
    reference = merged_reference(server)
    plain = fresh(server)
    plain_lora = fresh(server, loras=lora)
    assert plain_lora != plain and reference != render(server, concepts=(HUGSY,))  # the LoRA shows, concept or not
    # right after a plain LoRA run (apply-then-lora: the patch node before the LoRA)
    assert render(server, loras=lora, concepts=(HUGSY,), order=order) == reference
    # after /free: every model loaded anew
    assert fresh(server, loras=lora, concepts=(HUGSY,), order=order) == reference
    # a plain LoRA run after that: nothing of the patch stays in the weights
    assert render(server, loras=lora) == plain_lora
    # right after a run with another LoRA
    render(server, loras=("tiny-lora-b.safetensors",))
    assert render(server, loras=lora, concepts=(HUGSY,), order=order) == reference
    assert render(server, loras=lora) == plain_lora
    assert render(server) == plain


def test_apply_with_a_controlnet_in_one_graph(server):
    plain = fresh(server)
    concept = render(server, concepts=(HUGSY,))
    control = render(server, controlnet=True)
    both = render(server, concepts=(HUGSY,), controlnet=True)
    assert len({plain, concept, control, both}) == 4  # the ControlNet and the concept each change the image
    assert fresh(server, concepts=(HUGSY,), controlnet=True) == both
    assert render(server, controlnet=True) == control
    assert render(server) == plain


@pytest.mark.parametrize("lock", ["local", "global", "context"])
def test_apply_with_another_attn2_patch_in_one_graph(server, lock):
    """A hypernetwork (ComfyUI's HypernetworkLoader, an attn1/attn2 patch of K and V inputs) beside a concept: both
    apply, in either node order alike, and leave nothing behind. The hypernetwork reaches the keys: globally locked,
    they are the superclass prompt's through the hypernetwork; locally locked at strength 0 (the gated edit leaves K's
    input as it is), those of the prompt through it."""
    use = {**HUGSY, "lock": lock}
    plain = fresh(server)
    hyper = render(server, hypernetwork=True)
    concept = render(server, concepts=(use,))
    both = render(server, concepts=(use,), hypernetwork=True)
    assert len({plain, hyper, concept, both}) == 4
    assert render(server, concepts=(use,), hypernetwork=True, order=("hypernetwork", "concepts")) == both
    assert render(server, hypernetwork=True) == hyper
    assert render(server) == plain
    reference = keys(server, prompt=SUPERCLASS_PROMPT, hypernetwork=True)
    assert not torch.allclose(reference, keys(server, prompt=SUPERCLASS_PROMPT))
    prompt = PROMPT if lock != "local" else SUPERCLASS_PROMPT
    for order in (("concepts", "hypernetwork"), ("hypernetwork", "concepts")):
        patched = keys(server, prompt=prompt, concepts=({**use, "strength": 0.0},), hypernetwork=True, order=order)
        assert torch.equal(patched, reference), order


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickle"])
def test_a_corrupt_concept_file_gives_a_clear_error_and_the_server_keeps_working(server, content):
    import pickle

    name = f"broken-{content}.safetensors"
    good = (server.perfusion_dir / "hugsy.safetensors").read_bytes()
    data = {"garbage": b"\x13" * 2048, "truncated": good[: len(good) // 2],
            "pickle": pickle.dumps({"i_star": list(range(768))})}[content]
    (server.perfusion_dir / name).write_bytes(data)
    plain, applied = fresh(server), render(server, concepts=(HUGSY,))
    with pytest.raises(ComfyError) as error:
        render(server, concepts=({"name": name},))
    assert "ConceptFileError" in str(error.value) and name in str(error.value), error.value
    # listed by the loader, which shows the route's message on the node
    options = server.get("/object_info/PerfusionLoadConcept")["PerfusionLoadConcept"]["input"]["required"]
    assert name in options["concept_name"][1]["options"]
    assert server.get(f"/perfusion/concept?name={name}")["error"] in str(error.value)
    assert render(server) == plain and render(server, concepts=(HUGSY,)) == applied


_merged: dict[int, str] = {}


def merged_reference(server: ComfyServer) -> str:
    """LoRA A merged into a checkpoint file (ComfyUI's CheckpointSave), then Apply: the patch on LoRA weights."""
    if id(server) not in _merged:
        g = {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
            "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                     "lora_name": "tiny-lora-a.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
            "save": {"class_type": "CheckpointSave", "inputs": {"model": ["lora", 0], "clip": ["lora", 1],
                     "vae": ["ckpt", 2], "filename_prefix": "checkpoints/merged"}},
        }
        server.run(g)
        merged = next((server.base / "output" / "checkpoints").glob("merged*.safetensors"))
        (server.base / "models" / "checkpoints" / "merged.safetensors").symlink_to(merged)
        server.free()
        _merged[id(server)] = render(server, concepts=(HUGSY,), checkpoint="merged.safetensors")
    return _merged[id(server)]


def test_the_order_of_chained_concepts_changes_no_bit(server):
    from harness.comfy.graphs import test_concept, write_concept

    write_concept(server.perfusion_dir, "zugsy", test_concept(cache_dir() / "models" / "tiny-sd15.layers.json",
                                                              "zugsy", 3))
    zugsy = {"name": "zugsy.safetensors", "beta": 0.6, "tau": 0.2}
    prompt = "a photo of hugsy, wugsy and zugsy"
    two = render(server, prompt=prompt, concepts=(HUGSY, {**WUGSY, "beta": 0.65}))
    assert render(server, prompt=prompt, concepts=({**WUGSY, "beta": 0.65}, HUGSY)) == two
    three = {render(server, prompt=prompt, concepts=order) for order in (
        (HUGSY, WUGSY, zugsy), (zugsy, WUGSY, HUGSY), (WUGSY, zugsy, HUGSY))}
    assert len(three) == 1 and three != {two}


def _apply_graph(**inputs) -> dict:
    graph = sample_graph(concepts=(HUGSY,))
    graph["apply0"]["inputs"].update(inputs)
    return graph


def _train_graph(server, **inputs) -> dict:
    from harness.comfy.graphs import train_graph, training_folder

    graph = train_graph(training_folder(server.base / "input"), "refused", steps=1, preview_every=1)
    graph["train"]["inputs"].update(inputs)
    return graph


@pytest.mark.parametrize(("graph", "message"), [
    (lambda s: _apply_graph(beta=float("nan")), "concept 'hugsy': beta must be a number from 0.0 to 1.0, got nan"),
    (lambda s: _apply_graph(tau=float("nan")), "concept 'hugsy': tau must be a number from 0.01 to 1.0, got nan"),
    (lambda s: _apply_graph(region_weight=float("nan")), "region_weight must be a number from 0.0 to 5.0, got nan"),
    (lambda s: _apply_graph(strength=float("inf")), "Value inf bigger than max of 2.0"),  # ComfyUI's own check
    (lambda s: _apply_graph(concept="hugsy"), "expected a Perfusion concept, got str"),
    (lambda s: _apply_graph(model="model"), "input 'model' must be a MODEL, got str"),
    (lambda s: _train_graph(s, batch_size=0), "Value 0 smaller than min of 1"),
    (lambda s: _train_graph(s, beta=float("nan")), "training: beta must be a number from 0.0 to 1.0, got nan"),
    (lambda s: _train_graph(s, images="photo.png"), "input 'images' must be an IMAGE, got str"),
    (lambda s: _train_graph(s, superclass="polar bear"), "the superclass 'polar bear' must be one plain word"),
    (lambda s: _train_graph(s, name="../x"), "name '../x' must be a plain file name"),
    (lambda s: sweep_graph("0.5, nan", "sweep"), "betas: beta must be a number from 0.0 to 1.0, got nan"),
], ids=["beta-nan", "tau-nan", "region-weight-nan", "strength-inf", "concept-str", "model-str", "batch-size-0",
        "train-beta-nan", "images-str", "superclass-words", "name-folder", "betas-nan"])
def test_bad_input_is_refused_by_name_once_and_the_server_keeps_working(server, graph, message):
    plain = render(server)
    with pytest.raises(ComfyError) as error:
        server.run(graph(server))
    text = str(error.value)
    refused = [e for node in error.value.details.get("node_errors", {}).values() for e in node["errors"]]
    if refused:  # by ComfyUI's validation, before running: one error, for the input at fault
        assert len(refused) == 1 and message in json.dumps(refused[0]), text[:3000]
    else:  # by the node, when it runs
        assert text.count(message) == 1, text[:3000]
    assert "Traceback" not in text and "ZeroDivisionError" not in text and "AttributeError" not in text
    assert render(server) == plain


def test_chained_concepts_form_one_joint_patch(server):
    prompt = "a photo of hugsy and wugsy"
    both = render(server, prompt=prompt, concepts=(HUGSY, WUGSY))
    assert both not in {render(server, prompt=prompt, concepts=(HUGSY,)), render(server, prompt=prompt)}
    # applying a concept again replaces it: (hugsy β 0.3, wugsy, hugsy β 0.7) is (wugsy, hugsy β 0.7)
    again = render(server, prompt=prompt, concepts=({**HUGSY, "beta": 0.3}, WUGSY, HUGSY))
    assert again == render(server, prompt=prompt, concepts=(WUGSY, HUGSY))


def test_regions_paint_each_concept_in_one_pass_and_leave_no_trace(server):
    prompt = "a photo of hugsy and wugsy"
    plain = render(server, prompt=prompt, concepts=(HUGSY, WUGSY))
    painted = render(server, prompt=prompt, concepts=({**HUGSY, "region": "left"}, {**WUGSY, "region": "right"}))
    swapped = render(server, prompt=prompt, concepts=({**HUGSY, "region": "right"}, {**WUGSY, "region": "left"}))
    stronger = render(server, prompt=prompt, concepts=({**HUGSY, "region": "left", "region_weight": 3.0},
                                                       {**WUGSY, "region": "right"}))
    assert len({plain, painted, swapped, stronger}) == 4
    global_lock = render(server, prompt=prompt, concepts=({**HUGSY, "region": "left", "lock": "global"}, WUGSY))
    assert global_lock not in {plain, painted}
    assert render(server, prompt=prompt, concepts=(HUGSY, WUGSY)) == plain  # the regions are gone with their nodes
    again = render(server, prompt=prompt, concepts=({**HUGSY, "region": "left"}, {**WUGSY, "region": "right"}))
    assert again == painted


def test_global_and_context_lock_keys_are_those_of_the_superclass_prompt(server):
    """Globally (or context-) locked, K reads the prompt encoded with the superclass word in the concept word's place:
    the keys are the unpatched model's for the superclass prompt (the negative prompt is its own). Locally locked they
    are not."""
    reference = keys(server, prompt=SUPERCLASS_PROMPT)
    assert torch.equal(keys(server, prompt=PROMPT, concepts=({**HUGSY, "lock": "global"},)), reference)
    assert not torch.allclose(keys(server, prompt=PROMPT, concepts=(HUGSY,)), reference)
    local = render(server, concepts=(HUGSY,))
    assert render(server, concepts=({**HUGSY, "lock": "global", "beta": 0.5},)) != local
    global_lock = render(server, concepts=({**HUGSY, "lock": "global", "beta": 0.7},))
    assert global_lock != local
    # context locking: the same keys, and V reads the superclass prompt too (another image)
    assert torch.equal(keys(server, prompt=PROMPT, concepts=({**HUGSY, "lock": "context"},)), reference)
    assert render(server, concepts=({**HUGSY, "lock": "context", "beta": 0.7},)) not in {local, global_lock}


def test_clip_skip_is_named_as_every_host_names_it(server):
    """CLIP Set Last Layer -3 reads the layer A1111 calls CLIP skip 3 and diffusers clip_skip=2: 'last-2'."""
    with pytest.raises(ComfyError, match="trained on text-encoder layer 'last' but this model reads layer 'last-2'"):
        render(server, concepts=(HUGSY,), clip_skip=3)
    assert render(server, concepts=({"name": "skippy.safetensors"},), clip_skip=3) != render(server, clip_skip=3)


def test_wrong_family_stops_the_run_with_the_core_error(server):
    with pytest.raises(ComfyError) as error:
        render(server, concepts=({"name": "xlsy.safetensors"},))
    assert "IncompatibleConceptError" in str(error.value) and "sdxl" in str(error.value)


def test_gate_sweep_renders_one_image_per_beta(server):
    from harness.comfy.graphs import sweep_graph

    entry = server.run(sweep_graph("0.5, 0.7", "sweep"))
    images = server.images(entry, "save")
    assert len(images) == 2 and images[0] != images[1]
    single = render(server, concepts=({**HUGSY, "beta": 0.7},))
    assert hashlib.sha256(images[1]).hexdigest() == single


def test_loader_route_describes_a_concept(server):
    info = server.get("/perfusion/concept?name=hugsy.safetensors")
    assert (info["word"], info["superclass"], info["family"]) == ("hugsy", "teddy", "sd1")
    script = server.request("/extensions/perfusion/perfusion.js").decode()
    assert "PerfusionLoadConcept" in script


@pytest.fixture(scope="module")
def training_images(server) -> str:
    from harness.comfy.graphs import training_folder

    return training_folder(server.base / "input")


def test_training_images_load_a_folder_of_any_sizes_as_square_crops_with_alpha_masks(server):
    from PIL import Image

    folder = server.base / "input" / "photos" / "mixed"
    folder.mkdir(parents=True)
    wide = Image.new("RGB", (192, 128), (0, 255, 0))  # green, with red and blue sides that the crop cuts off
    wide.paste((255, 0, 0), (0, 0, 32, 128))
    wide.paste((0, 0, 255), (160, 0, 192, 128))
    wide.save(folder / "a.jpg", quality=100)
    tall = Image.new("RGBA", (128, 256), (255, 255, 255, 255))
    tall.paste((255, 255, 255, 0), (0, 0, 64, 256))  # transparent left half
    tall.save(folder / "b.png")
    (server.base / "input" / "empty").mkdir()
    info = server.get("/object_info/PerfusionTrainingImages")["PerfusionTrainingImages"]["input"]["required"]
    assert "photos/mixed" in info["folder"][1]["options"] and "empty" not in info["folder"][1]["options"]

    graph = {"images": {"class_type": "PerfusionTrainingImages", "inputs": {"folder": "photos/mixed",
                                                                              "resolution": 64}},
             "mask": {"class_type": "MaskToImage", "inputs": {"mask": ["images", 1]}},
             "save_images": {"class_type": "SaveImage", "inputs": {"images": ["images", 0],
                                                                   "filename_prefix": "crops"}},
             "save_mask": {"class_type": "SaveImage", "inputs": {"images": ["mask", 0], "filename_prefix": "mask"}}}
    entry = server.run(graph)
    crops = [torch.frombuffer(bytearray(b), dtype=torch.uint8).view(64, 64, 3).float()
             for b in server.images(entry, "save_images")]
    masks = [torch.frombuffer(bytearray(b), dtype=torch.uint8).view(64, 64, 3)[..., 0].float() / 255
             for b in server.images(entry, "save_mask")]
    assert len(crops) == 2 and len(masks) == 2
    assert (crops[0][..., 1] > 200).all() and (crops[0][..., [0, 2]] < 60).all()  # the wide photo's centre only
    assert (masks[0] == 1).all()  # no alpha: the whole photo
    assert masks[1][:, :30].max() == 0 and masks[1][:, 34:].min() == 1  # the tall photo's alpha, cropped

    (folder / "c.png").write_bytes(b"not a png")
    with pytest.raises(ComfyError) as error:
        server.run(graph)
    assert "cannot read image c.png" in str(error.value) and "Traceback" not in str(error.value)


def test_train_writes_a_concept_that_the_loader_reads(server, training_images):
    from harness.comfy.graphs import train_graph
    from perfusion_core import load_concept

    entry = server.run(train_graph(training_images, "trained", steps=5, preview_every=5))
    concept = load_concept(server.perfusion_dir / "trained.safetensors")
    described = (concept.word, concept.superclass, concept.family, concept.training["steps"])
    assert described == ("hugsy", "teddy", "sd1", "5")
    assert (server.perfusion_dir / "trained.state.safetensors").is_file()
    assert len(server.images(entry, "loss")) == 1 and len(server.images(entry, "previews")) == 1
    options = server.get("/object_info/PerfusionLoadConcept")["PerfusionLoadConcept"]["input"]["required"]
    assert "trained.safetensors" in options["concept_name"][1]["options"]
    assert "trained.state.safetensors" not in options["concept_name"][1]["options"]
    trained = {"name": "trained.safetensors"}
    assert render(server, concepts=(trained,)) != render(server)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_train_in_half_precision(server, training_images, dtype):
    """The UNet computing in fp16 trains with the loss scaler (its state is checkpointed), in bf16 without."""
    from safetensors import safe_open

    from harness.comfy.graphs import train_graph
    from perfusion_core import load_concept

    name = f"trained-{dtype}"
    server.run(train_graph(training_images, name, steps=3, preview_every=3, compute_dtype=dtype))
    concept = load_concept(server.perfusion_dir / f"{name}.safetensors")
    assert concept.training["steps"] == "3"
    assert all(torch.isfinite(t).all() for t in [*concept.o_v.values(), *concept.embeddings])
    with safe_open(server.perfusion_dir / f"{name}.state.safetensors", "pt") as state:
        assert ("loss_scale" in set(state.keys())) == (dtype == "fp16")
    assert render(server, concepts=({"name": f"{name}.safetensors"},)) != render(server)


def test_train_an_fp8_stored_unet(server, training_images):
    """A UNet stored in fp8 trains through ComfyUI's per-call cast, into float32 targets."""
    from harness.comfy.graphs import train_graph
    from perfusion_core import load_concept

    server.run(train_graph(training_images, "trained-fp8", steps=3, preview_every=3, weight_dtype="fp8_e4m3fn"))
    assert "model weight dtype torch.float8_e4m3fn" in server.log.read_text()  # ComfyUI's own account
    concept = load_concept(server.perfusion_dir / "trained-fp8.safetensors")
    assert concept.training["steps"] == "3" and all(torch.isfinite(t).all() for t in concept.o_v.values())
    assert render(server, concepts=({"name": "trained-fp8.safetensors"},)) != render(server)


def test_cancel_saves_the_steps_done_and_leaves_the_model_as_it_was(server, training_images):
    import time

    from harness.comfy.graphs import train_graph
    from perfusion_core import load_concept

    before = render(server)
    state = server.perfusion_dir / "cancelled.state.safetensors"
    prompt_id = server.submit(train_graph(training_images, "cancelled", steps=50, save_every=1, preview_every=50,
                                          seed=3))
    deadline = time.monotonic() + 300
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.is_file(), "no checkpoint was written within 300 s"
    server.post("/interrupt", {})
    with pytest.raises(ComfyError) as stopped:
        server.wait(prompt_id)
    messages = dict(stopped.value.details["status"]["messages"])
    assert "execution_interrupted" in messages and "execution_error" not in messages
    concept = load_concept(server.perfusion_dir / "cancelled.safetensors")
    assert 1 <= int(concept.training["steps"]) < 50
    assert not [p.name for p in server.perfusion_dir.iterdir() if p.name.startswith("cancelled") and
                not p.name.endswith(".safetensors")]
    assert render(server) == before


@pytest.mark.parametrize("name", ["train-one-concept", "apply-with-gate-sweep", "two-concepts-one-image",
                                  "paint-two-concepts"])
def test_example_workflow_runs_on_the_test_checkpoint(server, training_images, name):
    import json

    from harness.comfy.workflows import EXAMPLES, for_test, to_api

    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    assert (EXAMPLES / f"{name}.jpg").stat().st_size > 1000
    info = server.get("/object_info")
    deprecated = {n["type"] for n in workflow["nodes"] if info[n["type"]].get("deprecated")}
    assert not deprecated, f"{name} uses nodes this ComfyUI marks deprecated: {sorted(deprecated)}"
    graph = for_test(to_api(workflow, info))
    entry = server.run(graph)
    saved = [key for key, node in graph.items() if node["class_type"] == "SaveImage"]
    assert saved and all(server.images(entry, key) for key in saved)
    if name == "apply-with-gate-sweep":
        assert len(server.images(entry, saved[0])) == 4

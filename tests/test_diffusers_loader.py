"""Concepts in diffusers pipelines: small random SD1 and SDXL pipelines with CLIP tokenizers (CPU)."""

import dataclasses
import inspect
import re
import runpy
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from perfusion_core import (
    IncompatibleConceptError,
    PerfusionError,
    cross_attention_layers,
    load_concept,
    load_perfusion,
    set_perfusion,
    unload_perfusion,
)
from perfusion_core.diffusers_host import DiffusersHost
from perfusion_core.knobs import GATE
from perfusion_core.train import Trainer, TrainingData, TrainSettings
from perfusion_core.words import mentions, to_superclass

from .builders import WORDS, random_images, tiny_pipeline
from .conftest import random_concept

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
CAPTIONS = [" ".join(WORDS[k : k + 5]) for k in range(len(WORDS) - 5)]
PROMPT = "a photo of hugsy on the beach"


def _train(family: str, folder: Path) -> Path:
    tiny_pipeline(family).save_pretrained(folder)
    host = DiffusersHost(folder, captions=CAPTIONS, cache_dir=folder / "cache")
    settings = TrainSettings(word="hugsy", superclass="teddy", steps=2, batch_size=2, grad_accum=1)
    return Trainer(host, TrainingData(random_images(2)), settings, folder / "hugsy.safetensors").run().concept_path


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory) -> Path:
    """A concept trained for two steps on the SD1 pipeline's own model."""
    return _train("sd1", tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory) -> Path:
    return _train("sdxl", tmp_path_factory.mktemp("sdxl"))


def _render(pipe, prompt: str = PROMPT, **kwargs) -> torch.Tensor:
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent",
                **kwargs).images


def _text_parts(pipe) -> list[tuple]:
    return [(getattr(pipe, f"tokenizer{s}"), getattr(pipe, f"text_encoder{s}")) for s in ("", "_2")
            if getattr(pipe, f"text_encoder{s}", None) is not None]


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _state(pipe) -> dict:
    """Everything loading a concept touches, copied."""
    ids = [tokenizer(PROMPT).input_ids for tokenizer, _ in _text_parts(pipe)]
    return {
        "unet": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
        "hooks": _hooks(pipe.unet),  # (transformers hooks the text encoders itself, on their first use)
        "attached": [name for name in ("encode_prompt", "_perfusion") if name in vars(pipe)],
        "vocabularies": [(len(t), t.get_vocab()) for t, _ in _text_parts(pipe)],
        "ids": ids,
        "decoded": [t.decode(i) for (t, _), i in zip(_text_parts(pipe), ids, strict=True)],
        "encoders": [{k: v.clone() for k, v in e.state_dict().items()} for _, e in _text_parts(pipe)],
        "vocab_sizes": [e.config.vocab_size for _, e in _text_parts(pipe)],
        "trainable": [e.get_input_embeddings().weight.requires_grad for _, e in _text_parts(pipe)],
    }


def _assert_restored(pipe, before: dict) -> None:
    after = _state(pipe)
    for old, new in zip([before["unet"], *before["encoders"]], [after["unet"], *after["encoders"]], strict=True):
        assert old.keys() == new.keys()
        assert all(old[k].shape == new[k].shape and torch.equal(old[k], new[k]) for k in old)
    tensors = ("unet", "encoders")
    assert {k: v for k, v in after.items() if k not in tensors} == {k: v for k, v in before.items() if k not in tensors}


def _example_code() -> str:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL):
        if "load_perfusion(" in block:
            return block
    raise AssertionError("README.md has no Python example with load_perfusion")


def test_the_readme_example_runs_as_written(sd1_file, tmp_path, monkeypatch):
    shutil.copy(sd1_file, tmp_path / "hugsy.safetensors")
    monkeypatch.chdir(tmp_path)
    pipe = tiny_pipeline("sd1")
    before = _state(pipe)
    example = tmp_path / "example.py"
    example.write_text(_example_code())
    namespace = runpy.run_path(str(example), init_globals={"pipe": pipe})  # a script, as a reader would run it
    assert isinstance(namespace["image"], Image.Image) and namespace["image"].size == (16, 16)
    _assert_restored(pipe, before)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_concept_changes_the_image_and_unloading_restores_the_pipeline(family, sd1_file, sdxl_file):
    path = sd1_file if family == "sd1" else sdxl_file
    concept = load_concept(path)
    pipe = tiny_pipeline(family)
    pipe.text_encoder.requires_grad_(False)  # a frozen text encoder stays frozen
    before, plain = _state(pipe), _render(pipe)
    word_only = tiny_pipeline(family)  # the same weights, with the word's embedding alone (textual inversion)
    for (tokenizer, encoder), embedding in zip(_text_parts(word_only), concept.embeddings, strict=True):
        word_only.load_textual_inversion(embedding, token="hugsy", tokenizer=tokenizer, text_encoder=encoder)

    assert load_perfusion(pipe, path).word == "hugsy"
    for (tokenizer, encoder), embedding, (length, _) in zip(_text_parts(pipe), concept.embeddings,
                                                             before["vocabularies"], strict=True):
        assert len(tokenizer) == length + 1  # the word is one new token of each tokenizer, with its own embedding
        (word_id,) = tokenizer("hugsy", add_special_tokens=False).input_ids
        assert torch.equal(encoder.get_input_embeddings().weight[word_id], embedding)
    patched = _render(pipe)
    assert not torch.allclose(patched, plain, atol=1e-4)
    assert not torch.allclose(patched, _render(word_only), atol=1e-4)  # the UNet patch acts, not only the word

    unload_perfusion(pipe)
    assert torch.equal(_render(pipe), plain)
    _assert_restored(pipe, before)
    unload_perfusion(pipe)  # nothing loaded: nothing to do
    _assert_restored(pipe, before)


def test_set_perfusion_changes_the_gate_without_reloading(sd1_file, tmp_path):
    path = tmp_path / "hugsy.safetensors"
    shutil.copy(sd1_file, path)
    pipe = tiny_pipeline("sd1")
    load_perfusion(pipe, path, beta=0.7)
    path.unlink()  # nothing is read again
    at_07 = _render(pipe)
    set_perfusion(pipe, "hugsy", beta=0.3)
    at_03 = _render(pipe)
    assert not torch.allclose(at_03, at_07, atol=1e-4)
    set_perfusion(pipe, "hugsy", strength=0.5)  # β stays 0.3
    assert not torch.allclose(_render(pipe), at_03, atol=1e-4)
    set_perfusion(pipe, "hugsy", beta=0.7, strength=1.0)
    assert torch.equal(_render(pipe), at_07)
    with pytest.raises(PerfusionError, match="no concept 'sofy' is loaded.*'hugsy'"):
        set_perfusion(pipe, "sofy", beta=0.5)
    with pytest.raises(PerfusionError, match="lock must be one of"):
        set_perfusion(pipe, "hugsy", lock="everywhere")
    unload_perfusion(pipe)
    with pytest.raises(PerfusionError, match="call load_perfusion"):
        set_perfusion(pipe, "hugsy", beta=0.5)


def test_a_concept_that_does_not_fit_is_refused_and_changes_nothing(sd1_file, sdxl_file):
    sdxl = tiny_pipeline("sdxl")
    before = _state(sdxl)
    with pytest.raises(IncompatibleConceptError, match=r"sd1 \(context width 768\).*sdxl \(context width 2048\)"):
        load_perfusion(sdxl, sd1_file)
    with pytest.raises(IncompatibleConceptError, match="'last', which this sdxl pipeline cannot read"):
        load_perfusion(sdxl, dataclasses.replace(load_concept(sdxl_file), text_encoder_layer="last"))
    with pytest.raises(IncompatibleConceptError, match=r"widths \[768\] but this pipeline's text encoders take "
                                                       r"\[768, 1280\]"):
        sdxl_concept = load_concept(sdxl_file)
        load_perfusion(sdxl, dataclasses.replace(sdxl_concept, embeddings=sdxl_concept.embeddings[:1]))
    _assert_restored(sdxl, before)
    with pytest.raises(PerfusionError, match="has no unet"):
        load_perfusion(object(), sd1_file)

    sd1 = tiny_pipeline("sd1")
    before = _state(sd1)
    with pytest.raises(PerfusionError, match="'teddy' is already a word of this pipeline's tokenizer"):
        load_perfusion(sd1, dataclasses.replace(load_concept(sd1_file), word="teddy"))
    _assert_restored(sd1, before)


@pytest.mark.parametrize(("knob", "value"), [("beta", float("nan")), ("tau", float("inf")), ("strength", -1.0),
                                              ("region_weight", float("nan"))])
def test_bad_gate_values_are_refused_and_change_nothing(sd1_file, knob, value):
    pipe = tiny_pipeline("sd1")
    baseline, before = _render(pipe), _state(pipe)
    with pytest.raises(PerfusionError, match=rf"concept 'hugsy': {knob} must be a number from .* got {value}"):
        load_perfusion(pipe, sd1_file, **{knob: value})
    _assert_restored(pipe, before)
    assert torch.equal(_render(pipe), baseline)
    load_perfusion(pipe, sd1_file)
    patched = _render(pipe)
    with pytest.raises(PerfusionError, match=rf"{knob} must be a number from .* got {value}"):
        set_perfusion(pipe, "hugsy", **{knob: value})
    assert torch.equal(_render(pipe), patched)  # the concept keeps its settings
    unload_perfusion(pipe)
    assert torch.equal(_render(pipe), baseline)


def test_every_gate_knob_is_a_keyword_of_the_loader_and_the_setter():
    """The table's knobs with their defaults are `load_perfusion`'s keywords (and `set_perfusion`'s)."""
    loader = inspect.signature(load_perfusion).parameters
    setter = inspect.signature(set_perfusion).parameters
    for name, knob in GATE.items():
        assert loader[name].default == knob.default and name in setter


def test_a_concept_of_an_earlier_layer_needs_clip_skip(sdxl_file):
    # SDXL: SD1 pipelines of diffusers 0.42.1 cannot run clip_skip with transformers 5 (no text_model attribute)
    pipe = tiny_pipeline("sdxl")
    load_perfusion(pipe, dataclasses.replace(load_concept(sdxl_file), text_encoder_layer="last-2"))
    with pytest.raises(IncompatibleConceptError, match="'last-2' but this call reads 'penultimate'.*clip_skip=1"):
        _render(pipe)
    assert _render(pipe, clip_skip=1).isfinite().all()


def test_two_concepts_share_one_joint_patch(sd1_file):
    pipe = tiny_pipeline("sd1")
    before = _state(pipe)
    hugsy = load_concept(sd1_file)
    sofy = random_concept(cross_attention_layers(pipe.unet), word="sofy", seed=3)
    load_perfusion(pipe, hugsy)
    hugsy_alone = _render(pipe, "a photo of hugsy and sofy")
    load_perfusion(pipe, sofy, beta=0.6)
    both = _render(pipe, "a photo of hugsy and sofy")
    assert not torch.allclose(both, hugsy_alone, atol=1e-4)
    projectors = [patch.value.projector for patch in pipe.unet._perfusion_handle.patches.values()]
    assert all(p.names == ["hugsy", "sofy"] for p in projectors)
    assert len(pipe.tokenizer) == before["vocabularies"][0][0] + 2

    again = dataclasses.replace(hugsy, embeddings=[2 * hugsy.embeddings[0]])  # the same word: replaces hugsy
    load_perfusion(pipe, again, beta=0.5)
    projector = next(iter(pipe.unet._perfusion_handle.patches.values())).value.projector
    assert projector.names == ["hugsy", "sofy"] and [s.beta for s in projector.settings] == [0.5, 0.6]  # word order
    assert len(pipe.tokenizer) == before["vocabularies"][0][0] + 2
    (word_id,) = pipe.tokenizer("hugsy", add_special_tokens=False).input_ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[word_id], again.embeddings[0])

    unload_perfusion(pipe)
    _assert_restored(pipe, before)


def test_superclass_prompts_replace_whole_words_only():
    words = {"hugsy": "teddy", "hug": "cat"}
    assert to_superclass("Hugsy, hugsy! hugsys hugsy_2 unhugsy (hugsy) hug embedding:hugsy", words) == (
        "teddy, teddy! hugsys hugsy_2 unhugsy (teddy) cat embedding:hugsy")
    assert to_superclass("a hugsy", {}) == "a hugsy"
    assert mentions("A HUGSY", words) and not mentions("hugsys", words) and not mentions("a hugsy", [])


@pytest.mark.parametrize("lock", ["global", "context"])
def test_global_and_context_locks_read_the_superclass_prompt(sd1_file, lock):
    pipe = tiny_pipeline("sd1")
    before = _state(pipe)
    load_perfusion(pipe, sd1_file, beta=0.5, lock=lock)
    prompt = "a photo of hugsy and hugsys"
    global_lock = _render(pipe, prompt)
    superclass = pipe.unet._perfusion_handle.superclass_context  # the last UNet call's: [negative; prompt]
    context = pipe.encode_prompt(prompt, "cpu", 1, True)
    twin = pipe.encode_prompt("a photo of teddy and hugsys", "cpu", 1, False)[0]
    assert torch.equal(superclass[1], twin[0]) and not torch.equal(superclass[1], context[0][0])
    assert torch.equal(superclass[0], context[1][0])  # the empty negative prompt is its own superclass prompt

    set_perfusion(pipe, "hugsy", lock="local")
    assert not torch.allclose(_render(pipe, prompt), global_lock, atol=1e-4)
    assert _hooks(pipe.unet) == 4 * len(cross_attention_layers(pipe.unet))  # only the patch's own hooks
    set_perfusion(pipe, "hugsy", lock=lock)
    assert torch.equal(_render(pipe, prompt), global_lock)
    unload_perfusion(pipe)
    _assert_restored(pipe, before)


def test_regions_paint_each_concept_and_unload_exactly(sd1_file):
    pipe = tiny_pipeline("sd1")
    before, plain = _state(pipe), _render(pipe)
    left, right = torch.zeros(16, 16), torch.zeros(16, 16)
    left[:, :8], right[:, 8:] = 1, 1
    sofy = random_concept(cross_attention_layers(pipe.unet), word="sofy", seed=3)
    prompt = "a photo of hugsy and sofy"
    load_perfusion(pipe, sd1_file)
    load_perfusion(pipe, sofy)
    unpainted = _render(pipe, prompt)
    load_perfusion(pipe, sd1_file, region=left, region_weight=2.0)
    load_perfusion(pipe, sofy, region=right)
    painted = _render(pipe, prompt)
    assert not torch.allclose(painted, unpainted, atol=1e-4)
    set_perfusion(pipe, "hugsy", region_weight=4.0)
    assert not torch.allclose(_render(pipe, prompt), painted, atol=1e-4)
    set_perfusion(pipe, "hugsy", region_weight=2.0)
    assert torch.allclose(_render(pipe, prompt), painted)
    set_perfusion(pipe, "hugsy", region=None)
    set_perfusion(pipe, "sofy", region=None)
    assert torch.equal(_render(pipe, prompt), unpainted)  # no region left: attention is the host's own again
    with pytest.raises(PerfusionError, match="must hold values in \\[0, 1\\]"):
        set_perfusion(pipe, "hugsy", region=left * 3)
    unload_perfusion(pipe)
    assert torch.equal(_render(pipe), plain)
    _assert_restored(pipe, before)

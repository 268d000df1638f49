"""Concept files: round trip, sizes, storage precision, and every kind of bad file."""

import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from perfusion_core import ConceptFileError, PerfusionError, load_concept, patch_unet, save_concept
from perfusion_core.files import FORMAT_VERSION, concept_tensors, convert_pickled, read_safetensors

from .conftest import random_concept, tiny_unet, unet_inputs

ROOT = Path(__file__).resolve().parents[1]


def _real_layers(family: str):
    """The real SD1.5 / SDXL layer map, built on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    from perfusion_core import cross_attention_layers

    config = {"sd1": dict(cross_attention_dim=768), "sdxl": dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048, attention_head_dim=(5, 10, 20))}[family]
    with torch.device("meta"):
        return cross_attention_layers(UNet2DConditionModel(**config))


def _assert_same(a, b, tolerance=0.0):
    assert (a.word, a.superclass, a.family, a.context_dim, a.text_encoder_layer) == (
        b.word, b.superclass, b.family, b.context_dim, b.text_encoder_layer)
    assert a.training == b.training and a.c_fingerprint == b.c_fingerprint
    assert torch.equal(a.i_star, b.i_star) and torch.equal(a.v, b.v)  # always stored in float32
    assert a.o_v.keys() == b.o_v.keys() and a.o_k.keys() == b.o_k.keys()
    others = zip([a.i_super, *a.embeddings, *(a.o_v[k] for k in a.o_v), *(a.o_k[k] for k in a.o_k)],
                 [b.i_super, *b.embeddings, *(b.o_v[k] for k in a.o_v), *(b.o_k[k] for k in a.o_k)], strict=True)
    for x, y in others:
        assert (x - y).abs().max() <= tolerance * x.abs().max()


def test_round_trip_and_metadata(tmp_path, sd1_layers):
    concept = random_concept(sd1_layers)
    concept.thumbnail = "data:image/png;base64,iVBORw0KGgo="
    path = save_concept(concept, tmp_path / "hugsy.safetensors")
    loaded = load_concept(path)
    _assert_same(concept, loaded, tolerance=1e-3)
    _, meta = read_safetensors(path)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/perfusion"
    assert meta["modelspec.trigger_phrase"] == "hugsy" and meta["modelspec.hash_sha256"].startswith("0x")
    assert meta["perfusion.format_version"] == str(FORMAT_VERSION) and loaded.thumbnail == concept.thumbnail
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic save left no temporary file


def test_clip_skip_layers_have_one_name_in_every_host(tmp_path, sd1_layers):
    from perfusion_core.layers import canonical_layer, skip_layer_name

    # A1111's CLIP skip 3, diffusers' clip_skip=2 and ComfyUI's CLIP Set Last Layer -3 read the same layer
    assert skip_layer_name(3) == "last-2" and skip_layer_name(2) == "penultimate" and skip_layer_name(1) == "last"
    # files that ComfyUI once wrote count from the first layer
    assert [canonical_layer(f"hidden{k}", "sd1") for k in (9, 10, 11)] == ["last-2", "penultimate", "last"]
    assert canonical_layer("hidden22", "sd2") == "penultimate" and canonical_layer("last-2", "sd1") == "last-2"
    concept = dataclasses.replace(random_concept(sd1_layers), text_encoder_layer="hidden9")
    assert load_concept(save_concept(concept, tmp_path / "old.safetensors")).text_encoder_layer == "last-2"


def test_trained_key_targets_round_trip(tmp_path, sd1_layers):
    concept = random_concept(sd1_layers)
    concept.o_k = {layer.name: torch.randn(layer.k_dim) for layer in sd1_layers}
    loaded = load_concept(save_concept(concept, tmp_path / "k.safetensors"))
    _assert_same(concept, loaded, tolerance=1e-3)
    assert not loaded.key_locked and random_concept(sd1_layers).key_locked
    concept.o_k.popitem()
    with pytest.raises(PerfusionError, match="key targets"):
        concept.validate()


@pytest.mark.parametrize(("family", "limit_kb"), [("sd1", 40), ("sdxl", 220)])
def test_file_size_limits(tmp_path, family, limit_kb):
    layers = _real_layers(family)
    assert len(layers) == {"sd1": 16, "sdxl": 70}[family]
    concept = random_concept(layers)
    if family == "sdxl":
        concept.embeddings = [torch.randn(768), torch.randn(1280)]
    size = save_concept(concept, tmp_path / "c.safetensors").stat().st_size
    assert size <= limit_kb * 1024, f"{family} concept is {size / 1024:.1f} KB"


def test_fp16_storage_moves_patched_outputs_by_less_than_1e3(tmp_path, sd1_unet, sd1_layers):
    concept = random_concept(sd1_layers)
    loaded = load_concept(save_concept(concept, tmp_path / "c.safetensors"))
    inputs = unet_inputs(sd1_unet)
    inputs["encoder_hidden_states"][:, 1] = concept.i_star
    outputs = []
    for c in (concept, loaded):
        with torch.no_grad(), patch_unet(sd1_unet, [(c, 0.7, 0.15)]):
            outputs.append(sd1_unet(**inputs).sample)
    assert (outputs[1] - outputs[0]).abs().max() / outputs[0].abs().max() < 1e-3


def test_tensors_are_named_by_layer_path(sd1_layers):
    names = set(concept_tensors(random_concept(sd1_layers)))
    assert {f"{layer.name}.o_v" for layer in sd1_layers} <= names
    assert {"i_star", "v", "i_super", "embedding.0"} <= names


def test_pickles_are_refused_and_converted_weights_only(tmp_path, sd1_layers):
    concept = random_concept(sd1_layers)
    pt = tmp_path / "old.pt"
    torch.save({**concept_tensors(concept), "metadata": {
        "perfusion.concept_word": "hugsy", "perfusion.superclass_word": "teddy", "perfusion.family": "sd1",
        "perfusion.context_dim": "768", "perfusion.text_encoder_layer": "last"}}, pt)
    with pytest.raises(ConceptFileError, match="never unpickles.*convert"):
        load_concept(pt)
    renamed = tmp_path / "sneaky.safetensors"
    renamed.write_bytes(pt.read_bytes())
    with pytest.raises(ConceptFileError, match="pickle"):
        load_concept(renamed)
    convert_pickled(pt, tmp_path / "new.safetensors")
    assert load_concept(tmp_path / "new.safetensors").word == "hugsy"


def test_named_errors_for_bad_content(tmp_path, sd1_layers):
    path = save_concept(random_concept(sd1_layers), tmp_path / "c.safetensors")
    tensors, meta = read_safetensors(path)

    def write(t, m):
        p = tmp_path / "bad.safetensors"
        save_file(t, p, metadata=m)
        return p

    cases = {
        "newer than this perfusion": (tensors, {**meta, "perfusion.format_version": str(FORMAT_VERSION + 1)}),
        "checksum": (tensors, {**meta, "perfusion.concept_word": "other"}),
        "no 'perfusion.checksum'": (tensors, {k: v for k, v in meta.items() if k != "perfusion.checksum"}),
        "no 'perfusion.format_version'": ({"x": torch.zeros(1)}, {}),
    }
    for message, (t, m) in cases.items():
        with pytest.raises(ConceptFileError, match=message):
            load_concept(write(t, m))
    with pytest.raises(ConceptFileError, match="does not exist"):
        load_concept(tmp_path / "missing.safetensors")
    with pytest.raises(PerfusionError, match="NaN"):
        bad = random_concept(sd1_layers)
        bad.i_star[0] = float("nan")
        save_concept(bad, tmp_path / "nan.safetensors")


def _mutations(data: bytes, rng: random.Random):
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    kinds = ["truncate", "flip", "flip_header", "lie_length", "dtype", "shape", "offsets"]
    for k in range(1000):
        kind = kinds[k % len(kinds)]
        if kind == "truncate":
            yield data[: rng.randrange(len(data))]
        elif kind in ("flip", "flip_header"):
            b = bytearray(data)
            span = 8 + header_len if kind == "flip_header" else len(data)
            for _ in range(rng.choice((1, 1, 3))):
                b[rng.randrange(span)] = rng.randrange(256)
            yield bytes(b)
        elif kind == "lie_length":
            lie = rng.choice((header_len + rng.randrange(1, 64), max(0, header_len - rng.randrange(1, 64)),
                              2**63 - 1, 2**64 - 1, rng.randrange(2**40)))
            yield lie.to_bytes(8, "little") + data[8:]
        else:
            h = json.loads(json.dumps(header))
            name = rng.choice([n for n in h if n != "__metadata__"])
            if kind == "dtype":
                h[name]["dtype"] = rng.choice(["I64", "U8", "BF16", "F64", "BOOL", "XX"])
            elif kind == "shape":
                h[name]["shape"] = [rng.randrange(1, 5000) for _ in range(rng.randrange(0, 3))]
            else:
                a, b = h[name]["data_offsets"]
                h[name]["data_offsets"] = [a + rng.randrange(-8, 9), b + rng.randrange(-8, 9)]
            raw = json.dumps(h).encode()
            raw += b" " * (-len(raw) % 8)
            yield len(raw).to_bytes(8, "little") + raw + data[8 + header_len :]


def test_fuzzed_files_raise_our_error_or_load_unchanged(tmp_path, sd1_layers):
    original = random_concept(sd1_layers)
    data = save_concept(original, tmp_path / "good.safetensors").read_bytes()
    reference = load_concept(tmp_path / "good.safetensors")
    rng = random.Random(0)
    raised = loaded_same = 0
    start = time.monotonic()
    for k, mutated in enumerate(_mutations(data, rng)):
        path = tmp_path / f"f{k % 4}.safetensors"
        path.write_bytes(mutated)
        t0 = time.monotonic()
        try:
            concept = load_concept(path)
        except PerfusionError:
            raised += 1
        else:  # only a change that means nothing (JSON whitespace) may load, and then it must be identical
            _assert_same(concept, reference)
            loaded_same += 1
        assert time.monotonic() - t0 < 1.0
    assert raised + loaded_same == 1000 and raised >= 950
    assert time.monotonic() - start < 60


def test_info_command(tmp_path, sd1_layers):
    path = save_concept(random_concept(sd1_layers), tmp_path / "hugsy.safetensors")
    ok = subprocess.run([sys.executable, "-m", "perfusion_core", "info", str(path)], capture_output=True,
                        text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "hugsy" in ok.stdout and "input_blocks.1.1.transformer_blocks.0.attn2" in ok.stdout
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    bad = subprocess.run([sys.executable, "-m", "perfusion_core", "info", str(truncated)], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "truncated" in bad.stderr


def test_sdxl_concept_round_trip_with_two_embeddings(tmp_path):
    layers = _real_layers("sdxl")
    concept = random_concept(layers)
    concept.embeddings = [torch.randn(768), torch.randn(1280)]
    loaded = load_concept(save_concept(concept, tmp_path / "xl.safetensors"))
    assert [e.shape[0] for e in loaded.embeddings] == [768, 1280] and loaded.family == "sdxl"


def test_tiny_unet_family_agrees_with_file(tmp_path):
    from perfusion_core import cross_attention_layers

    layers = cross_attention_layers(tiny_unet("sd2"))
    loaded = load_concept(save_concept(random_concept(layers), tmp_path / "sd2.safetensors"))
    assert loaded.family == "sd2" and loaded.context_dim == 1024


def test_sdxl_layer_names_are_the_sgm_names():
    sgm = {f"{block}.1.transformer_blocks.{k}.attn2"
           for blocks, depth in ((("input_blocks.4", "input_blocks.5", "output_blocks.3", "output_blocks.4",
                                   "output_blocks.5"), 2),
                                 (("input_blocks.7", "input_blocks.8", "middle_block", "output_blocks.0",
                                   "output_blocks.1", "output_blocks.2"), 10))
           for block in blocks for k in range(depth)}
    assert {layer.name for layer in _real_layers("sdxl")} == sgm


def test_files_are_written_with_the_process_umask(tmp_path):
    import os
    import stat

    from perfusion_core.files import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.safetensors", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.safetensors", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o600

"""The training loop on small random diffusers models of the real SD architectures (CPU)."""

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from perfusion_core import PerfusionError, TrainingError, load_concept, patch_unet
from perfusion_core.diffusers_host import DiffusersHost
from perfusion_core.images import preview_grid
from perfusion_core.train import Trainer, TrainingData, TrainSettings, state_path_for

from .builders import WORDS, build_model_folder, random_images, tiny_pipeline

CAPTIONS = [" ".join(WORDS[k : k + 6]) for k in range(0, len(WORDS) - 6)] * 3


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    return build_model_folder(tmp_path_factory.mktemp("sd1"), "sd1")


def _host(folder, tmp_path):
    return DiffusersHost(folder, captions=CAPTIONS, cache_dir=tmp_path / "cache", sample_steps=2)


def _settings(**kw):
    return TrainSettings(**{"word": "hugsy", "superclass": "teddy", "steps": 3, "batch_size": 2, "grad_accum": 1, **kw})


def _weights(*modules):
    return {f"{k}.{n}": p.detach().clone() for k, m in enumerate(modules) for n, p in m.state_dict().items()}


def test_short_run_trains_only_targets_and_embedding(sd1_folder, tmp_path):
    host = _host(sd1_folder, tmp_path)
    before = _weights(host.unet, host.vae)
    out = tmp_path / "hugsy.safetensors"
    trainer = Trainer(host, TrainingData(random_images(3)), _settings(), out)
    initial_embedding = trainer.embeddings[0].detach().clone()
    result = trainer.run()
    after = _weights(host.unet, host.vae)
    assert all(torch.equal(before[k], after[k]) for k in before)
    encoder_table = host.text_encoders[0].get_input_embeddings().weight
    assert not encoder_table.requires_grad and not any(p.requires_grad for p in host.unet.parameters())
    concept = load_concept(out)
    assert not torch.allclose(concept.embeddings[0], initial_embedding)
    w_v_i_super = {layer.name: layer.to_v(concept.i_super[None])[0] for layer in trainer.layers}
    assert any(not torch.allclose(concept.o_v[n], w_v_i_super[n], atol=1e-3) for n in concept.o_v)  # o*_V moved
    assert not torch.allclose(concept.i_star, concept.i_super)  # i* moved by the EMA
    assert torch.allclose(concept.i_star, result.concept.i_star)
    # o*_K stays W_K i_super: the key side holds no trained tensor at all
    assert set(concept.o_v) == {layer.name for layer in trainer.layers}
    assert concept.training["steps"] == "3" and concept.family == "sd1"
    assert state_path_for(out).is_file() and len(result.losses) == 3
    # the written concept applies: it changes the UNet's output, and unpatching restores it bit for bit
    noisy, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    cond = host.encode(["a photo of a hugsy"], concept.embeddings)
    before = host.predict(noisy, t, cond)
    with patch_unet(host.unet, [(concept, 0.7, 0.15)]):
        assert not torch.allclose(host.predict(noisy, t, cond), before)
    assert torch.equal(host.predict(noisy, t, cond), before)


def test_resume_is_bit_identical(sd1_folder, tmp_path):
    data = TrainingData(random_images(3))
    whole = Trainer(_host(sd1_folder, tmp_path), data, _settings(steps=4), tmp_path / "whole.safetensors").run()
    Trainer(_host(sd1_folder, tmp_path), data, _settings(steps=2, save_every=1), tmp_path / "part.safetensors").run()
    resumed = Trainer.resume(_host(sd1_folder, tmp_path), data, tmp_path / "part.safetensors", steps=4).run()
    a, b = whole.concept, resumed.concept
    assert torch.equal(a.i_star, b.i_star) and torch.equal(a.embeddings[0], b.embeddings[0])
    assert all(torch.equal(a.o_v[n], b.o_v[n]) for n in a.o_v) and whole.losses == resumed.losses


def test_same_seed_gives_the_same_file(sd1_folder, tmp_path):
    data = TrainingData(random_images(2))
    paths = [tmp_path / f"run{k}.safetensors" for k in range(2)]
    for path in paths:
        Trainer(_host(sd1_folder, tmp_path), data, _settings(steps=2), path).run()
    a, b = (load_concept(p) for p in paths)
    assert torch.equal(a.i_star, b.i_star) and all(torch.equal(a.o_v[n], b.o_v[n]) for n in a.o_v)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(sd1_folder, tmp_path):
    host = _host(sd1_folder, tmp_path)
    out = tmp_path / "nan.safetensors"
    trainer = Trainer(host, TrainingData(random_images(2)), _settings(steps=4, save_every=2), out)
    real_predict = host.predict
    calls = {"n": 0}

    def predict(*args):
        calls["n"] += 1
        y = real_predict(*args)
        return y * float("nan") if calls["n"] > 2 else y

    host.predict = predict
    with pytest.raises(TrainingError, match=r"nan at step 3.*last good checkpoint"):
        trainer.run()
    assert load_concept(out).training["steps"] == "2"
    assert sum(len(m._forward_pre_hooks) for m in host.unet.modules()) == 0  # hooks removed


def test_a_stop_saves_the_steps_done(sd1_folder, tmp_path):
    host, data = _host(sd1_folder, tmp_path), TrainingData(random_images(2))
    out = tmp_path / "stop.safetensors"
    trainer = Trainer(host, data, _settings(steps=5), out)  # no periodic checkpoints
    with pytest.raises(TrainingError, match="stopped at step 2.*stop.state.safetensors"):
        trainer.run(should_stop=lambda: trainer.step >= 2)
    assert load_concept(out).training["steps"] == "2"

    class Cancelled(Exception):
        pass

    def cancel() -> bool:  # hosts such as ComfyUI stop by raising their own exception
        if trainer.step >= 3:
            raise Cancelled
        return False

    trainer = Trainer.resume(host, data, out)
    with pytest.raises(Cancelled):
        trainer.run(should_stop=cancel)
    assert load_concept(out).training["steps"] == "3"
    assert Trainer.resume(host, data, out).step == 3
    # every host resumes with the run's own recipe: only the run's length, intervals and memory setting change
    resumed = Trainer.resume(host, data, out, steps=9, save_every=3, preview_every=0, gradient_checkpointing=True)
    assert (resumed.settings.steps, resumed.settings.save_every) == (9, 3)
    with pytest.raises(TrainingError, match="keeps its recipe: beta, lr_target cannot change"):
        Trainer.resume(host, data, out, beta=0.5, lr_target=0.1)


def test_bad_words_and_data(sd1_folder, tmp_path):
    host = _host(sd1_folder, tmp_path)
    with pytest.raises(TrainingError, match="one token.*'bear'"):
        host.prepare_words("hugsy", "polar bear")
    with pytest.raises(TrainingError, match="already a word"):
        host.prepare_words("dog", "teddy")
    with pytest.raises(TrainingError, match="at least one RGB image"):
        TrainingData(torch.zeros(0, 3, 16, 16))
    with pytest.raises(TrainingError, match="one mask per image"):
        TrainingData(random_images(2), masks=torch.ones(2, 8, 8))
    with pytest.raises(PerfusionError, match="steps"):
        _settings(steps=0)


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("batch_size", 0, "training: batch_size must be an integer from 1 to 64, got 0"),
    ("beta", float("nan"), "training: beta must be a number from 0.0 to 1.0, got nan"),
    ("tau", float("inf"), "training: tau must be a number from 0.01 to 1.0, got inf"),
    ("lr_target", -0.1, "training: lr_target must be a number"),
    ("steps", 2.5, "training: steps must be an integer from 1 to 100000, got 2.5"),
    ("mask_floor", "0.1", "training: mask_floor must be a number from 0.0 to 1.0, got '0.1'"),
    ("word", "hug sy", "the concept word 'hug sy' must be one plain word"),
    ("superclass", "<teddy>", "the superclass '<teddy>' must be one plain word"),
])
def test_recipe_values_are_refused_by_name(knob, value, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        _settings(**{knob: value})


@pytest.mark.parametrize(("flip", "floor"), [(0.0, 0.0), (1.0, 0.0), (0.0, 0.25)])
def test_masks_weight_the_loss_where_they_say(sd1_folder, tmp_path, flip, floor):
    """The loss's gradient on the prediction is zero outside a zero-floor mask (flipped with the image), the floor's
    share of the inside's elsewhere, and the run trains on one masked image."""
    masks = torch.zeros(1, 16, 16)
    masks[:, 2:14, 0:8] = 0.5  # the left half, 2 rows short of top and bottom: 8x8 latents see rows 1-6, columns 0-3
    host = _host(sd1_folder, tmp_path)
    grads = []
    predict = host.predict

    def spied(noisy, t, cond):
        prediction = predict(noisy, t, cond)
        prediction.register_hook(lambda g: grads.append(g.detach().abs().sum((0, 1))))
        return prediction

    host.predict = spied
    result = Trainer(host, TrainingData(random_images(1), masks), _settings(steps=2, mask_floor=floor, flip=flip),
                     tmp_path / "one.safetensors").run()
    assert all(torch.isfinite(torch.tensor(result.losses))) and len(grads) == 2
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[1:7, 0:4] = True
    inside = inside.flip(-1) if flip else inside
    for g in grads:
        assert (g[inside] > 0).all()
        if floor == 0:
            assert (g[~inside] == 0).all()
        else:  # outside, the weight is the floor against 1 inside (masks are scaled to a maximum of 1)
            assert (g[~inside] > 0).all()
            assert 0.1 < (g[~inside].mean() / g[inside].mean()).item() < 0.5


@pytest.mark.parametrize(("family", "prediction"), [("sd2", "v_prediction"), ("sdxl", "epsilon")])
def test_other_families_train(tmp_path, family, prediction):
    folder = build_model_folder(tmp_path / family, family, prediction)
    host = _host(folder, tmp_path)
    result = Trainer(host, TrainingData(random_images(2)), _settings(steps=1), tmp_path / "c.safetensors").run()
    concept = load_concept(result.concept_path)
    assert concept.family == family and len(concept.embeddings) == (2 if family == "sdxl" else 1)
    assert host.objective.prediction == prediction


def test_previews_and_progress(sd1_folder, tmp_path):
    seen, previews = [], []
    settings = _settings(steps=2, preview_every=1, preview_seeds=(0, 1))
    result = Trainer(_host(sd1_folder, tmp_path), TrainingData(random_images(2)), settings,
                     tmp_path / "p.safetensors").run(
        progress=seen.append, on_preview=lambda step, images: previews.append((step, images)))
    assert [s.step for s in seen] == [1, 2] and seen[-1].eta == 0
    assert [(step, images.shape) for step, images in previews] == [(1, (2, 3, 16, 16)), (2, (2, 3, 16, 16))]
    # the latest preview is the file's thumbnail, pixel for pixel
    thumbnail = load_concept(result.concept_path).thumbnail
    assert thumbnail.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(thumbnail.split(",", 1)[1]))) as image:
        shown = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(shown, preview_grid(previews[-1][1]), atol=1 / 255)


def test_loss_falls_when_overfitting_a_fixed_batch(sd1_folder, tmp_path):
    torch.manual_seed(0)
    settings = _settings(steps=200, flip=0.0, lr_target=0.2, lr_embedding=0.01)
    host = _host(sd1_folder, tmp_path)
    trainer = Trainer(host, TrainingData(random_images(1)), settings, tmp_path / "fit.safetensors")
    fixed = trainer._draw  # the same images, prompts, noise and timesteps every step

    batch = None

    def draw():
        nonlocal batch
        batch = batch or fixed()
        return batch

    trainer._draw = draw
    losses = trainer.run().losses
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10  # measured: 1.08 -> 0.75


def test_gradient_checkpointing_gives_the_same_step(sd1_folder, tmp_path):
    data = TrainingData(random_images(2))
    plain = Trainer(_host(sd1_folder, tmp_path), data, _settings(steps=2), tmp_path / "a.safetensors").run()
    host = _host(sd1_folder, tmp_path)
    checkpointed = Trainer(host, data, _settings(steps=2, gradient_checkpointing=True),
                           tmp_path / "b.safetensors").run()
    assert not host.unet.is_gradient_checkpointing
    a, b = plain.concept, checkpointed.concept
    assert all(torch.allclose(a.o_v[n], b.o_v[n], atol=1e-5) for n in a.o_v)


def test_command_line_resume_equals_one_run(sd1_folder, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from perfusion_core.images import save_image

    images = tmp_path / "images"
    images.mkdir()
    for k, image in enumerate(random_images(2)):
        save_image(image, images / f"{k}.png")
    env = {"PERFUSION_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS))

    def train(out, *extra):
        cmd = [sys.executable, "-m", "perfusion_core", "train", "--model", str(sd1_folder), "--images", str(images),
               "--superclass", "teddy", "--token", "hugsy", "--out", str(out), "--batch-size", "2",
               "--grad-accum", "1", "--captions", str(captions), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    train(tmp_path / "whole.safetensors", "--steps", "4")
    train(tmp_path / "part.safetensors", "--steps", "2")
    done = train(tmp_path / "part.safetensors", "--steps", "4", "--resume", str(tmp_path / "part.state.safetensors"))
    assert "4/4" in done.stderr and (tmp_path / "part.loss.png").is_file()
    a, b = load_concept(tmp_path / "whole.safetensors"), load_concept(tmp_path / "part.safetensors")
    assert torch.equal(a.i_star, b.i_star) and all(torch.equal(a.o_v[n], b.o_v[n]) for n in a.o_v)


def test_captions_replace_the_templates(sd1_folder, tmp_path):
    host = _host(sd1_folder, tmp_path)
    seen: list[str] = []
    encode = host.encode
    # the prompts that carry the trained embedding are the training prompts
    host.encode = lambda prompts, embeddings: (embeddings is not None and seen.extend(prompts)) or encode(
        prompts, embeddings)
    captions = ("a {} on a beach", "a {} in snow")
    Trainer(host, TrainingData(random_images(2), captions=captions), _settings(steps=2),
            tmp_path / "c.safetensors").run()
    assert seen and set(seen) <= {c.format("hugsy") for c in captions}
    with pytest.raises(TrainingError, match="one each"):
        TrainingData(random_images(2), captions=captions[:1])
    with pytest.raises(TrainingError, match="where the concept word goes"):
        TrainingData(random_images(1), captions=("no word here",))


def test_trained_keys_learn_key_targets_and_resume(sd1_folder, tmp_path):
    data = TrainingData(random_images(2))
    settings = _settings(steps=2, lock_keys=False)
    whole = Trainer(_host(sd1_folder, tmp_path), data, settings, tmp_path / "whole.safetensors").run().concept
    assert not whole.key_locked and set(whole.o_k) == set(whole.o_v)
    layer = Trainer(_host(sd1_folder, tmp_path), data, settings, tmp_path / "x.safetensors").layers[0]
    assert not torch.allclose(whole.o_k[layer.name], layer.to_k(whole.i_super[None])[0], atol=1e-4)  # moved
    Trainer(_host(sd1_folder, tmp_path), data, _settings(steps=1, lock_keys=False),
            tmp_path / "part.safetensors").run()
    resumed = Trainer.resume(_host(sd1_folder, tmp_path), data, tmp_path / "part.safetensors", steps=2).run().concept
    assert all(torch.equal(whole.o_k[n], resumed.o_k[n]) for n in whole.o_k)


def test_context_locked_training_reads_the_superclass_captions_and_is_kept_in_the_file(sd1_folder, tmp_path):
    host = _host(sd1_folder, tmp_path)
    encoded = []
    original = host.encode
    host.encode = lambda prompts, embeddings: encoded.append(list(prompts)) or original(prompts, embeddings)
    captions = ("a photo of {}", "a {} on a table")
    data = TrainingData(random_images(2), captions=captions)
    result = Trainer(host, data, _settings(steps=2, lock="context"), tmp_path / "c.safetensors").run()
    assert any(set(p) <= {c.format("teddy") for c in captions} for p in encoded[1:])  # the superclass captions
    concept = load_concept(result.concept_path)
    assert concept.trained_lock == "context"
    layer = Trainer(host, data, _settings(), tmp_path / "x.safetensors").layers[0]
    with torch.no_grad():
        assert not torch.allclose(concept.o_v[layer.name], layer.to_v(concept.i_super[None])[0], atol=1e-4)  # moved
    with pytest.raises(TrainingError, match="cannot train them"):
        _settings(lock="context", lock_keys=False)
    with pytest.raises(TrainingError, match="lock must be one of"):
        _settings(lock="everywhere")


def test_sdxl_trains_on_the_pooled_vector_sampling_passes(tmp_path):
    """The pooled vector of the prompt itself, with the word's current embedding, as the pipeline encodes it for
    sampling (and as A1111 and ComfyUI train); it used to be the superclass prompt's in this host alone."""
    folder = tmp_path / "sdxl"
    tiny_pipeline("sdxl").save_pretrained(folder)
    host = _host(folder, tmp_path)
    embeddings = [e + 0.05 * torch.randn_like(e) for e in host.prepare_words("hugsy", "teddy")]
    pooled = host.encode(["a photo of hugsy"], embeddings).extra["added_cond_kwargs"]["text_embeds"]
    pipe = tiny_pipeline("sdxl")
    encoders = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    for (tokenizer, encoder), embedding in zip(encoders, embeddings, strict=True):
        pipe.load_textual_inversion(embedding, token="hugsy", tokenizer=tokenizer, text_encoder=encoder)
    sampled = pipe.encode_prompt("a photo of hugsy", device="cpu", do_classifier_free_guidance=False)[2]
    assert torch.allclose(pooled, sampled, atol=1e-5) and not pooled.requires_grad
    superclass = host.encode(["a photo of teddy"], None).extra["added_cond_kwargs"]["text_embeds"]
    assert not torch.allclose(pooled, superclass, atol=1e-4)


def test_command_line_refuses_to_resume_into_another_file(tmp_path, capsys):
    from perfusion_core.cli import main

    argv = ["train", "--model", str(tmp_path / "none"), "--images", str(tmp_path), "--superclass", "teddy",
            "--token", "hugsy", "--resume", str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "b.safetensors")]
    assert main(argv) == 2
    assert "give --out" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("flags", "message"), [
    (["--beta", "nan"], "training: beta must be a number from 0.0 to 1.0, got nan"),
    (["--batch-size", "0"], "training: batch_size must be an integer from 1 to 64, got 0"),
    (["--lr-target", "inf"], "training: lr_target must be a number from 1e-06 to 1.0, got inf"),
])
def test_command_line_refuses_recipe_values_by_name_before_loading(tmp_path, capsys, flags, message):
    from perfusion_core.cli import main

    argv = ["train", "--model", str(tmp_path / "none"), "--images", str(tmp_path), "--superclass", "teddy",
            "--token", "hugsy", "--out", str(tmp_path / "a.safetensors"), *flags]
    assert main(argv) == 2
    assert f"error: {message}" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_every_recipe_knob_is_a_command_line_flag_with_the_table_default():
    from perfusion_core.cli import build_parser
    from perfusion_core.knobs import RECIPE

    args = build_parser().parse_args(["train", "--model", "m", "--images", "i", "--superclass", "teddy", "--token",
                                      "hugsy", "--out", "o"])
    assert {name: getattr(args, name) for name in RECIPE} == {name: knob.default for name, knob in RECIPE.items()}

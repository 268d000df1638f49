"""Toy world: generator, tokenizer, model folder, sampling, exact resume, probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPTextModel

from toyworld import model as toymodel
from toyworld import pretrain, probe, world
from toyworld.sample import generate

TINY = toymodel.ModelConfig(channels=(8, 16, 16), head_dim=8, text_width=32, text_layers=1, text_heads=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def parse(caption: str) -> dict[str, str]:
    """Read attributes back from a caption (inverse of world.caption)."""
    body, background = caption.split(" on a ")[:-1], caption.rsplit(" on a ", 1)[1]
    out = {"background": background.removesuffix(" background")}
    phrases = " on a ".join(body).split(" and ")
    places = {v: k for k, v in world.PLACES.items()}
    for i, phrase in enumerate(phrases):
        words = phrase.split()
        if " ".join(words[:3]) in places:  # place first: move it after the noun
            words = words[3:] + words[:3]
        suffix = "" if i == 0 else str(i + 1)
        out["colour" + suffix], out["shape" + suffix], out["pattern" + suffix] = words[1], words[2], "plain"
        if words[3] == "with":
            out["colour" + suffix] = "+".join(sorted((words[1], words[4])))
            out["pattern" + suffix] = words[5]
            words = words[3:]
        out["position" + suffix] = places[" ".join(words[3:])]
    return out


def test_generator_is_deterministic_and_random_access():
    a, ca, _ = world.batch(7, 3, 16, stage=2)
    b, cb, _ = world.batch(7, 3, 16, stage=2)
    c, _, _ = world.batch(7, 4, 16, stage=2)
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)
    assert a.shape == (16, 3, 16, 16) and a.min() >= -1 and a.max() <= 1


def test_caption_says_every_attribute():
    _, captions, scenes = world.batch(0, 0, 200, stage=2)
    assert any(len(s.objects) == 2 for s in scenes) and any(len(s.objects) == 1 for s in scenes)
    for c, s in zip(captions, scenes, strict=True):
        assert parse(c) == s.attributes()
        assert all(o.pattern == "plain" and o.inner_ring is None for o in s.objects)


def test_stage_3_names_textures_and_never_draws_a_concepts_look():
    _, captions, scenes = world.batch(0, 0, 2000, stage=3)
    objects = [o for s in scenes for o in s.objects]
    textured = [o for o in objects if o.pattern != "plain"]
    assert 0.4 < len(textured) / len(objects) < 0.6
    assert {o.pattern for o in textured} == set(world.PATTERNS[1:]) and all(o.colour2 != o.colour for o in textured)
    for c, s in zip(captions, scenes, strict=True):
        assert parse(c) == s.attributes()
    looks = {o.look for o in objects}
    assert looks.isdisjoint(world.HELD_OUT_LOOKS)
    assert ("heart", "red+yellow", "checks") in world.HELD_OUT_LOOKS and ("heart", "red+yellow", "stripes") in looks
    _, _, every = world.batch(0, 0, 4000, stage=3, held_out=False)
    assert {o.look for s in every for o in s.objects} & world.HELD_OUT_LOOKS


def test_stage_4_names_places_first_in_half_of_the_captions_and_keeps_earlier_streams():
    images, captions, scenes = world.batch(0, 0, 400, stage=4)
    images3, captions3, scenes3 = world.batch(0, 0, 400, stage=3)
    assert np.array_equal(images, images3) and scenes == scenes3
    place_first = [c.split(" a ")[0] in world.PLACES.values() for c in captions]
    assert 0.4 < np.mean(place_first) < 0.6
    for c, c3, first in zip(captions, captions3, place_first, strict=True):
        assert parse(c) == parse(c3)
        assert (c == c3) != first
    assert world.caption(scenes[0], place_first=True).startswith(world.PLACES[scenes[0].objects[0].position] + " a ")


def test_placeless_captions_leave_out_every_place_and_keep_the_rest():
    options = {"stage": 4, "colourless": 0.25, "place_first": 1.0}
    images, captions, scenes = world.batch(0, 0, 400, **options)
    assert world.batch(0, 0, 400, **options, placeless=0.0)[1] == captions  # the option off: the earlier stream
    placeless_images, placeless, placeless_scenes = world.batch(0, 0, 400, **options, placeless=0.3)
    assert np.array_equal(images, placeless_images) and scenes == placeless_scenes
    unsaid = [not any(place in c for place in world.PLACES.values()) for c in placeless]
    assert 0.2 < np.mean(unsaid) < 0.4
    for full, short, none in zip(captions, placeless, unsaid, strict=True):
        for place in world.PLACES.values():
            full = full.replace(f"{place} ", "") if none else full
        assert short == full


def test_pseudo_words_name_fixed_looks_first_or_second_and_keep_the_other_draws():
    lexicon = world.pseudo_lexicon()
    assert len(lexicon) == world.PSEUDO_WORDS == len({(o.shape, o.colour, o.pattern, o.colour2)
                                                      for o in lexicon.values()})
    assert not {o.look for o in lexicon.values()} & world.HELD_OUT_LOOKS
    assert set(lexicon) <= set(world.vocabulary())
    _, captions, scenes = world.batch(0, 0, 600, stage=3, colourless=0.25, pseudo=0.35)
    _, _, plain = world.batch(0, 0, 600, stage=3, colourless=0.25)
    named = {"first": 0, "second": 0, "both": 0}
    for caption, scene, before in zip(captions, scenes, plain, strict=True):
        assert scene.background == before.background
        assert [o.position for o in scene.objects] == [o.position for o in before.objects]
        words = [w for w in caption.split() if w in lexicon]
        shown = [o for o in scene.objects if o.look in {lexicon[w].look for w in words}]
        assert len(shown) >= len(words)
        phrases = caption.split(" and ")
        for k, phrase in enumerate(phrases[: len(scene.objects)]):
            word = next((w for w in phrase.split() if w in lexicon), None)
            if word is not None:
                assert scene.objects[k].look == lexicon[word].look
                named["second" if k else "first"] += 1
        named["both"] += len(words) == 2
    assert min(named.values()) > 10


def test_textures_show_both_colours_and_stripes_and_checks_stay_on_the_pixel_grid():
    for pattern in world.PATTERNS[1:]:
        img = world.render(world.Scene((world.Obj("square", "red", "centre", pattern=pattern, colour2="blue"),),
                                       "black"))
        inner = img[6:10, 6:10].reshape(-1, 3)
        red = np.isclose(inner, world.COLOURS["red"], atol=1e-6).all(1)
        bluish = inner[:, 2] > 0.6  # round dots blend at their edge
        assert red.any() and bluish.any(), pattern
        if pattern != "dots":
            assert (red | np.isclose(inner, world.COLOURS["blue"], atol=1e-6).all(1)).all(), pattern


def test_colourless_captions_leave_out_only_colours_and_keep_the_images():
    images, captions, scenes = world.batch(0, 0, 200, stage=2)
    bare_images, bare, bare_scenes = world.batch(0, 0, 200, stage=2, colourless=0.3)
    assert np.array_equal(images, bare_images) and scenes == bare_scenes
    left_out = 0
    for full, short, scene in zip(captions, bare, bare_scenes, strict=True):
        for o in scene.objects:
            if f"a {o.shape} {world.PLACES[o.position]}" in short:
                left_out += 1
                short = short.replace(f"a {o.shape} ", f"a {o.colour} {o.shape} ", 1)
        assert short == full
    assert 0.2 < left_out / sum(len(s.objects) for s in scenes) < 0.4


def test_objects_are_drawn_where_the_caption_says():
    for pos, (px, py) in world.POSITIONS.items():
        img = world.render(world.Scene((world.Obj("square", "red", pos),), "black"), 16)
        ys, xs = np.nonzero(img[..., 0] > 0.5)
        assert abs(xs.mean() / 16 - px) < 0.1 and abs(ys.mean() / 16 - py) < 0.1


def test_concepts_differ_from_their_superclass():
    for name, concept in world.CONCEPTS.items():
        assert concept.superclass in world.SHAPES
        look = world.render_concept(name, "left", "gray")
        plain = world.render(world.Scene((world.Obj(concept.superclass, concept.colour, "left"),), "gray"))
        assert np.abs(look - plain).max() > 0.3
        pair = world.render_concept(name, "left", "gray", second=world.Obj("circle", "green", "right"))
        assert np.abs(pair - look).max() > 0.3
        shown = world.concept_scene(concept, "left", "gray").objects[0]
        assert shown.appearance != world.Obj(concept.superclass, concept.colour, "right").appearance


def test_tokenizer_covers_captions_and_adds_tokens(tmp_path):
    tok = toymodel.build_tokenizer()
    _, captions, _ = world.batch(1, 0, 300, stage=2)
    longest = max(captions, key=len)
    for c in [*captions, longest]:
        ids = tok(c, padding="max_length").input_ids
        assert tok.unk_token_id not in ids and len(ids) == toymodel.MAX_LENGTH
        assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert set(world.vocabulary()) <= set(tok.get_vocab())
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(longest).input_ids == tok(longest).input_ids
    loaded.add_tokens(["hugsy"])
    ids = loaded("a Hugsy on the left").input_ids
    assert loaded.unk_token_id not in ids and len(ids) == 7
    _, textured, _ = world.batch(1, 0, 300, stage=3)
    assert max(len(tok(c).input_ids) for c in textured) <= toymodel.MAX_LENGTH


def test_a_model_starts_from_an_earlier_one_with_more_words_and_positions(tmp_path, monkeypatch):
    """Known words keep their rows and the UNet its weights: the first positions encode as before."""
    earlier = toymodel.build(TINY, seed=1)
    toymodel.save(earlier, tmp_path, fp16=False)
    monkeypatch.setattr(toymodel, "vocabulary", lambda: sorted([*world.vocabulary(), "aardvark", "zebra"]))
    monkeypatch.setattr(toymodel, "MAX_LENGTH", toymodel.MAX_LENGTH + 4)
    later = toymodel.build(TINY, seed=2)
    toymodel.init_from(later, tmp_path)
    prompt = ["a red heart with blue dots on the left on a gray background"]
    assert torch.allclose(later.encode(prompt)[:, : earlier.tokenizer.model_max_length], earlier.encode(prompt),
                          atol=1e-5)  # attention over a longer padded context rounds differently
    assert not torch.equal(later.encode(["a zebra"])[:, 2], earlier.encode(["a heart"])[:, 2])
    assert all(torch.equal(a, b) for a, b in zip(later.unet.state_dict().values(), earlier.unet.state_dict().values(),
                                                 strict=True))


def test_model_folder_loads_with_diffusers_and_transformers(tmp_path):
    m = toymodel.build(TINY)
    toymodel.save(m, tmp_path)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    te = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    sched = DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    stored = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in stored.values())
    assert unet.config.in_channels == unet.config.out_channels == 3
    assert sched.config.prediction_type == "v_prediction"
    assert te.config.max_position_embeddings == tok.model_max_length
    assert (te.config.bos_token_id, te.config.eos_token_id, te.config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    tok.add_tokens(["hugsy"])
    te.resize_token_embeddings(len(tok))
    ctx = te(tok(["a hugsy at the top on a gray background"], padding="max_length", return_tensors="pt")
             .input_ids).last_hidden_state
    out = unet.float()(torch.randn(1, 3, 16, 16), 500, encoder_hidden_states=ctx.float()).sample
    assert out.shape == (1, 3, 16, 16)
    assert toymodel.load(tmp_path).res == 16


def test_text_attention_scale_shrinks_only_the_attention_output():
    plain = dict(toymodel.build(toymodel.ModelConfig(**{**TINY.__dict__, "text_attention_scale": 1.0})).text_encoder
                 .named_parameters())
    scaled = dict(toymodel.build(TINY).text_encoder.named_parameters())
    for name, value in plain.items():
        expected = value * TINY.text_attention_scale if name.endswith("self_attn.out_proj.weight") else value
        assert torch.allclose(scaled[name], expected), name
    assert pretrain.model_config({"channels": "8,16", "res": 16, "zero_snr": True}).text_attention_scale == 1.0


def test_sampling_is_seeded():
    m = toymodel.build(TINY)
    prompts = ["a red star on the left on a white background"] * 2
    a = generate(m, prompts, [0, 1], steps=3)
    b = generate(m, prompts, [0, 1], steps=3)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_evaluation_reads_bare_shape_prompts_too():
    acc = pretrain.evaluate(toymodel.build(TINY), probe.load(), 4, stage=1, bare=True)
    assert {"shape", "all", "bare_shape", "bare_position", "bare_background", "bare_all"} <= acc.keys()
    assert all(0 <= v <= 1 for v in acc.values()) and acc["bare_all"] <= min(acc["bare_shape"], acc["bare_position"])


def test_resume_is_exact(tmp_path):
    """A run split in two equals one run in one go, whose batches are rendered ahead by a worker process."""
    common = ["--channels", "8,16", "--batch", "4", "--eval-every", "0", "--warmup", "2", "--log-every", "1",
              "--no-freeze-text"]
    pretrain.main(["--out", str(tmp_path / "split"), "--max-steps", "3", *common])
    pretrain.main(["--out", str(tmp_path / "split"), "--max-steps", "6", "--resume", *common])
    pretrain.main(["--out", str(tmp_path / "whole"), "--max-steps", "6", "--workers", "1", *common])
    split = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    assert split["step"] == whole["step"] == 6
    for key in ("unet", "text_encoder"):
        for name, value in whole[key].items():
            assert torch.equal(split[key][name], value), name
    assert all(torch.equal(a, b) for a, b in zip(split["ema"], whole["ema"], strict=True))
    assert (tmp_path / "split" / "train_log.jsonl").read_text().count("\n") == 6


def test_export_records_the_caption_grammar_of_the_run(tmp_path):
    """A run whose captions all name places first exports a model that says so; its prompts follow."""
    common = ["--channels", "8,16", "--batch", "2", "--eval-every", "0", "--max-steps", "1", "--stage", "4"]
    pretrain.main(["--out", str(tmp_path / "first"), "--place-first", "1", *common])
    pretrain.main(["--out", str(tmp_path / "mixed"), *common])
    for run, expected in (("first", True), ("mixed", False)):
        pretrain.main(["--out", str(tmp_path / run), "--export", str(tmp_path / run / "best"), "--which", "last"])
        assert toymodel.load(tmp_path / run / "best").place_first is expected
        # the best weights, saved during the run, take the grammar of the run's configuration
        m = toymodel.load(tmp_path / run / "best")
        m.place_first = not expected
        toymodel.save(m, tmp_path / run / "best")
        pretrain.main(["--out", str(tmp_path / run), "--export", str(tmp_path / f"{run}-model")])
        assert toymodel.places_first(tmp_path / f"{run}-model") is expected
    from toyworld import demo

    assert demo.prompts("checker_heart", place_first=True)[0] == "on the left a {} on a gray background"
    assert demo.pair_prompts(("hugsy", "stippy"), place_first=True)[0] == (
        "on the left a hugsy and on the right a stippy on a white background")


def test_probe_reads_generator_images():
    p = probe.load()
    images, _, scenes = world.batch(99, 0, 600, stage=3, held_out=False)
    acc = probe.score(p, torch.from_numpy(images), scenes)
    for key in ("shape", "colour", "pattern", "position", "background"):
        assert acc[key] >= 0.98, acc
    assert acc["pair"] >= 0.95, acc
    assert p.features(torch.from_numpy(images[:2])).shape == (2, 128)


def test_demo_writes_a_concept_and_a_grid(tmp_path, monkeypatch):
    from PIL import Image

    from perfusion_core import load_concept
    from toyworld import demo

    data = demo.training_data("checker_heart")
    assert data.captions[0] == "a {} on the left on a white background" and data.images.shape == (5, 3, 16, 16)
    monkeypatch.setattr("sys.argv", ["demo", "--out", str(tmp_path), "--steps", "2"])
    demo.main()
    concept = load_concept(tmp_path / "hugsy.safetensors")
    assert concept.superclass == "heart" and concept.training["steps"] == "2"
    assert load_concept(tmp_path / "stippy.safetensors").superclass == "star"
    rows, columns = 1 + len(demo.PROMPT_SCENES) + 1, len(demo.BETAS)  # training images, prompts, both concepts
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > 8 * 16 * columns and grid.height > 8 * 16 * rows


def test_companion_views_name_the_concept_second_beside_the_drawn_object():
    from toyworld import demo

    square = world.Obj("square", "green", "left")
    data = demo.training_data("checker_heart", views=(("left", "white"),), companions=(("right", "black", square),))
    assert data.captions == ("a {} on the left on a white background",
                             "a green square on the left and a {} on the right on a black background")
    alone = world.render_concept("checker_heart", "right", "black", seed=1)
    beside = data.images[1].permute(1, 2, 0).numpy()
    left, right = beside[:, :8], beside[:, 8:]
    assert np.allclose(right, alone[:, 8:]) and not np.allclose(left, alone[:, :8])

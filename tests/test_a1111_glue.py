"""The web-UI glue that runs without AUTOMATIC1111: prompt tags, infotext, the concept folder, pasting."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from perfusion_a1111.library import ConceptLibrary
from perfusion_a1111.paste import rename_by_hash
from perfusion_a1111.tags import (
    ConceptRequest,
    format_hashes,
    format_infotext,
    parse_hashes,
    parse_infotext,
    parse_items,
    parse_request,
    rename_tags,
)
from perfusion_core import ConceptFileError, PerfusionError, save_concept
from perfusion_core.files import read_safetensors, save_tensors
from perfusion_core.global_lock import set_superclass_keys
from perfusion_core.knobs import GATE

from .conftest import random_concept


def test_tag_arguments_as_a1111_splits_them():
    assert parse_request(["hugsy", "0.6"], {}) == ConceptRequest("hugsy", beta=0.6)
    assert parse_request(["hugsy", "0.6", "0.2"], {}) == ConceptRequest("hugsy", 0.6, 0.2)
    assert parse_request([" hugsy ", " 0.5 "], {" tau": "0.3 ", "strength": "0.8", "lock": "global"}) == \
        ConceptRequest("hugsy", 0.5, 0.3, 0.8, "global")
    assert parse_request(["hugsy"], {}) == ConceptRequest("hugsy", 0.7, 0.15, 1.0, None)  # the concept's own lock
    assert parse_request(["hugsy"], {"lock": "context"}).tag == "<perfusion:hugsy:0.70:0.15:lock=context>"
    assert parse_items(["hugsy", "0.65", "tau=0.2"]) == ConceptRequest("hugsy", 0.65, 0.2)


def test_every_gate_knob_is_a_tag_setting_with_the_table_default():
    request = parse_request(["hugsy"], {})
    for name, knob in GATE.items():
        assert getattr(request, name) == knob.default
        assert parse_request(["hugsy"], {name: str(knob.high)}) == ConceptRequest("hugsy", **{name: knob.high})
        with pytest.raises(PerfusionError, match=f"{name} must be a number from {knob.low} to {knob.high}"):
            parse_request(["hugsy"], {name: str(knob.high * 2 + 1)})


@pytest.mark.parametrize(("positional", "named", "message"), [
    ([], {}, "needs a concept name"),
    (["hugsy", "high"], {}, "beta must be a number"),
    (["hugsy", "0.7", "0.1", "0.2"], {}, "too many values"),
    (["hugsy"], {"gate": "1"}, "unknown setting gate"),
    (["hugsy"], {"tau": "0"}, r"tau must be a number from 0.01 to 1.0, got 0.0"),
    (["hugsy", "inf"], {}, r"<perfusion:hugsy:...>: beta must be a number from 0.0 to 1.0, got inf"),
    (["hugsy", "nan"], {}, r"beta must be a number from 0.0 to 1.0, got nan"),
    (["hugsy", "0.7", "-inf"], {}, r"tau must be a number .*, got -inf"),
    (["hugsy"], {"strength": "nan"}, r"strength must be a number from 0.0 to 2.0, got nan"),
    (["hugsy"], {"region": "left", "region_weight": "-1"}, r"region_weight must be a number from 0.0 to 5.0, got -1"),
    (["hugsy"], {"lock": "tight"}, "lock must be one of"),
    (["hugsy"], {"region": ""}, "region '' is empty"),
    (["hugsy"], {"region": "left", "region_weight": "strong"}, "region_weight must be a number"),
])
def test_bad_tags_are_refused_with_the_reason(positional, named, message):
    with pytest.raises(PerfusionError, match=message):
        parse_request(positional, named)


def test_infotext_round_trips_every_setting():
    requests = [ConceptRequest("hugsy", 0.7, 0.15), ConceptRequest("sub/teddy", 0.55, 0.2, 0.8, "global"),
                ConceptRequest("rex", region="left"), ConceptRequest("cat", region="my-mask", region_weight=1.5)]
    text = format_infotext(requests)
    assert text == ("hugsy:0.70:0.15, sub/teddy:0.55:0.20:strength=0.80:lock=global, "
                    f"rex:0.70:0.15:region=left:region_weight={GATE['region_weight'].default:.2f}, "
                    "cat:0.70:0.15:region=my-mask:region_weight=1.50")
    assert parse_infotext(text) == requests
    assert ConceptRequest("hugsy", 0.7).tag == "<perfusion:hugsy:0.70:0.15>"
    hashes = {"hugsy": "0123456789ab", "teddy": "ba9876543210"}
    assert parse_hashes(format_hashes(hashes)) == hashes


def test_rename_tags_touches_only_perfusion_tags():
    prompt = "<perfusion:old:0.7> old and <lora:old:1> <perfusion:other:0.6:tau=0.2>"
    renamed = "<perfusion:new:0.7> old and <lora:old:1> <perfusion:other:0.6:tau=0.2>"
    assert rename_tags(prompt, {"old": "new"}) == renamed


@pytest.fixture
def folder(tmp_path, sd1_layers):
    save_concept(random_concept(sd1_layers, "hugsy", seed=0), tmp_path / "hugsy.safetensors")
    (tmp_path / "pets").mkdir()
    save_concept(random_concept(sd1_layers, "rex", seed=1), tmp_path / "pets" / "rex.safetensors")
    save_tensors(tmp_path / "lora.safetensors", {"lora_down.weight": torch.zeros(2, 4)}, {"ss_network_dim": "2"})
    save_tensors(tmp_path / "hugsy.state.safetensors", {"step": torch.zeros(1)}, {})
    return tmp_path


def test_library_lists_concepts_only_and_finds_them_by_path_or_file_name(folder):
    library = ConceptLibrary(folder)
    library.refresh()
    assert sorted(library.files) == ["hugsy", "pets/rex"]
    assert library.find("rex") is library.files["pets/rex"]
    assert library.find("pets/rex").word == "rex"
    with pytest.raises(PerfusionError, match=r"'nope' not found .*known: hugsy, pets/rex"):
        library.find("nope")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "checksum"])
def test_library_lists_a_damaged_concept_with_its_error_and_loading_it_raises_that_error(folder, damage):
    good = (folder / "hugsy.safetensors").read_bytes()
    data = {"truncated": good[: len(good) // 2], "garbage": b"\x13" * 2048,
            "checksum": good[:-1] + bytes([good[-1] ^ 1])}[damage]  # the last tensor byte flipped
    (folder / "broken.safetensors").write_bytes(data)
    (folder / "broken.state.safetensors").write_bytes(data)  # a damaged training state is no concept
    library = ConceptLibrary(folder)
    library.refresh()
    assert sorted(library.files) == ["broken", "hugsy", "pets/rex"]
    broken = library.find("broken")
    with pytest.raises(ConceptFileError) as raised:
        library.load(broken)
    assert broken.error == str(raised.value) and "broken.safetensors" in broken.error
    assert broken.summary == f"damaged: {broken.error}" and broken.card_metadata()["damaged"] == broken.error
    assert not library.find("hugsy").error and "damaged" not in library.find("hugsy").card_metadata()


def test_regions_by_name_or_as_masks_saved_from_the_tab(folder):
    from PIL import Image

    library = ConceptLibrary(folder)
    assert library.region("left") == "left"
    image = Image.new("L", (8, 4), 0)
    image.paste(255, (0, 0, 4, 4))
    path = library.save_region("my-mask", image.convert("RGB"))
    assert path == folder / "regions" / "my-mask.png"
    mask = library.region("my-mask")
    assert mask.shape == (4, 8) and mask[:, :4].eq(1).all() and mask[:, 4:].eq(0).all()
    with pytest.raises(PerfusionError, match="region 'nothing' is neither one of left, right.*save one in the"):
        library.region("nothing")
    for bad in ("../up", "left", ""):
        with pytest.raises(PerfusionError, match="region name"):
            library.save_region(bad, image)
    library.refresh()
    assert sorted(library.files) == ["hugsy", "pets/rex"]  # masks are not concepts


def test_library_finds_a_file_added_after_the_last_scan(folder, sd1_layers):
    library = ConceptLibrary(folder)
    library.refresh()
    save_concept(random_concept(sd1_layers, "late", seed=2), folder / "late.safetensors")
    assert library.find("late").word == "late"


def test_library_reloads_a_concept_only_when_its_file_changes(folder, sd1_layers):
    library = ConceptLibrary(folder)
    file = library.find("hugsy")
    first = library.load(file)
    assert library.load(file) is first
    old_hash = file.shorthash
    save_concept(random_concept(sd1_layers, "hugsy", seed=5), folder / "hugsy.safetensors")
    second = library.load(file)
    assert second is not first and not (second.i_star == first.i_star).all()
    assert file.shorthash != old_hash and len(file.shorthash) == 12


def test_card_shows_word_superclass_and_base_model(folder):
    file = ConceptLibrary(folder).find("rex")
    assert file.card_prompt(0.7) == "<perfusion:pets/rex:0.7> rex"
    assert file.summary == "rex, a teddy (sd1)"
    shown = file.card_metadata()
    assert shown["trigger word"] == "rex" and shown["superclass"] == "teddy" and shown["base model"] == "sd1"
    assert shown["training steps"] == "400"


def test_pasting_renames_a_tag_to_the_local_file_with_the_same_hash(folder):
    library = ConceptLibrary(folder)
    shorthash = library.find("rex").shorthash
    params = {"Prompt": "<perfusion:their_rex:0.7> rex",
              "Perfusion hashes": f"their_rex: {shorthash}, gone: 000000000000"}
    rename_by_hash(params, library)
    assert params["Prompt"] == "<perfusion:pets/rex:0.7> rex"
    params = {"Prompt": "<perfusion:hugsy:0.7> hugsy", "Perfusion hashes": "hugsy: 000000000000"}
    rename_by_hash(params, library)
    assert params["Prompt"] == "<perfusion:hugsy:0.7> hugsy"  # no local file has that hash: left as written


def test_a_file_whose_header_length_starts_with_byte_0x80_is_not_taken_for_a_pickle(tmp_path):
    """Seen with a Train-tab training state: 0x80 is also the first byte of a pickle."""
    path = tmp_path / "x.state.safetensors"
    for pad in range(256):
        save_tensors(path, {"t": torch.zeros(2)}, {"pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert read_safetensors(path)[1]["pad"]


class _Prompts(list):
    """Like the web UI's prompt list: a list that carries the image size."""

    width = 0


class _Model:
    """A stand-in for the web UI's model: one row per word of each prompt, its value the word's length."""

    def __init__(self, sdxl: bool = False) -> None:
        self.sdxl, self.widths = sdxl, []

    def get_learned_conditioning(self, texts: _Prompts):
        self.widths.append(texts.width)
        rows = torch.tensor([[float(len(w)) for w in t.split()] for t in texts])[..., None]
        return {"crossattn": rows, "vector": torch.zeros(len(texts), 2)} if self.sdxl else rows


class _Unet(torch.nn.Module):
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return x


def _encode(model, *texts: str, width: int = 64):
    prompts = _Prompts(texts)
    prompts.width = width
    with torch.no_grad():
        return model.get_learned_conditioning(prompts)


@pytest.mark.parametrize("sdxl", [False, True])
def test_global_lock_context_rows_read_the_superclass_prompt(sdxl):
    from perfusion_a1111.global_lock import SuperclassContexts

    model, unet, lock = _Model(sdxl), _Unet(), SuperclassContexts()
    lock.install(model, unet, None, {"hugsy": "bear"})
    _encode(model, "a hugsy sits", "an ugly dog")
    assert model.widths == [64, 64]  # the superclass prompt is encoded at the same image size
    concept, negative = torch.tensor([[1.0], [5.0], [4.0]]), torch.tensor([[2.0], [4.0], [3.0]])
    twin = torch.tensor([[1.0], [4.0], [4.0]])
    # one batch: the concept prompt, the negative prompt, the concept prompt repeated (Forge) and padded (A1111)
    unet(torch.zeros(1), context=torch.stack([concept, negative]))
    assert torch.equal(lock.key_input(torch.zeros(2, 3, 1)), torch.stack([twin, negative]))
    unet(torch.zeros(1), context=torch.stack([torch.cat([concept, concept]), torch.cat([concept, negative])]))
    assert torch.equal(lock.context, torch.stack([torch.cat([twin, twin]), torch.cat([twin, negative])]))
    with pytest.raises(PerfusionError, match="superclass"):
        lock.key_input(torch.zeros(2, 4, 1))  # a context the UNet was not called with
    # a capitalised word is the word too, and a longer word holding it is not
    _encode(model, "Hugsy sits", "hugsys sit")
    unet(torch.zeros(1), context=torch.stack([torch.tensor([[5.0], [4.0]]), torch.tensor([[6.0], [3.0]])]))
    assert torch.equal(lock.context, torch.stack([torch.tensor([[4.0], [4.0]]), torch.tensor([[6.0], [3.0]])]))
    lock.remove()
    assert "get_learned_conditioning" not in vars(model)
    assert lock.context is None


def test_global_lock_keys_read_the_superclass_prompt_as_the_hosts_attention_hands_k_its_context():
    """A1111's attention runs a loaded hypernetwork's K side on the context before K: on the superclass prompt too."""
    from perfusion_a1111.global_lock import SuperclassContexts

    model, unet, lock = _Model(), _Unet(), SuperclassContexts()
    lock.install(model, unet, None, {"hugsy": "bear"}, keys=lambda context: 2 * context + 1)
    _encode(model, "a hugsy sits", "an ugly dog")
    unet(torch.zeros(1), context=torch.tensor([[[1.0], [5.0], [4.0]], [[2.0], [4.0], [3.0]]]))
    assert torch.equal(lock.key_input(torch.zeros(2, 3, 1)), 2 * torch.tensor([[[1.0], [4.0], [4.0]],
                                                                               [[2.0], [4.0], [3.0]]]) + 1)
    lock.install(model, unet, None, {"hugsy": "bear"})  # the next generation, without a hypernetwork
    unet(torch.zeros(1), context=torch.tensor([[[1.0], [5.0], [4.0]]]))
    assert torch.equal(lock.context, torch.tensor([[[1.0], [4.0], [4.0]]]))


class _ForgeUnet:
    """A stand-in for Forge's `UnetPatcher`: a clone copies `model_options` and the object patches."""

    def __init__(self, diffusion_model: torch.nn.Module, model_options: dict) -> None:
        self.model = SimpleNamespace(diffusion_model=diffusion_model)
        self.model_options, self.object_patches = model_options, {}

    def clone(self) -> _ForgeUnet:
        clone = _ForgeUnet(self.model.diffusion_model, copy.deepcopy(self.model_options))
        clone.object_patches = dict(self.object_patches)
        return clone

    def add_object_patch(self, key: str, patch) -> None:
        self.object_patches[key] = patch

    def projection(self, layer, name: str):
        return self.object_patches.get(f"diffusion_model.{layer.path}.{name}.forward", getattr(layer, name))

    def attn2_projections(self, layer, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one cross-attention as Forge's `BasicTransformerBlock` computes them: its attn2 patches first."""
        value = context
        for patch in self.model_options["transformer_options"]["patches"].get("attn2_patch", []):
            _, context, value = patch(None, context, value, {})
        return self.projection(layer, "to_k")(context), self.projection(layer, "to_v")(value)


def test_forge_global_lock_runs_first_among_the_attn2_patches(sd1_unet, sd1_layers):
    """As in ComfyUI, another attn2 patch (an IP-Adapter-style extension's) transforms the superclass prompt that K
    reads as it does the prompt; V reads the prompt through it."""
    from perfusion_a1111.forge import PATCHES_ATTRIBUTE, patch_clone
    from perfusion_core import ConceptUse, build_patch

    def theirs(n, context, value, extra_options):
        return n, 2 * context + 1, value - 1

    options = {"transformer_options": {"patches": {"attn2_patch": [theirs]}}}
    unet, layer = _ForgeUnet(sd1_unet, options), sd1_layers[0]
    prompt, superclass = torch.randn(2, 4, 768), torch.randn(2, 4, 768)
    for lock in ("local", "global"):
        p = SimpleNamespace(sd_model=SimpleNamespace(forge_objects=SimpleNamespace(unet=unet)))
        setattr(p, PATCHES_ATTRIBUTE, build_patch(sd1_layers, [ConceptUse(random_concept(sd1_layers), lock=lock)]))
        patch_clone(p, lambda e: superclass)
        clone = p.sd_model.forge_objects.unet
        attn2 = clone.model_options["transformer_options"]["patches"]["attn2_patch"]
        assert len(attn2) == (2 if lock == "global" else 1) and attn2[-1] is theirs
    with torch.no_grad():
        k, v = clone.attn2_projections(layer, prompt)
    # the only concept is locked globally: K is the host's own projection, of the superclass prompt through theirs
    assert torch.equal(k, layer.to_k(2 * superclass + 1))
    assert torch.equal(v, clone.projection(layer, "to_v")(prompt - 1))
    assert options == {"transformer_options": {"patches": {"attn2_patch": [theirs]}}}  # the source's left as it was
    set_superclass_keys(clone.model_options, None)
    assert clone.model_options["transformer_options"]["patches"]["attn2_patch"] == [theirs]


def test_forge_context_lock_relays_the_superclass_prompt_to_v(sd1_unet, sd1_layers):
    from perfusion_a1111.forge import PATCHES_ATTRIBUTE, patch_clone
    from perfusion_core import ConceptUse, build_patch

    unet, layer = _ForgeUnet(sd1_unet, {}), sd1_layers[0]
    prompt, superclass = torch.randn(2, 4, 768), torch.randn(2, 4, 768)
    patches = build_patch(sd1_layers, [ConceptUse(random_concept(sd1_layers), lock="context")])
    p = SimpleNamespace(sd_model=SimpleNamespace(forge_objects=SimpleNamespace(unet=unet)))
    setattr(p, PATCHES_ATTRIBUTE, patches)
    patch_clone(p, lambda e: superclass)
    with torch.no_grad():
        k, v = p.sd_model.forge_objects.unet.attn2_projections(layer, prompt)
        expected = patches[layer.name].value(layer.to_v, prompt, superclass)
    assert torch.equal(k, layer.to_k(superclass))
    assert torch.allclose(v, expected, atol=1e-5) and not torch.allclose(v, layer.to_v(superclass), atol=1e-3)


def test_global_lock_refuses_a_superclass_of_another_length_and_skips_training_encodes():
    from perfusion_a1111.global_lock import SuperclassContexts

    model, unet, lock = _Model(), _Unet(), SuperclassContexts()
    lock.install(model, unet, None, {"hugsy": "teddy bear"})
    model.get_learned_conditioning(_Prompts(["a hugsy"]))  # with gradients, as training encodes: nothing kept
    assert model.widths == [0]
    context = torch.tensor([[[1.0], [5.0]]])
    unet(torch.zeros(1), context=context)
    assert torch.equal(lock.context, context)
    with pytest.raises(PerfusionError, match="one-token superclass"):
        _encode(model, "a hugsy")


def test_global_lock_removal_restores_another_extensions_wrapper():
    from perfusion_a1111.global_lock import SuperclassContexts

    model, lock = _Model(), SuperclassContexts()
    theirs = model.get_learned_conditioning
    model.get_learned_conditioning = theirs
    lock.install(model, _Unet(), None, {"hugsy": "bear"})
    assert model.get_learned_conditioning is not theirs
    lock.remove()
    assert model.get_learned_conditioning is theirs

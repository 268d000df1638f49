"""Patching real diffusers UNets (SD1.5-, SD2- and SDXL-shaped, small random weights)."""

import re

import pytest
import torch

from perfusion_core import (
    ConceptUse,
    IncompatibleConceptError,
    PerfusionError,
    cross_attention_layers,
    patch_unet,
)
from perfusion_core.layers import check_text_encoder_layer
from perfusion_core.patch import superclass_words
from perfusion_core.rank1 import gate

from .conftest import SD1_ATTN2, random_concept, tiny_unet, unet_inputs


def _run(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def _hook_count(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def test_sd1_layers_get_the_ldm_names(sd1_layers):
    assert sorted(layer.name for layer in sd1_layers) == sorted(SD1_ATTN2)
    assert {layer.context_dim for layer in sd1_layers} == {768}


def test_sdxl_layer_map_has_every_transformer_block():
    layers = cross_attention_layers(tiny_unet("sdxl"))
    # down: 2 + 2*3 (levels 1, 2), mid: 3, up: 3*3 + 3*2
    assert len(layers) == 2 * 2 + 2 * 3 + 3 + 3 * 3 + 3 * 2
    assert "input_blocks.7.1.transformer_blocks.2.attn2" in {layer.name for layer in layers}
    assert {layer.context_dim for layer in layers} == {2048}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_patch_run_remove_is_bit_identical(family):
    unet = tiny_unet(family)
    inputs = unet_inputs(unet)
    layers = cross_attention_layers(unet)
    concept = random_concept(layers)
    inputs["encoder_hidden_states"][:, 3] = concept.i_star  # the concept's word, so the gate opens
    before = _run(unet, inputs)
    handle = patch_unet(unet, [(concept, 0.7, 0.15)])
    patched = _run(unet, inputs)
    assert not torch.allclose(patched, before, atol=1e-4)
    handle.remove()
    assert torch.equal(_run(unet, inputs), before)
    assert _hook_count(unet) == 0


def test_patch_twice_remove_twice_and_context_manager(sd1_unet, sd1_layers):
    inputs = unet_inputs(sd1_unet)
    a, b = random_concept(sd1_layers, "aaa", seed=1), random_concept(sd1_layers, "bbb", seed=2)
    inputs["encoder_hidden_states"][:, 2] = b.i_star
    before = _run(sd1_unet, inputs)
    first = patch_unet(sd1_unet, [(a, 0.7, 0.15)])
    with patch_unet(sd1_unet, [(b, 0.7, 0.15)]) as second:  # replaces the first
        assert not first.active and second.active
        only_b = _run(sd1_unet, inputs)
        assert _hook_count(sd1_unet) == 4 * len(sd1_layers)  # pre and post hooks on to_k and to_v
    first.remove()
    second.remove()
    assert torch.equal(_run(sd1_unet, inputs), before)
    with patch_unet(sd1_unet, [(b, 0.7, 0.15)]):
        assert torch.equal(_run(sd1_unet, inputs), only_b)


def test_patch_over_another_hook_keeps_it(sd1_unet, sd1_layers):
    inputs = unet_inputs(sd1_unet)
    before = _run(sd1_unet, inputs)
    other = sd1_layers[0].to_v.register_forward_hook(lambda m, a, out: out * 1.5)
    with_other = _run(sd1_unet, inputs)
    with patch_unet(sd1_unet, [(random_concept(sd1_layers), 0.7, 0.15)]):
        _run(sd1_unet, inputs)
    assert torch.equal(_run(sd1_unet, inputs), with_other)
    other.remove()
    assert torch.equal(_run(sd1_unet, inputs), before)


def test_hooks_compute_the_layer_math(sd1_unet, sd1_layers):
    concept = random_concept(sd1_layers)
    layer = sd1_layers[3]
    e = torch.randn(2, 5, 768)
    e[:, 1] = concept.i_star
    base_k, base_v = layer.to_k(e), layer.to_v(e)
    with patch_unet(sd1_unet, [(concept, 0.7, 0.15)]):
        k, v = layer.to_k(e), layer.to_v(e)
    g1 = float(gate(torch.tensor(1.0), 0.7, 0.15))
    w_k, w_v = layer.to_k.weight, layer.to_v.weight
    # key-locked: at i* the key is g(1) W_K i_super, the value is g(1) o*_V
    assert torch.allclose(k[:, 1], g1 * (w_k @ concept.i_super).expand(2, -1), atol=1e-4)
    assert torch.allclose(v[:, 1], g1 * concept.o_v[layer.name].expand(2, -1), atol=1e-4)
    s = (e @ concept.v) / (concept.i_star @ concept.v)
    g = gate(s, 0.7, 0.15)
    expected_v = base_v - s[..., None] * (w_v @ concept.i_star) + g[..., None] * concept.o_v[layer.name]
    expected_k = base_k - s[..., None] * (w_k @ concept.i_star) + g[..., None] * (w_k @ concept.i_super)
    assert torch.allclose(v, expected_v, atol=1e-4) and torch.allclose(k, expected_k, atol=1e-4)


def test_trained_keys_replace_the_lock_and_mix_with_locked_concepts(sd1_unet, sd1_layers):
    locked = random_concept(sd1_layers, "aaa", seed=1)
    trained = random_concept(sd1_layers, "bbb", seed=2)
    trained.o_k = {layer.name: torch.randn(layer.k_dim) for layer in sd1_layers}
    layer = sd1_layers[2]
    e = torch.stack([locked.i_star, trained.i_star])[None]
    with patch_unet(sd1_unet, [(locked, 0.7, 0.15), (trained, 0.7, 0.15)]) as handle:
        k = layer.to_k(e)[0]
        projector = handle.patches[layer.name].key.projector
    g = gate(projector.similarity(e[0]), 0.7, 0.15)  # (token, concept)
    w_k = layer.to_k.weight
    # the joint projector removes both encodings; each token keeps only the gated targets
    assert torch.allclose(k, g[:, :1] * (w_k @ locked.i_super) + g[:, 1:] * trained.o_k[layer.name], atol=1e-4)
    with pytest.raises(PerfusionError, match="trained keys"):
        ConceptUse(trained, lock="global")


def test_global_lock_reads_the_superclass_prompt(sd1_unet, sd1_layers):
    concept = random_concept(sd1_layers)
    layer = sd1_layers[0]
    e, e_super = torch.randn(2, 4, 768), torch.randn(2, 4, 768)
    with patch_unet(sd1_unet, [ConceptUse(concept, 0.5, 0.15, lock="global")]) as handle:
        with pytest.raises(PerfusionError, match="superclass"):
            layer.to_k(e)
        handle.set_superclass_context(e_super)
        assert torch.equal(layer.to_k(e), layer.to_k.forward(e_super))


def test_the_handle_names_the_words_whose_superclass_prompt_it_reads(sd1_unet, sd1_layers):
    local = random_concept(sd1_layers, "hugsy", seed=0)
    context = random_concept(sd1_layers, "wugsy", seed=1)
    with patch_unet(sd1_unet, [ConceptUse(context, lock="context"), ConceptUse(local, lock="local")]) as handle:
        assert [u.concept.word for u in handle.uses] == ["hugsy", "wugsy"]
        assert superclass_words(handle.uses) == {"wugsy": context.superclass}
    with patch_unet(sd1_unet, [local]) as handle:
        assert superclass_words(handle.uses) == {}


def test_context_lock_reads_the_superclass_prompt_on_both_sides(sd1_unet, sd1_layers):
    concept = random_concept(sd1_layers)
    layer = sd1_layers[1]
    e, e_super = torch.randn(1, 4, 768), torch.randn(1, 4, 768)
    e[0, 2] = concept.i_star  # the concept's word at token 2; its superclass word there in e_super
    e_super[0, 2] = concept.i_super
    with patch_unet(sd1_unet, [ConceptUse(concept, 0.5, 0.15, lock="context")]) as handle:
        with pytest.raises(PerfusionError, match="superclass"):
            layer.to_v(e)
        handle.set_superclass_context(e_super)
        k, v = layer.to_k(e), layer.to_v(e)
        projector = handle.patches[layer.name].value.projector
    assert torch.equal(k, layer.to_k.forward(e_super))
    # V: the superclass prompt, with the concept's token taking its target in proportion to the gate read from e
    c = (e[0] @ projector.coefficient_map)[:, 0]
    g = gate(projector.similarity(e[0])[:, 0], 0.5, 0.15)
    w_v = layer.to_v.weight
    expected = ((1 - c[:, None]) * e_super[0]) @ w_v.T + g[:, None] * concept.o_v[layer.name]
    assert torch.allclose(v[0], expected, atol=1e-4)
    assert g[2] > 0.9 and torch.allclose(v[0, 2], g[2] * concept.o_v[layer.name], atol=1e-4)  # the superclass removed


def test_a_concept_applies_with_the_lock_it_was_trained_with(sd1_layers):
    concept = random_concept(sd1_layers)
    assert ConceptUse(concept).lock == "local"
    concept.training = {**concept.training, "lock": "context"}
    assert ConceptUse(concept).lock == "context" and ConceptUse(concept, lock="local").lock == "local"


def test_two_concepts_form_one_joint_patch(sd1_unet, sd1_layers):
    a, b = random_concept(sd1_layers, "aaa", seed=1), random_concept(sd1_layers, "bbb", seed=2)
    layer = sd1_layers[5]
    e = torch.stack([a.i_star, b.i_star])[None]
    with patch_unet(sd1_unet, [(a, 0.7, 0.15), (b, 0.6, 0.15)]) as handle:
        v = layer.to_v(e)
        assert len(handle.patches[layer.name].value.projector) == 2
    # each concept's own encoding is mapped to its own target, gated by its own β
    assert torch.allclose(v[0, 0], float(gate(torch.tensor(1.0), 0.7, 0.15)) * a.o_v[layer.name]
                          + float(gate(handle.patches[layer.name].value.projector.similarity(a.i_star)[1], 0.6, 0.15))
                          * b.o_v[layer.name], atol=1e-4)


def test_wrong_family_is_refused_with_both_names(sd1_layers):
    sdxl = tiny_unet("sdxl")
    with pytest.raises(IncompatibleConceptError, match=r"sd1 \(context width 768\).*sdxl \(context width 2048\)"):
        patch_unet(sdxl, [(random_concept(sd1_layers), 0.7, 0.15)])
    assert _hook_count(sdxl) == 0


def test_layer_mismatch_and_text_encoder_layer_are_refused(sd1_unet, sd1_layers):
    concept = random_concept(sd1_layers)
    concept.o_v.pop(sd1_layers[0].name)
    with pytest.raises(IncompatibleConceptError, match="differently shaped UNet"):
        patch_unet(sd1_unet, [(concept, 0.7, 0.15)])
    with pytest.raises(IncompatibleConceptError, match="CLIP skip"):
        check_text_encoder_layer(random_concept(sd1_layers), "penultimate")


def test_same_word_twice_replaces_with_a_warning(sd1_unet, sd1_layers, caplog):
    first, again = random_concept(sd1_layers, seed=1), random_concept(sd1_layers, seed=2)
    with patch_unet(sd1_unet, [(first, 0.7, 0.15), (again, 0.6, 0.2)]) as handle:
        projector = next(iter(handle.patches.values())).value.projector
        assert len(projector) == 1 and projector.settings[0].beta == 0.6
    assert "applied twice, with different settings: the later ones (β 0.6, τ 0.2" in caplog.text
    caplog.clear()
    with patch_unet(sd1_unet, [(first, 0.7, 0.15), (first, 0.7, 0.15)]):
        pass
    assert "twice" not in caplog.text


@pytest.mark.parametrize("count", [2, 3])
def test_the_joint_patch_does_not_depend_on_the_order_of_concepts(sd1_unet, sd1_layers, count):
    concepts = [random_concept(sd1_layers, word, seed=k) for k, word in enumerate(["ccc", "aaa", "bbb"][:count])]
    uses = [ConceptUse(c, 0.55 + 0.1 * k, 0.1 + 0.05 * k, strength=1 - 0.2 * k) for k, c in enumerate(concepts)]
    inputs = unet_inputs(sd1_unet)
    for k, c in enumerate(concepts):
        inputs["encoder_hidden_states"][:, 2 + k] = c.i_star
    outputs = []
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0])[: 2 if count == 2 else 3]:
        with patch_unet(sd1_unet, [uses[k] for k in order if k < count]):
            outputs.append(_run(sd1_unet, inputs))
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("beta", float("nan"), "concept 'hugsy': beta must be a number from 0.0 to 1.0, got nan"),
    ("beta", 1.5, "concept 'hugsy': beta must be a number from 0.0 to 1.0, got 1.5"),
    ("tau", 0.0, "concept 'hugsy': tau must be a number from 0.01 to 1.0, got 0.0"),
    ("tau", float("inf"), "tau must be a number from 0.01 to 1.0, got inf"),
    ("strength", float("-inf"), "strength must be a number from 0.0 to 2.0, got -inf"),
    ("region_weight", float("nan"), "region_weight must be a number from 0.0 to 5.0, got nan"),
    ("beta", "0.7", "beta must be a number from 0.0 to 1.0, got '0.7'"),
])
def test_bad_gate_values_are_refused_before_anything_is_patched(sd1_unet, sd1_layers, knob, value, message):
    concept = random_concept(sd1_layers)
    inputs = unet_inputs(sd1_unet)
    before = _run(sd1_unet, inputs)
    with pytest.raises(PerfusionError, match=re.escape(message)):
        patch_unet(sd1_unet, [ConceptUse(concept, **{knob: value})])
    assert _hook_count(sd1_unet) == 0 and torch.equal(_run(sd1_unet, inputs), before)
    with pytest.raises(PerfusionError, match="expected a Perfusion concept, got str"):
        ConceptUse("hugsy")


def test_training_gradients_reach_targets_and_context(sd1_unet, sd1_layers):
    from perfusion_core.patch import build_patch, install_patch

    concept = random_concept(sd1_layers)
    targets = {name: t.clone().requires_grad_(True) for name, t in concept.o_v.items()}
    concept.o_v = targets
    inputs = unet_inputs(sd1_unet)
    context = inputs["encoder_hidden_states"].requires_grad_(True)
    with install_patch(sd1_unet, sd1_layers, build_patch(sd1_layers, [concept])):
        sd1_unet(**inputs).sample.square().mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in targets.values())
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in sd1_unet.parameters())

"""Regions (paint with concepts): the score bias, its attention, and the in-place patch that uses it."""

import pytest
import torch

from perfusion_core import ConceptUse, PerfusionError, cross_attention_layers, gate, patch_unet
from perfusion_core.regions import (
    NAMED,
    SIGMA_CAP,
    RegionPainter,
    grid_for,
    named_region,
    painted_attention,
    painted_scores,
    resize,
)

from .conftest import random_concept, tiny_unet, unet_inputs


def _left_half(size: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[:, : size // 2] = 1
    return mask


def _painter(layers, weight: float = 1.0, region: torch.Tensor | None = None) -> tuple[RegionPainter, object]:
    concept = random_concept(layers)
    patch = patch_unet(tiny_unet(), [ConceptUse(concept, region=_left_half() if region is None else region,
                                                region_weight=weight)])
    painter = next(iter(patch.patches.values())).painter
    patch.remove()
    return painter, concept


def test_levels_of_a_unet_and_masks_on_them():
    assert grid_for(64, 8, 8) == (8, 8) and grid_for(16, 8, 8) == (4, 4)
    assert grid_for(15, 5, 9) == (3, 5) and grid_for(6, 5, 9) == (2, 3)
    with pytest.raises(PerfusionError, match="input size"):
        grid_for(10, 8, 8)
    mask = resize(_left_half(64), (4, 4)).view(4, 4)
    assert torch.equal(mask[:, :2], torch.ones(4, 2)) and torch.equal(mask[:, 2:], torch.zeros(4, 2))


def test_named_regions_are_halves_the_centre_and_quarters():
    on_four = {name: resize(named_region(name), (4, 4)).view(4, 4) for name in NAMED}
    assert on_four["left"][:, :2].eq(1).all() and on_four["left"][:, 2:].eq(0).all()
    assert on_four["bottom"][2:].eq(1).all() and on_four["bottom"][:2].eq(0).all()
    assert on_four["centre"].sum() == 4 and on_four["centre"][1:3, 1:3].eq(1).all()
    assert on_four["top-right"].sum() == 4 and on_four["top-right"][:2, 2:].eq(1).all()
    assert torch.equal(on_four["left"] + on_four["right"], torch.ones(4, 4))
    with pytest.raises(PerfusionError, match="unknown region 'middle'.*left, right"):
        ConceptUse(random_concept(cross_attention_layers(tiny_unet())), region="middle")


def test_bias_is_zero_inside_the_region_and_keeps_the_concepts_gate_out_of_the_rest(sd1_layers):
    painter, concept = _painter(sd1_layers)
    context = torch.randn(2, 6, 768)
    context[:, 3] = concept.i_star  # the concept's word
    paint = painter.paint(context, (4, 4))
    inside, outside = paint.view(2, 4, 4, 6)[:, :, :2], paint.view(2, 4, 4, 6)[:, :, 2:]
    assert torch.equal(inside, torch.zeros_like(inside))
    open_gate = gate(torch.tensor(1.0), 0.7, 0.15)  # the word itself has similarity 1
    assert torch.allclose(outside[..., 3], -open_gate.expand_as(outside[..., 3]), atol=1e-4)
    assert outside[..., [0, 1, 2, 4, 5]].min() > -0.5
    q, k = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 6, 8)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    bias = painted_scores(q, k, paint, torch.tensor([1.0, 1e9])) - scores
    assert bias.view(2, 4, 4, 4, 6)[:, :, :, :2].abs().max() < 1e-6
    top = scores.amax(dim=(-2, -1))
    expected = -top * torch.log1p(torch.tensor([1.0, SIGMA_CAP]))[:, None] * open_gate
    assert torch.allclose(bias[:, :, 2, 3], expected, atol=1e-4)  # position 2: row 0, column 2, outside


def test_the_concepts_attention_outside_the_region_falls_with_the_weight_and_inside_is_the_models(sd1_layers):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 32, generator=g) for n in (16, 6, 6))
    context = torch.randn(1, 6, 768, generator=g)
    masses = []
    for weight in (0.0, 0.5, 1.0, 2.0, 4.0):
        painter, concept = _painter(sd1_layers, weight)
        context[:, 3] = concept.i_star
        paint = painter.paint(context, (4, 4))
        q_heads, k_heads = q.view(1, 16, 4, 8).transpose(1, 2), k.view(1, 6, 4, 8).transpose(1, 2)
        scores = q_heads @ k_heads.transpose(-1, -2) / 8**0.5
        attention = painted_scores(q_heads, k_heads, paint, torch.tensor([3.0])).softmax(-1)
        masses.append(float(attention.view(1, 4, 4, 4, 6)[:, :, :, 2:, 3].mean()))
        inside = attention.view(1, 4, 4, 4, 6)[:, :, :, :2]
        assert torch.allclose(inside, scores.softmax(-1).view(1, 4, 4, 4, 6)[:, :, :, :2])
    assert all(b < a for a, b in zip(masses, masses[1:], strict=False)), masses
    assert masses[-1] < 0.1 * masses[0]


def test_painted_attention_without_paint_is_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 32, generator=g) for n in (16, 6, 6))
    out = painted_attention(q, k, v, 4, torch.zeros(2, 16, 6), torch.tensor([5.0, 5.0]))
    heads = [t.view(2, -1, 4, 8).transpose(1, 2) for t in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(2, 16, 32)
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_patch_without_regions_leaves_attention_alone_and_regions_unpatch_exactly():
    unet = tiny_unet()
    layers = cross_attention_layers(unet)
    concept = random_concept(layers)
    inputs = unet_inputs(unet)
    inputs["encoder_hidden_states"][:, 3] = concept.i_star
    before = unet(**inputs).sample
    with patch_unet(unet, [ConceptUse(concept)]) as handle:
        plain = unet(**inputs).sample
        assert not any("forward" in layer.module.__dict__ for layer in layers) and handle._painted is None
    schedule = torch.linspace(0.999, 0.001, 1000)
    region = torch.ones(64, 64)
    with patch_unet(unet, [ConceptUse(concept, region=region)]) as handle:
        with pytest.raises(PerfusionError, match="noise schedule"):
            unet(**inputs)
        handle.set_noise_schedule(schedule)
        everywhere = unet(**inputs).sample  # a region everywhere: no bias, the same attention computed explicitly
    assert torch.allclose(everywhere, plain, atol=1e-4)
    region[:, 32:] = 0
    with patch_unet(unet, [ConceptUse(concept, region=region, region_weight=2.0)]) as handle:
        handle.set_noise_schedule(schedule)
        painted = unet(**inputs).sample
    assert not torch.allclose(painted, plain, atol=1e-3)
    assert not any("forward" in layer.module.__dict__ for layer in layers)
    assert torch.equal(unet(**inputs).sample, before)


def test_bad_regions_are_refused_by_name(sd1_layers):
    concept = random_concept(sd1_layers)
    bad_regions = ((torch.ones(2, 8, 8), "one \\(height, width\\) mask"), (torch.full((8, 8), 2.0), "\\[0, 1\\]"))
    for bad, message in bad_regions:
        with pytest.raises(PerfusionError, match=message):
            patch_unet(tiny_unet(), [ConceptUse(concept, region=bad)])


def test_the_paint_follows_the_context_it_is_given(sd1_layers):
    painter, concept = _painter(sd1_layers)
    first, second = torch.randn(1, 6, 768), torch.randn(1, 6, 768)
    first[:, 1], second[:, 4] = concept.i_star, concept.i_star
    on_first = painter.paint(first, (4, 4))
    assert painter.paint(first, (4, 4)) is on_first  # every layer of a call reads the same context
    on_second = painter.paint(second, (4, 4))
    assert on_second[0, 3].argmin() == 4 and on_first[0, 3].argmin() == 1  # position 3: outside the region
    assert painter.paint(first, (2, 2)).shape == (1, 4, 6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_painted_attention_in_half_precision_is_finite_and_close_to_float32(dtype):
    """Regions on a bf16 or fp16 UNet, at the largest weight: the biased scores are float32 whatever its dtype."""
    unet = tiny_unet()
    concept = random_concept(cross_attention_layers(unet))
    inputs = unet_inputs(unet)
    inputs["encoder_hidden_states"][:, 3] = concept.i_star
    region = torch.zeros(64, 64)
    region[:, :32] = 1
    outputs = []
    for model_dtype in (torch.float32, dtype):
        unet.to(model_dtype)
        cast = {k: v.to(model_dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
        with patch_unet(unet, [ConceptUse(concept, region=region, region_weight=5.0)]) as handle:
            handle.set_noise_schedule(torch.linspace(0.999, 0.001, 1000))
            outputs.append(unet(**cast).sample.float())
    full, half = outputs
    assert torch.isfinite(half).all()
    assert (half - full).abs().max() < 0.05 * full.abs().max()

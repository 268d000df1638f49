"""The gated rank-1 math against its closed forms (ROME, the paper's gate table, the exact projector)."""

import pytest
import torch
from torch import nn

from perfusion_core import GatedProjection, GateSettings, JointProjector, PerfusionError, gate

from .conftest import random_spd

D, OUT = 48, 40


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    c = random_spd(D, g)
    c_inv = torch.linalg.inv(c)
    linear = nn.Linear(D, OUT, bias=True).double()
    i_star = torch.randn(D, generator=g, dtype=torch.float64)
    return g, c, c_inv, linear, i_star


def test_gate_table_matches_the_paper():
    s = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert torch.allclose(gate(s, 0.75, 0.10), torch.tensor([0.924, 0.500, 0.076, 0.007, 0.0006]), atol=6e-4)
    assert torch.allclose(gate(s, 0.70, 0.15), torch.tensor([0.881, 0.583, 0.209, 0.047, 0.009]), atol=6e-4)


def test_ungated_edit_is_rome_closed_form(setup):
    g, _, c_inv, linear, i_star = setup
    v = c_inv @ i_star
    o_star = torch.randn(OUT, generator=g, dtype=torch.float64)
    w = linear.weight.detach()
    w_rome = w + torch.outer(o_star - w @ i_star, v) / (i_star @ v)
    projector = JointProjector(i_star[None], v[None], [GateSettings()], gated=False)
    edit = GatedProjection(projector, added_outputs=o_star[None].float())
    e = torch.randn(5, 7, D, generator=g, dtype=torch.float64)
    expected = e @ w_rome.T + linear.bias.detach()
    got = edit(linear, e)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    # W' i* = o*
    assert torch.allclose(edit(linear, i_star[None]) - linear.bias.detach(), o_star[None], atol=1e-4)


def test_single_concept_reduces_to_single_form(setup):
    g, _, c_inv, linear, i_star = setup
    v = c_inv @ i_star
    o_star = torch.randn(OUT, generator=g, dtype=torch.float64)
    settings = GateSettings(beta=0.7, tau=0.15)
    edit = GatedProjection(JointProjector(i_star[None], v[None], [settings]), added_outputs=o_star[None].float())
    e = torch.randn(11, D, generator=g, dtype=torch.float64) + 0.8 * i_star
    s = (e @ v) / (i_star @ v)
    gates = torch.sigmoid((s - 0.7) / 0.15)
    w = linear.weight.detach()
    expected = linear(e) - s[:, None] * (w @ i_star)[None] + gates[:, None] * o_star[None]
    assert torch.allclose(edit(linear, e), expected, rtol=1e-4, atol=1e-4)
    # at the concept's own encoding the output is g(1) o* (plus the bias)
    at_concept = edit(linear, i_star[None]) - linear.bias.detach()
    assert torch.allclose(at_concept, gate(torch.tensor(1.0), 0.7, 0.15).double() * o_star[None], atol=1e-4)


def test_similarity_is_invariant_to_the_scale_of_c(setup):
    g, c, _, _, i_star = setup
    e = torch.randn(9, D, generator=g, dtype=torch.float64)
    sims = []
    for scale in (1.0, 37.0, 1e-3):
        v = torch.linalg.inv(c * scale) @ i_star
        sims.append(JointProjector(i_star[None], v[None], [GateSettings()]).similarity(e))
    assert torch.allclose(sims[0], sims[1], atol=1e-5) and torch.allclose(sims[0], sims[2], atol=1e-5)


def _correlated(setup, n=3):
    g, c, c_inv, _, i_star = setup
    inputs = torch.stack([i_star + 0.3 * torch.randn(D, generator=g, dtype=torch.float64) for _ in range(n)])
    return g, c_inv, inputs, inputs @ c_inv.T  # v_j = C⁻¹ i*_j


def test_joint_projector_is_exact_for_correlated_concepts(setup):
    g, _, inputs, vs = _correlated(setup)
    cos = torch.nn.functional.cosine_similarity(inputs[0], inputs[1], dim=0)
    assert cos > 0.6  # really correlated
    projector = JointProjector(inputs, vs, [GateSettings()] * 3)
    assert torch.allclose(projector.project(inputs), inputs.float(), atol=1e-4)  # P i*_j = i*_j
    e = torch.randn(20, D, generator=g, dtype=torch.float64)
    pe = projector.project(e)
    assert torch.allclose(projector.project(pe), pe, atol=1e-4)  # P² = P
    # the residual is invisible to every concept: v_jᵀ (e − P e) = 0
    assert (((e.float() - pe).double() @ vs.T).abs() / (e @ vs.T).abs().max()).max() < 1e-4


def test_projectors_seen_in_public_code_fail_the_same_checks(setup):
    g, _, inputs, vs = _correlated(setup)
    # per-concept subtraction: P ≈ Σ_j i*_j v_jᵀ / (i*_j·v_j)
    approx = sum(torch.outer(i, v) / (i @ v) for i, v in zip(inputs, vs, strict=True))
    assert not torch.allclose(inputs @ approx.T, inputs, atol=1e-2)
    # Cholesky path without C⁻¹ (Euclidean projector onto span(I)): fixes I but leaves a residual that
    # the concepts' similarities still see, so it is not the C⁻¹ projector of the paper
    chol = torch.linalg.cholesky(inputs @ inputs.T)
    basis = torch.cholesky_solve(inputs, chol)  # (IᵀI)⁻¹ Iᵀ as rows
    e = torch.randn(20, D, generator=g, dtype=torch.float64)
    residual = e - (e @ basis.T) @ inputs
    assert ((residual @ vs.T).abs() / (e @ vs.T).abs().max()).max() > 1e-2


def test_key_locking_maps_the_concept_to_its_superclass_key(setup):
    g, _, c_inv, linear, i_star = setup
    v = c_inv @ i_star
    i_super = torch.randn(D, generator=g, dtype=torch.float64)
    key = GatedProjection(JointProjector(i_star[None], v[None], [GateSettings(0.7, 0.15)]),
                          added_inputs=i_super[None].float())
    w = linear.weight.detach()
    got = key(linear, i_star[None]) - linear.bias.detach()
    assert torch.allclose(got, gate(torch.tensor(1.0), 0.7, 0.15).double() * (w @ i_super)[None], atol=1e-4)
    # a token unrelated to i* (zero similarity) keeps its key: g(0) = 0.0006 at the training gate
    key = GatedProjection(JointProjector(i_star[None], v[None], [GateSettings(0.75, 0.10)]),
                          added_inputs=i_super[None].float())
    unrelated = torch.randn(D, generator=g, dtype=torch.float64)
    unrelated -= (unrelated @ v) / (i_star @ v) * i_star
    before = linear(unrelated[None])
    assert ((key(linear, unrelated[None]) - before).abs().max() / before.abs().max()) < 1e-3


def test_half_precision_module_gets_float32_gates(setup):
    g, _, c_inv, linear, i_star = setup
    v = c_inv @ i_star
    o_star = torch.randn(OUT, generator=g)
    edit = GatedProjection(JointProjector(i_star[None], v[None], [GateSettings()]), added_outputs=o_star[None])
    e = torch.randn(6, D, generator=g, dtype=torch.float64) + i_star
    reference = edit(linear.float(), e.float())
    half = edit(linear.half() if torch.cuda.is_available() else linear.bfloat16(), e.to(linear.weight.dtype))
    assert half.dtype == linear.weight.dtype
    assert (half.float() - reference).abs().max() / reference.abs().max() < 2e-2


def test_zero_strength_is_the_identity_bit_for_bit(setup):
    g, _, c_inv, linear, i_star = setup
    linear = linear.float()
    v = c_inv @ i_star
    edit = GatedProjection(JointProjector(i_star[None], v[None], [GateSettings(strength=0.0)]),
                           added_outputs=torch.randn(1, OUT, generator=g))
    e = torch.randn(4, D, generator=g)
    assert torch.equal(edit(linear, e), linear(e))


def test_identical_concepts_cannot_be_combined(setup):
    _, _, c_inv, _, i_star = setup
    both = torch.stack([i_star, i_star])
    with pytest.raises(PerfusionError, match="nearly"):
        JointProjector(both, both @ c_inv.T, [GateSettings()] * 2, names=["a", "b"])


def test_bad_temperature_is_refused():
    with pytest.raises(PerfusionError, match="tau"):
        GateSettings(tau=0)


def test_concepts_trained_against_different_c_still_give_a_projector(setup):
    g, _, inputs, _ = _correlated(setup, n=2)
    own_c = [torch.linalg.inv(random_spd(D, g)) for _ in range(2)]  # each concept's own C⁻¹
    vs = torch.stack([c_inv @ i for c_inv, i in zip(own_c, inputs, strict=True)])
    projector = JointProjector(inputs, vs, [GateSettings()] * 2)
    assert torch.allclose(projector.project(inputs), inputs.float(), atol=1e-4)
    e = torch.randn(20, D, generator=g, dtype=torch.float64)
    pe = projector.project(e)
    assert torch.allclose(projector.project(pe), pe, atol=1e-4)

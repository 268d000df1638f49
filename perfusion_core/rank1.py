"""The gated rank-1 edit of one projection, for any number of concepts.

For context vectors `e` and a frozen projection `f(x) = W x (+ b)`:

    out(e) = W e − (W I) G⁻¹ Vᵀ e + Σ_j g_j(e) o*_j,    G = Vᵀ I

with `I = [i*_1 … i*_n]`, `V = [v_1 … v_n]`, `v_j = C⁻¹ i*_j`, and the gate
`g_j(e) = sigmoid((s_j(e) − β_j) / τ_j)` of the similarity `s_j(e) = e·v_j / (i*_j·v_j)`.

The edit is evaluated as one call of the host's own projection on a rewritten input,

    out(e) = f(e − Σ_j m_j (c_j(e) i*_j − g_j(e) a_j)) + Σ_j m_j g_j(e) b_j,    c(e) = G⁻¹ Vᵀ e

so `W I` is never materialised and the weight is never copied: a key-locked K side has
`a_j = i_super_j` (`o*_K = W_K i_super_j`, read live through `f`), a V side has `b_j = o*_V_j`.
`m_j` is the concept's strength (1 gives the exact formula). Similarities, gates and the
projector run in float32 (built in float64) whatever the model's dtype.

Context locking (`lock="context"`) reads the prompt encoded with the superclass words, `e_s`, in place of `e`,
scaled down where `e` is a concept's word, while `c` and `g` still read `e`:

    out(e) = f((1 − Σ_j m_j c_j(e)) e_s + Σ_j m_j g_j(e) a_j) + Σ_j m_j g_j(e) b_j

so every other token (`c ≈ 0`) reads as in the superclass prompt and each concept's word (`c ≈ 1`) carries only its
target. (Removing `c_j i_super_j` from `e_s` instead, the rank-1 form, left part of the superclass word's context in
the word and composed worse on the toy model: `toyworld/MODEL_CARD.md`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import PerfusionError
from .knobs import GATE, check_gate
from .precision import float32_math


def gate(s: Tensor, beta: float | Tensor, tau: float | Tensor) -> Tensor:
    """`sigmoid((s − β) / τ)`: how much of a concept's edit a token with similarity `s` receives."""
    return torch.sigmoid((s - beta) / tau)


@dataclass(frozen=True)
class GateSettings:
    """Runtime knobs of one concept: gate bias β, temperature τ, and a strength multiplier."""

    beta: float = GATE["beta"].default
    tau: float = GATE["tau"].default
    strength: float = GATE["strength"].default

    def __post_init__(self) -> None:
        check_gate("gate", beta=self.beta, tau=self.tau, strength=self.strength)


class JointProjector:
    """Context side of the joint edit of n concepts: the oblique projector onto span(I) and the gates.

    One instance serves every layer that reads the same context space. `gated=False` replaces
    each gate by the similarity itself, which gives ROME's closed-form rank-1 update.
    """

    def __init__(
        self,
        i_star: Tensor,
        v: Tensor,
        settings: Sequence[GateSettings],
        names: Sequence[str] | None = None,
        gated: bool = True,
    ) -> None:
        if i_star.ndim != 2 or i_star.shape != v.shape or len(settings) != i_star.shape[0]:
            raise PerfusionError(
                f"projector needs i* and v of shape (n, d) and n gate settings, got {tuple(i_star.shape)}, "
                f"{tuple(v.shape)} and {len(settings)}"
            )
        names = list(names) if names is not None else [f"concept {j}" for j in range(len(settings))]
        inputs, vs = i_star.detach().double(), v.detach().double()
        g = vs @ inputs.T  # G[j, k] = v_j · i*_k
        # The relative scale tells near-duplicates apart from concepts that merely share a direction.
        cond = torch.linalg.cond(g / g.diagonal().abs().sqrt().outer(g.diagonal().abs().sqrt()))
        if not torch.isfinite(cond) or cond > 1e6 or (g.diagonal() <= 0).any():
            raise PerfusionError(
                f"cannot combine {', '.join(names)}: their targets are (nearly) identical, so the joint "
                "projector is singular; apply one of them, or retrain one with another superclass"
            )
        self.names = names
        self.settings = list(settings)
        self.gated = gated
        self.i_star = inputs.float()
        self.coefficient_map = (vs.T @ torch.linalg.inv(g).T).float()  # c(e) = e @ map = G⁻¹ Vᵀ e
        self.similarity_map = (vs.T / g.diagonal()).float()  # s_j(e) = e·v_j / (i*_j·v_j)
        self.beta = torch.tensor([s.beta for s in settings])
        self.tau = torch.tensor([s.tau for s in settings])
        self.strength = torch.tensor([s.strength for s in settings])
        self._on_device: dict[torch.device, tuple[Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self.settings)

    def _tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._on_device:
            both_maps = torch.cat([self.coefficient_map, self.similarity_map], dim=1)  # one GEMM gives c and s
            self._on_device[device] = tuple(
                t.to(device) for t in (self.i_star, both_maps, self.beta, self.tau, self.strength)
            )
        return self._on_device[device]

    def _coefficients_and_gates(self, e2: Tensor) -> tuple[Tensor, Tensor]:
        """`c(e)` and `g(e)` (or `s(e)` when ungated) of float32 rows `(N, d)`."""
        _, both_maps, beta, tau, _ = self._tensors(e2.device)
        c, s = (e2 @ both_maps).split(len(self), dim=1)
        return c, gate(s, beta, tau) if self.gated else s

    def similarity(self, e: Tensor) -> Tensor:
        """`s_j(e)` for every concept, shape `(..., n)`, float32."""
        return e.float() @ self.similarity_map.to(e.device)

    def gates(self, e: Tensor) -> Tensor:
        """`g_j(e)` for every concept, shape `(..., n)`, float32."""
        with float32_math(e.device):
            _, g = self._coefficients_and_gates(e.reshape(-1, e.shape[-1]).float())
        return g.reshape(*e.shape[:-1], len(self))

    def project(self, e: Tensor) -> Tensor:
        """`P e = I G⁻¹ Vᵀ e`, float32."""
        return (e.float() @ self.coefficient_map.to(e.device)) @ self.i_star.to(e.device)

    def rewrite(self, e: Tensor, added_inputs: Tensor | None, superclass: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """Return `e − Σ m_j (c_j i*_j − g_j a_j)` in `e`'s dtype and the weighted gates `m_j g_j`, `(N, n)`; with
        `superclass` (`e_s`, `e`'s shape), `(1 − Σ m_j c_j) e_s + Σ m_j g_j a_j`, `c` and `g` still of `e`."""
        i_star, _, _, _, strength = self._tensors(e.device)
        with float32_math(e.device):
            e2 = e.reshape(-1, e.shape[-1]).float()
            c, g = self._coefficients_and_gates(e2)
            weighted_gates = g * strength
            if superclass is None:
                rewritten = torch.addmm(e2, c * strength, i_star, alpha=-1)
            else:
                rewritten = superclass.reshape(e2.shape).float() * (1 - (c * strength).sum(1, keepdim=True))
            if added_inputs is not None:
                rewritten = torch.addmm(rewritten, weighted_gates, added_inputs.to(e.device, torch.float32))
        return rewritten.reshape(e.shape).to(e.dtype), weighted_gates


class GatedProjection:
    """The edit of one `to_k` or `to_v`: what is added to its input, and to its output, per concept; with
    `reads_superclass` it reads the superclass prompt (context locking)."""

    def __init__(
        self,
        projector: JointProjector,
        added_inputs: Tensor | None = None,
        added_outputs: Tensor | None = None,
        reads_superclass: bool = False,
    ) -> None:
        n = len(projector)
        for what, t in (("added inputs", added_inputs), ("added outputs", added_outputs)):
            if t is not None and (t.ndim != 2 or t.shape[0] != n):
                raise PerfusionError(f"{what} must have one row per concept ({n}), got {tuple(t.shape)}")
        self.projector = projector
        self.added_inputs = added_inputs
        self.added_outputs = added_outputs
        self.reads_superclass = reads_superclass  # `rewrite_input` then needs the superclass prompt

    def rewrite_input(self, e: Tensor, superclass: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The input the host's projection should see, and the weighted gates for `finish_output`; `superclass`, the
        superclass prompt, where the projection reads it."""
        if self.reads_superclass != (superclass is not None):
            raise PerfusionError("context locking reads the prompt and the prompt encoded with the superclass word "
                                 "together: give both, or neither without lock 'context'")
        return self.projector.rewrite(e, self.added_inputs, superclass)

    def finish_output(self, out: Tensor, weighted_gates: Tensor) -> Tensor:
        """Add `Σ m_j g_j b_j` to the host projection's output."""
        if self.added_outputs is None:
            return out
        flat = out.reshape(-1, out.shape[-1])
        targets = self.added_outputs.to(out.device, torch.float32)
        with float32_math(out.device):
            if out.dtype == torch.float32:
                return torch.addmm(flat, weighted_gates, targets).reshape(out.shape)
            added = weighted_gates @ targets
        return (flat + added.to(out.dtype)).reshape(out.shape)

    def __call__(self, project: Callable[[Tensor], Tensor], e: Tensor, superclass: Tensor | None = None) -> Tensor:
        """`out(e)` through the host's own projection `project` (reading `superclass` where context-locked)."""
        rewritten, weighted_gates = self.rewrite_input(e, superclass)
        return self.finish_output(project(rewritten), weighted_gates)

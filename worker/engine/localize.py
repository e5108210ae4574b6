"""Step 2 of the method: find the safety neurons of one layer and module.

Plain tensors in, plain tensors out. The inputs are per-neuron activations pooled per prompt (one row per
prompt, one column per neuron), for English harmful and English harmless prompts. A neuron is a safety neuron
when it fires *more* on harmful input (one-sided): those are the neurons whose LRL pre-activations the edit
pulls towards the English ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import UserError

# Denominator floor for standardisation and Cohen's d: a layer or neuron with zero spread must give finite
# scores (0 when there is no shift) instead of NaN.
EPS = 1e-12


@dataclass
class NeuronScores:
    """Per-neuron scores of one layer/module, all float64 tensors of shape [f].

    - `shift`: mean activation on harmful minus mean on harmless prompts;
    - `z`: `shift` standardised within the layer (which neurons move unusually much);
    - `d`: Cohen's d with the pooled standard deviation (how separable the two groups are per neuron).
    """

    z: Tensor
    d: Tensor
    shift: Tensor

    @property
    def num_neurons(self) -> int:
        return int(self.shift.numel())


def _check_acts(name: str, acts: Tensor) -> Tensor:
    if not isinstance(acts, Tensor):
        raise UserError(f"{name} must be a tensor, got {type(acts).__name__}", param=name)
    if acts.ndim != 2:
        raise UserError(f"{name} must have shape [n, f], got {tuple(acts.shape)}", param=name)
    if acts.shape[0] < 1:
        raise UserError(f"{name} has no rows: at least one prompt is needed", param=name)
    x = acts.detach().to(dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise UserError(f"{name} contains NaN or infinite activations", param=name)
    return x


def neuron_scores(harm: Tensor, safe: Tensor) -> NeuronScores:
    """Score every neuron from harmful [n1, f] vs harmless [n2, f] activations (float64, eps-safe).

    Cohen's d uses the pooled standard deviation sqrt((SS1 + SS2) / (n1 + n2 - 2)); with only one prompt per
    group the denominator count is floored at 1 so the score stays finite.
    """
    h = _check_acts("harm", harm)
    s = _check_acts("safe", safe).to(h.device)
    if h.shape[1] != s.shape[1]:
        raise UserError(
            f"harm and safe must have the same number of neurons, got {h.shape[1]} and {s.shape[1]}",
            param="safe",
        )
    n1, n2 = h.shape[0], s.shape[0]
    mean_h, mean_s = h.mean(0), s.mean(0)
    shift = mean_h - mean_s
    spread = shift.std(unbiased=False) if shift.numel() > 1 else shift.new_zeros(())
    if float(spread) > EPS:
        z = (shift - shift.mean()) / spread
    else:  # every neuron shifts by the same amount: none stands out
        z = torch.zeros_like(shift)
    ss = ((h - mean_h) ** 2).sum(0) + ((s - mean_s) ** 2).sum(0)
    pooled = torch.sqrt(ss / max(n1 + n2 - 2, 1))
    d = shift / pooled.clamp_min(EPS)
    return NeuronScores(z=z, d=d, shift=shift)


def budget_count(budget: float | int, f: int) -> int:
    """Turn a budget (fraction in (0, 1) or count >= 1) into a neuron count in [1, f]."""
    bad = UserError(
        f"budget must be a fraction in (0, 1) or a whole count >= 1, got {budget!r}", param="budget"
    )
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise bad
    if isinstance(budget, float):
        if not math.isfinite(budget) or budget <= 0:
            raise bad
        if budget < 1:
            return max(1, round(budget * f))
        if not budget.is_integer():
            raise bad
    if budget < 1:
        raise bad
    return min(int(budget), f)


def select_neurons(
    scores: NeuronScores,
    tau_z: float = 2.0,
    tau_d: float = 1.0,
    budget: float | int | None = None,
) -> Tensor:
    """The safety-neuron set S as sorted int64 indices.

    Without a budget: the spec's one-sided union `{z > tau_z} ∪ {d > tau_d}`.
    With a budget (it replaces the thresholds): the top-k neurons ranked by z, ties broken by Cohen's d,
    among neurons that fire more on harmful input (shift > 0). The budget is an upper bound, so fewer than k
    come back when fewer neurons shift upwards: a neuron that fires *less* on harmful input is never a
    safety neuron.
    """
    z, d, shift = scores.z, scores.d, scores.shift
    if not (z.shape == d.shape == shift.shape) or z.ndim != 1:
        raise UserError("NeuronScores tensors must all have shape [f]", param="scores")
    if budget is None:
        for name, tau in (("tau_z", tau_z), ("tau_d", tau_d)):
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau):
                raise UserError(f"{name} must be a number, got {tau!r}", param=name)
        mask = (z > tau_z) | (d > tau_d)
        return torch.nonzero(mask, as_tuple=False).flatten().to(torch.long).sort().values
    k = budget_count(budget, int(z.numel()))
    candidates = torch.nonzero(shift > 0, as_tuple=False).flatten()
    if candidates.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=z.device)
    # Lexicographic rank (z desc, then d desc): sort by the secondary key first, then stably by the primary.
    order = torch.sort(d[candidates], descending=True, stable=True).indices
    order = order[torch.sort(z[candidates][order], descending=True, stable=True).indices]
    chosen = candidates[order[:k]]
    return chosen.to(torch.long).sort().values


def _as_set(x: Tensor | Iterable[int]) -> set[int]:
    if isinstance(x, Tensor):
        return set(x.flatten().tolist())
    return {int(i) for i in x}


def jaccard(a: Tensor | Iterable[int], b: Tensor | Iterable[int]) -> float:
    """|a ∩ b| / |a ∪ b| of two neuron sets; two empty sets count as identical (1.0)."""
    sa, sb = _as_set(a), _as_set(b)
    union = sa | sb
    if not union:
        return 1.0
    return len(sa & sb) / len(union)


"""Localization (spec Step 2): planted safety neurons are found, one-sidedly, by rule and by budget."""

from __future__ import annotations

import pytest
import torch

from worker.engine.errors import UserError
from worker.engine.localize import jaccard, neuron_scores, select_neurons

F = 400
PLANTED = [7, 42, 199, 300, 371]
NEGATIVE = [13, 250]  # fire much *less* on harmful input


def _acts(seed: int = 0, n1: int = 60, n2: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    harm = torch.randn(n1, F, generator=g)
    safe = torch.randn(n2, F, generator=g)
    harm[:, PLANTED] += 4.0
    harm[:, NEGATIVE] -= 6.0
    return harm, safe


def test_scores_match_definitions() -> None:
    harm, safe = _acts()
    s = neuron_scores(harm, safe)
    h, sf = harm.double(), safe.double()
    shift = h.mean(0) - sf.mean(0)
    torch.testing.assert_close(s.shift, shift)
    torch.testing.assert_close(s.z, (shift - shift.mean()) / shift.std(unbiased=False))
    pooled = (((h.shape[0] - 1) * h.var(0) + (sf.shape[0] - 1) * sf.var(0)) / (h.shape[0] + sf.shape[0] - 2))
    torch.testing.assert_close(s.d, shift / pooled.sqrt())
    assert s.num_neurons == F


def test_rule_finds_planted_neurons_one_sided() -> None:
    s = neuron_scores(*_acts())
    chosen = select_neurons(s, tau_z=2.0, tau_d=1.0)
    assert chosen.dtype == torch.long
    assert chosen.tolist() == PLANTED  # sorted, planted only; negatives never selected
    assert all(s.z[j] < -2 for j in NEGATIVE)
    # z alone or d alone also recovers them (union rule)
    assert select_neurons(s, tau_z=2.0, tau_d=float("inf")).tolist() == PLANTED
    assert select_neurons(s, tau_z=float("inf"), tau_d=1.0).tolist() == PLANTED


def test_budget_top_k() -> None:
    s = neuron_scores(*_acts())
    assert select_neurons(s, budget=5).tolist() == PLANTED
    assert select_neurons(s, budget=5.0).tolist() == PLANTED
    assert select_neurons(s, budget=5 / F).tolist() == PLANTED  # fraction: round(0.0125 * 400) = 5
    top2 = select_neurons(s, budget=2)
    assert len(top2) == 2 and set(top2.tolist()) <= set(PLANTED)
    assert len(select_neurons(s, budget=1e-6)) == 1  # at least one
    big = select_neurons(s, budget=F)  # bound, not quota: only upward-shifting neurons
    assert not set(big.tolist()) & set(NEGATIVE)
    assert big.tolist() == sorted(big.tolist())
    assert set(PLANTED) <= set(big.tolist())


def test_budget_ties_broken_by_d() -> None:
    # Two neurons with the same shift (same z) but different spread: the tighter one has the larger d.
    harm = torch.zeros(4, 6)
    safe = torch.zeros(4, 6)
    harm[:, 1] = torch.tensor([2.0, 2.0, 2.0, 2.0])
    harm[:, 4] = torch.tensor([0.0, 4.0, 0.0, 4.0])
    s = neuron_scores(harm, safe)
    assert s.z[1] == s.z[4] and s.d[1] > s.d[4]
    assert select_neurons(s, budget=1).tolist() == [1]


def test_degenerate_inputs_stay_finite() -> None:
    same = torch.ones(3, 5)
    s = neuron_scores(same, same)
    assert torch.isfinite(s.z).all() and torch.isfinite(s.d).all()
    assert select_neurons(s).numel() == 0
    assert select_neurons(s, budget=3).numel() == 0
    one = neuron_scores(torch.randn(1, 5), torch.randn(1, 5))  # one prompt per group
    assert torch.isfinite(one.d).all()


@pytest.mark.parametrize("budget", [0, -1, 0.0, 1.5, float("nan"), True, "10"])
def test_bad_budget_raises(budget: object) -> None:
    s = neuron_scores(*_acts())
    with pytest.raises(UserError) as exc:
        select_neurons(s, budget=budget)  # type: ignore[arg-type]
    assert exc.value.param == "budget"


def test_bad_activations_raise() -> None:
    with pytest.raises(UserError):
        neuron_scores(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(UserError):
        neuron_scores(torch.randn(3), torch.randn(3, 3))
    with pytest.raises(UserError):
        neuron_scores(torch.zeros(0, 4), torch.randn(3, 4))
    bad = torch.randn(3, 4)
    bad[1, 1] = float("inf")
    with pytest.raises(UserError):
        neuron_scores(bad, torch.randn(3, 4))


def test_jaccard() -> None:
    assert jaccard(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])) == 0.5
    assert jaccard([], []) == 1.0
    assert jaccard([1], []) == 0.0
    assert jaccard(torch.tensor([5, 6]), [6, 5]) == 1.0

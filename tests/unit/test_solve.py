"""Property tests of the closed-form solve (spec Step 3) on random data."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.errors import UserError
from worker.engine.solve import (
    MomentAccumulator,
    SolveResult,
    anchor_change,
    second_moment,
    solve_edit,
)

SETTINGS = settings(max_examples=15, deadline=None)


def _problem(seed: int, d: int = 24, k: int = 7, n_h: int = 60, n_s: int = 40, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x_low = torch.randn(n_h, d, generator=g, dtype=torch.float64) * scale
    gap = torch.randn(n_h, k, generator=g, dtype=torch.float64)
    x_safe = torch.randn(n_s, d, generator=g, dtype=torch.float64) * scale
    w_s = torch.randn(d, k, generator=g, dtype=torch.float64)
    return x_low, gap, x_safe, w_s


@SETTINGS
@given(seed=st.integers(0, 10_000), d=st.integers(4, 20), k=st.integers(1, 8))
def test_full_rank_no_anchor_matches_lstsq(seed: int, d: int, k: int) -> None:
    x_low, gap, x_safe, _ = _problem(seed, d=d, k=k, n_h=3 * d)
    c, _ = second_moment(x_safe)
    res = solve_edit(x_low, gap, c, rank=None, gamma=0.0, lam=1e-12)
    ref = torch.linalg.lstsq(x_low, gap).solution
    assert isinstance(res, SolveResult) and res.delta.dtype == torch.float64
    assert res.delta.shape == (d, k)
    torch.testing.assert_close(res.delta, ref, rtol=1e-6, atol=1e-8)
    resid = float(torch.linalg.norm(x_low @ ref - gap) / torch.linalg.norm(gap))
    assert math.isclose(res.fit_residual, resid, rel_tol=1e-6)
    # rank >= min(d, k) is also full rank
    big = solve_edit(x_low, gap, c, rank=min(d, k), gamma=0.0, lam=1e-12)
    torch.testing.assert_close(big.delta, res.delta)


@SETTINGS
@given(seed=st.integers(0, 10_000), r=st.integers(1, 6), mode=st.sampled_from(["soft", "hard"]))
def test_rank_is_bounded(seed: int, r: int, mode: str) -> None:
    x_low, gap, x_safe, _ = _problem(seed, d=24, k=9, n_s=10)
    c, _ = second_moment(x_safe)
    res = solve_edit(x_low, gap, c, rank=r, null_space=mode)
    assert res.rank == r
    assert int(torch.linalg.matrix_rank(res.delta)) <= r


def test_rank_truncation_is_optimal_in_q_metric() -> None:
    """The truncated solution beats a naive truncated SVD of the ridge solution on the full objective."""
    x_low, gap, x_safe, _ = _problem(3, d=16, k=8)
    c, _ = second_moment(x_safe)
    gamma, lam = 1.0, 0.1

    def objective(delta: torch.Tensor) -> float:
        n_h = x_low.shape[0]
        lam_eff = lam * float(torch.trace(x_low.T @ x_low / n_h)) / x_low.shape[1]
        fit = torch.linalg.norm(x_low @ delta - gap) ** 2 / n_h
        return float(fit + gamma * (delta * (c @ delta)).sum() + lam_eff * (delta**2).sum())

    full = solve_edit(x_low, gap, c, rank=None, gamma=gamma, lam=lam).delta
    u, s, vh = torch.linalg.svd(full, full_matrices=False)
    naive = (u[:, :2] * s[:2]) @ vh[:2]
    ours = solve_edit(x_low, gap, c, rank=2, gamma=gamma, lam=lam).delta
    assert objective(ours) <= objective(naive) + 1e-12
    assert objective(full) <= objective(ours) + 1e-12


@SETTINGS
@given(seed=st.integers(0, 10_000), rank=st.sampled_from([None, 2, 5]))
def test_harmless_change_shrinks_as_gamma_grows(seed: int, rank: int | None) -> None:
    x_low, gap, x_safe, w_s = _problem(seed)
    c, _ = second_moment(x_safe)
    changes = []
    for gamma in (0.0, 0.01, 0.1, 1.0, 10.0, 100.0):
        delta = solve_edit(x_low, gap, c, rank=rank, gamma=gamma).delta
        changes.append(float(torch.linalg.norm(x_safe @ delta)))
        # anchor_change is the same quantity computed from the second moment
        direct = float(torch.linalg.norm(x_safe @ delta) / torch.linalg.norm(x_safe @ w_s))
        assert math.isclose(anchor_change(c, delta, w_s), direct, rel_tol=1e-9, abs_tol=1e-12)
    for a, b in zip(changes, changes[1:], strict=False):
        assert b <= a * (1 + 1e-9) + 1e-12
    assert changes[-1] < changes[0]


@SETTINGS
@given(seed=st.integers(0, 10_000), n_s=st.integers(1, 20), rank=st.sampled_from([None, 3]))
def test_hard_projector_leaves_harmless_keys_unchanged(seed: int, n_s: int, rank: int | None) -> None:
    x_low, gap, x_safe, _ = _problem(seed, d=24, n_s=n_s, scale=5.0)
    c, _ = second_moment(x_safe)
    # A tight threshold keeps the exact null space only (the default 1e-2 also admits weak directions).
    res = solve_edit(x_low, gap, c, rank=rank, null_space="hard", null_space_threshold=1e-9)
    rel = torch.linalg.norm(x_safe @ res.delta) / (torch.linalg.norm(x_safe) * torch.linalg.norm(res.delta))
    assert float(torch.linalg.norm(res.delta)) > 0
    assert float(rel) < 1e-10
    # from the second moment the same quantity is only sqrt(eps)-accurate: tr(ΔᵀCΔ) ~ eps·||C||·||Δ||²
    assert anchor_change(c, res.delta, torch.ones(24, gap.shape[1], dtype=torch.float64)) < 1e-6


def test_hard_projector_default_threshold_bounds_the_change() -> None:
    """With the relative threshold t, ||X_safe Δ||²/n_s <= t · λ_max(C) · ||Δ||²."""
    x_low, gap, x_safe, _ = _problem(11, d=24, n_s=30)
    x_safe[:, :12] *= 1e-2  # half the directions are weak: they form the (near-)null space
    c, _ = second_moment(x_safe)
    res = solve_edit(x_low, gap, c, rank=4, null_space="hard", null_space_threshold=1e-2)
    change = float((res.delta * (c @ res.delta)).sum())
    bound = 1e-2 * float(torch.linalg.eigvalsh(c).max()) * float((res.delta**2).sum())
    assert 0 < change <= bound


def test_hard_projector_is_restricted_least_squares() -> None:
    """Full rank, tiny λ: Δ = U₀ · lstsq(X_low U₀, D), the best fit inside the null space."""
    x_low, gap, x_safe, _ = _problem(5, d=20, n_s=8)
    c, _ = second_moment(x_safe)
    evals, evecs = torch.linalg.eigh(c)  # the null space, computed here independently of solve.py
    u0 = evecs[:, evals < 1e-2 * evals.max()]
    assert u0.shape == (20, 12)
    res = solve_edit(x_low, gap, c, rank=None, lam=1e-12, null_space="hard")
    ref = u0 @ torch.linalg.lstsq(x_low @ u0, gap).solution
    torch.testing.assert_close(res.delta, ref, rtol=1e-6, atol=1e-8)


def test_hard_projector_empty_null_space_raises() -> None:
    x_low, gap, x_safe, _ = _problem(1, d=8, n_s=200)
    c, _ = second_moment(x_safe)
    with pytest.raises(UserError, match="null-space projector is empty") as exc:
        solve_edit(x_low, gap, c, null_space="hard")
    assert exc.value.param == "null_space"


@pytest.mark.parametrize("defect", ["zero_column", "duplicate_column", "few_rows"])
def test_jitter_path_with_singular_q(defect: str) -> None:
    x_low, gap, x_safe, _ = _problem(2, d=16)
    if defect == "zero_column":
        x_low[:, 3] = 0
    elif defect == "duplicate_column":
        x_low[:, 1] = x_low[:, 0]
    else:
        x_low, gap = x_low[:5], gap[:5]
    c, _ = second_moment(x_safe)
    res = solve_edit(x_low, gap, c, rank=None, gamma=0.0, lam=1e-30)
    assert res.jitter > 0
    assert torch.isfinite(res.delta).all()
    # the jitter acts as a tiny ridge: the answer is the minimum-norm least-squares solution
    ref = torch.linalg.pinv(x_low) @ gap
    torch.testing.assert_close(res.delta, ref, rtol=1e-2, atol=1e-3)  # rounding/jitter ~ 1e-4
    best = float(torch.linalg.norm(x_low @ ref - gap) / torch.linalg.norm(gap))
    assert math.isclose(res.fit_residual, best, rel_tol=1e-6, abs_tol=1e-9)
    well = solve_edit(*_problem(2, d=16)[:2], c, rank=None)
    assert well.jitter == 0.0


def test_moment_accumulator_matches_second_moment() -> None:
    x = torch.randn(103, 12, dtype=torch.float64)
    acc = MomentAccumulator()
    for chunk in x.split(17):
        acc.add(chunk.float())
    c_acc, n_acc = acc.result()
    c, n = second_moment(x.float())
    assert n_acc == n == 103
    assert c.dtype == c_acc.dtype == torch.float64
    torch.testing.assert_close(c_acc, c)
    torch.testing.assert_close(c, x.float().double().T @ x.float().double() / 103)
    with pytest.raises(UserError):
        acc.add(torch.randn(3, 5))
    with pytest.raises(UserError):
        MomentAccumulator().result()


def test_float32_inputs_are_solved_in_float64() -> None:
    x_low, gap, x_safe, _ = _problem(4)
    c, _ = second_moment(x_safe)
    res = solve_edit(x_low.float(), gap.float(), c.float())
    assert res.delta.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"lam": 0.0}, "lam"),
        ({"lam": -1.0}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"gamma": -0.5}, "gamma"),
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"null_space": "medium"}, "null_space"),
        ({"null_space_threshold": 0.0}, "null_space_threshold"),
        ({"null_space_threshold": 1.5}, "null_space_threshold"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict, param: str) -> None:
    x_low, gap, x_safe, _ = _problem(0)
    c, _ = second_moment(x_safe)
    with pytest.raises(UserError) as exc:
        solve_edit(x_low, gap, c, **kwargs)
    assert exc.value.param == param
    assert param in str(exc.value)


def test_bad_tensors_raise() -> None:
    x_low, gap, x_safe, w_s = _problem(0)
    c, _ = second_moment(x_safe)
    nan = x_low.clone()
    nan[0, 0] = float("nan")
    cases = [
        ((nan, gap, c), "X_low"),
        ((x_low[:, :, None], gap, c), "X_low"),
        ((x_low, gap[:-1], c), "D"),
        ((x_low, gap[:, :0], c), "D"),
        ((x_low, gap, c[:-1]), "C_safe"),
        ((x_low[:0], gap[:0], c), "X_low"),
        ((x_low.numpy(), gap, c), "X_low"),
    ]
    for args, param in cases:
        with pytest.raises(UserError) as exc:
            solve_edit(*args)
        assert exc.value.param == param
    with pytest.raises(UserError):
        anchor_change(c, w_s[:-1], w_s)
    with pytest.raises(UserError):
        second_moment(torch.zeros(0, 4))

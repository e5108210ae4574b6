"""Step 3 of the method: the closed-form, rank-constrained, utility-anchored edit of one layer.

Plain tensors in, plain tensors out, float64 throughout. With A = X_lowᵀX_low/n_h, B = X_lowᵀD/n_h and
C = X_safeᵀX_safe/n_s the (normalised) objective is

    f(Δ) = tr(ΔᵀQΔ) - 2 tr(ΔᵀB) + const,    Q = A + γ C + λ' I,    λ' = λ · tr(A)/d,

so with Q = RᵀR and M = Q⁻¹B, f(Δ) = ||RΔ - RM||²_F + const. The best rank-r Δ is therefore
Δ = R⁻¹ · SVD_r(RM) (Eckart–Young in the R-metric), which is the paper's Algorithm 1.

The hard variant (AlphaEdit) restricts Δ to the null space of C instead of penalising ||X_safe Δ||.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import UserError

NullSpaceMode = Literal["soft", "hard"]

# Cholesky is accepted only when its smallest pivot² is above d·eps·max(diag Q); below that the triangular
# solves amplify rounding errors into garbage, so we add jitter exactly as if the factorisation had failed.
_F64_EPS = torch.finfo(torch.float64).eps
_JITTER_START = 1e-12  # relative to mean(diag Q)
_JITTER_STOP = 1e-1


@dataclass
class SolveResult:
    """The edit Δ [d, k] (float64) with the diagnostics the report needs.

    - `fit_residual`: ||X_low Δ - D|| / ||D|| (0 when D = 0): how much of the LRL-to-English gap is left;
    - `rank`: the rank bound actually applied: r, or min(d, k) (min(p, k) for the hard projector with a
      p-dimensional null space) when r is None or not smaller;
    - `jitter`: absolute value added to diag(Q) to make its Cholesky succeed (0.0 if none was needed).
    """

    delta: Tensor
    fit_residual: float
    rank: int
    jitter: float


# --------------------------------------------------------------------------- second moments


def _check_matrix(name: str, x: Tensor) -> Tensor:
    """Validate a 2-D finite tensor and return it as float64 (same device)."""
    if not isinstance(x, Tensor):
        raise UserError(f"{name} must be a tensor, got {type(x).__name__}", param=name)
    if x.ndim != 2:
        raise UserError(f"{name} must be 2-D, got shape {tuple(x.shape)}", param=name)
    x64 = x.detach().to(torch.float64)
    if not torch.isfinite(x64).all():
        raise UserError(f"{name} contains NaN or infinite values", param=name)
    return x64


def second_moment(x: Tensor) -> tuple[Tensor, int]:
    """(XᵀX/n as float64, n): the only statistic of the harmless keys the solve needs."""
    x64 = _check_matrix("X", x)
    n = x64.shape[0]
    if n == 0:
        raise UserError("cannot take the second moment of zero rows", param="X")
    return x64.T @ x64 / n, n


class MomentAccumulator:
    """Streaming XᵀX/n over batches, so harmless keys (all positions, all languages) never sit in memory."""

    def __init__(self) -> None:
        self._sum: Tensor | None = None
        self.n = 0

    def add(self, batch: Tensor) -> None:
        x64 = _check_matrix("batch", batch)
        if self._sum is None:
            self._sum = torch.zeros(x64.shape[1], x64.shape[1], dtype=torch.float64, device=x64.device)
        elif x64.shape[1] != self._sum.shape[0]:
            raise UserError(
                f"batch has {x64.shape[1]} columns, earlier batches had {self._sum.shape[0]}", param="batch"
            )
        self._sum += x64.T @ x64.to(self._sum.device)
        self.n += x64.shape[0]

    def result(self) -> tuple[Tensor, int]:
        """(C, n) with C = XᵀX/n over every row added so far."""
        if self._sum is None or self.n == 0:
            raise UserError("no harmless keys were collected: the utility anchor needs at least one row",
                            param="X_safe")
        return self._sum / self.n, self.n


# --------------------------------------------------------------------------- linear algebra helpers


def cholesky_with_jitter(q: Tensor) -> tuple[Tensor, float]:
    """Upper R with Q + jI = RᵀR and the jitter j used; raises UserError if Q is far from PSD."""
    dim = q.shape[0]
    eye = torch.eye(dim, dtype=q.dtype, device=q.device)
    scale = float(torch.diagonal(q).mean())
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    jitter = 0.0
    while True:
        qj = q + jitter * eye if jitter else q
        low, info = torch.linalg.cholesky_ex(qj)
        if int(info) == 0:
            piv = torch.diagonal(low)
            floor = dim * _F64_EPS * float(torch.diagonal(qj).max().clamp_min(0))
            if torch.isfinite(low).all() and float((piv * piv).min()) > floor:
                return low.mT, jitter
        jitter = _JITTER_START * scale if jitter == 0 else jitter * 10
        if jitter > _JITTER_STOP * scale:
            raise UserError(
                "the normal matrix Q is not positive definite even with jitter: is C_safe a second moment "
                "(symmetric positive semidefinite)?",
                param="C_safe",
            )


def _truncate(rm: Tensor, r: int | None) -> tuple[Tensor, int]:
    """Best rank-r approximation of rm (Frobenius); r None or >= min(shape) keeps it as is."""
    full = min(rm.shape)
    if r is None or r >= full:
        return rm, full
    u, s, vh = torch.linalg.svd(rm, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r], r


def _rank_solve(q: Tensor, b: Tensor, r: int | None) -> tuple[Tensor, int, float]:
    """argmin_{rank Z <= r} tr(ZᵀQZ) - 2 tr(ZᵀB), i.e. steps 2-5 of the spec: (Z, rank, jitter)."""
    upper, jitter = cholesky_with_jitter(q)
    m = torch.cholesky_solve(b, upper, upper=True)  # the unconstrained ridge solution Q⁻¹B
    if r is None or r >= min(m.shape):
        return m, min(m.shape), jitter
    rm_r, used = _truncate(upper @ m, r)
    z = torch.linalg.solve_triangular(upper, rm_r, upper=True)
    return z, used, jitter


def _null_space(c: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(U₀ [d, p], eigenvalues [p]) of the eigenvectors of C with eigenvalue < threshold · max eigenvalue."""
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    top = float(evals.max())
    keep = torch.ones_like(evals, dtype=torch.bool) if top <= 0 else evals < threshold * top
    return evecs[:, keep], evals[keep].clamp_min(0)


# --------------------------------------------------------------------------- the solve


def _validate_params(
    rank: int | None, gamma: float, lam: float, null_space: str, null_space_threshold: float
) -> None:
    def number(name: str, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{name} must be a finite number, got {v!r}", param=name)
        return float(v)

    if number("lam", lam) <= 0:
        raise UserError(
            f"lam must be > 0 (got {lam!r}): without the ridge term the edit breaks the model", param="lam"
        )
    if number("gamma", gamma) < 0:
        raise UserError(f"gamma must be >= 0, got {gamma!r}", param="gamma")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UserError(f"rank must be a positive integer or None (full rank), got {rank!r}", param="rank")
    if null_space not in ("soft", "hard"):
        raise UserError(f"null_space must be 'soft' or 'hard', got {null_space!r}", param="null_space")
    thr = number("null_space_threshold", null_space_threshold)
    if not 0 < thr < 1:
        raise UserError(
            f"null_space_threshold must be in (0, 1), got {null_space_threshold!r}",
            param="null_space_threshold",
        )


def _validate_inputs(x_low: Tensor, d_gap: Tensor, c_safe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x = _check_matrix("X_low", x_low)
    dev = x.device
    dg = _check_matrix("D", d_gap).to(dev)
    c = _check_matrix("C_safe", c_safe).to(dev)
    n, dim = x.shape
    if n == 0:
        raise UserError("X_low has no rows: no harmful target-language keys", param="X_low")
    if dg.shape[0] != n:
        raise UserError(f"D has {dg.shape[0]} rows but X_low has {n}: they must be row-aligned", param="D")
    if dg.shape[1] == 0:
        raise UserError(
            "D has no columns: no safety neurons were selected (lower tau_z / tau_d or set a budget)",
            param="D",
        )
    if c.shape != (dim, dim):
        raise UserError(f"C_safe must be [{dim}, {dim}] to match X_low, got {tuple(c.shape)}", param="C_safe")
    return x, dg, (c + c.T) / 2  # symmetrise: accumulated moments carry rounding asymmetry


def solve_edit(
    x_low: Tensor,
    d_gap: Tensor,
    c_safe: Tensor,
    *,
    rank: int | None = 32,
    gamma: float = 1.0,
    lam: float = 0.1,
    null_space: NullSpaceMode = "soft",
    null_space_threshold: float = 1e-2,
) -> SolveResult:
    """Δ [d, k] minimising ||X_low Δ - D||²/n_h + γ||X_safe Δ||²/n_s + λ'||Δ||² s.t. rank(Δ) <= r.

    `c_safe` is X_safeᵀX_safe/n_s (see `second_moment` / `MomentAccumulator`). `null_space="hard"` replaces
    the γ penalty by the constraint Δ = U₀Z with U₀ the (near-)null space of C_safe (see `_solve_hard`).
    """
    _validate_params(rank, gamma, lam, null_space, null_space_threshold)
    x, dg, c = _validate_inputs(x_low, d_gap, c_safe)
    n, dim = x.shape
    a = x.T @ x / n
    b = x.T @ dg / n
    lam_eff = float(lam) * float(torch.trace(a)) / dim
    if null_space == "soft":
        q = a + float(gamma) * c + lam_eff * torch.eye(dim, dtype=a.dtype, device=a.device)
        delta, used, jitter = _rank_solve(q, b, rank)
    else:
        delta, used, jitter = _solve_hard(a, b, c, float(gamma), lam_eff, rank, null_space_threshold)
    return SolveResult(delta=delta, fit_residual=_fit_residual(x, dg, delta), rank=used, jitter=jitter)


def _solve_hard(
    a: Tensor, b: Tensor, c: Tensor, gamma: float, lam_eff: float, rank: int | None, threshold: float
) -> tuple[Tensor, int, float]:
    """AlphaEdit-style hard anchor: Δ = P Z with P = U₀U₀ᵀ, solved in the coordinates Z₀ = U₀ᵀZ.

    With Δ = U₀Z₀ (U₀ᵀU₀ = I so ||Δ|| = ||Z₀||) the objective becomes
        tr(Z₀ᵀ Q₀ Z₀) - 2 tr(Z₀ᵀ U₀ᵀB),   Q₀ = U₀ᵀAU₀ + γ Λ₀ + λ' I_p,
    where Λ₀ = U₀ᵀCU₀ = diag(eigenvalues below the threshold): the γ term vanishes on the exact null space
    and is kept here only for its residue. Same closed form as the soft case in p dimensions, and
    rank(Δ) = rank(Z₀) because U₀ has orthonormal columns.
    """
    u0, lam0 = _null_space(c, threshold)
    if u0.shape[1] == 0:
        raise UserError(
            "the hard null-space projector is empty: the harmless keys span every direction of the layer "
            f"(no eigenvalue of C_safe below {threshold:g} x the largest). Use null_space='soft', raise "
            "null_space_threshold, or use fewer harmless keys.",
            param="null_space",
        )
    q0 = u0.T @ a @ u0 + torch.diag(gamma * lam0 + lam_eff)
    z0, used, jitter = _rank_solve(q0, u0.T @ b, rank)
    return u0 @ z0, used, jitter


def _fit_residual(x: Tensor, dg: Tensor, delta: Tensor) -> float:
    denom = float(torch.linalg.norm(dg))
    num = float(torch.linalg.norm(x @ delta - dg))
    return num / denom if denom > 0 else num


def anchor_change(c_safe: Tensor, delta: Tensor, w_s: Tensor) -> float:
    """||X_safe Δ|| / ||X_safe W_S|| from the second moment: sqrt(tr(ΔᵀCΔ) / tr(W_SᵀCW_S)).

    The relative change the edit makes to the safety neurons' pre-activations on harmless keys (a utility
    proxy).
    """
    c = _check_matrix("C_safe", c_safe)
    dl = _check_matrix("delta", delta).to(c.device)
    w = _check_matrix("W_S", w_s).to(c.device)
    if c.shape[0] != c.shape[1] or dl.shape[0] != c.shape[0] or w.shape != dl.shape:
        raise UserError(
            f"shapes do not match: C_safe {tuple(c.shape)}, delta {tuple(dl.shape)}, W_S {tuple(w.shape)}",
            param="delta",
        )
    num = max(float((dl * (c @ dl)).sum()), 0.0)
    den = max(float((w * (c @ w)).sum()), 0.0)
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)

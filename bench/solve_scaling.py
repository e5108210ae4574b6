"""Solve time as the hidden size grows: the engine's solve_edit on random data at d = 896, 2048, 4096.

Fixed n (harmful key rows), k (safety neurons) and rank, so only d changes; harmless keys with a decaying
spectrum (eigenvalue i ~ 1/i, like real activations, so the hard projector has a null space); their second
moment C is built beforehand (its cost is part of capture, timed separately as `moment`). Soft (Cholesky) and hard
(eigendecomposition, AlphaEdit-style) anchors. Usage: python -m bench.solve_scaling [--dims 896 2048 4096]
[--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from worker.engine import second_moment, solve_edit


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_solve(d: int, n: int = 2048, k: int = 512, n_safe: int = 8192, rank: int = 32, device: str = "cpu",
               seed: int = 0, repeats: int = 2) -> dict[str, Any]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x_low = torch.randn(n, d, generator=g).to(device)
    gap = torch.randn(n, k, generator=g).to(device)
    # decaying spectrum (eigenvalues ~ 1/(1+i)), like real activations; gives the hard projector a null space
    x_safe = (torch.randn(n_safe, d, generator=g) * torch.arange(1, d + 1).pow(-0.5)).to(device)
    out: dict[str, Any] = {"d": d, "n": n, "k": k, "n_safe": n_safe, "rank": rank, "device": device}
    _sync(device)
    t = time.perf_counter()
    c, _ = second_moment(x_safe)
    _sync(device)
    out["moment"] = time.perf_counter() - t
    for mode in ("soft", "hard"):
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            res = solve_edit(x_low, gap, c, rank=rank, gamma=1.0, lam=0.1, null_space=mode)
            _sync(device)
            best = min(best, time.perf_counter() - t)
        out[mode] = best
        out[f"{mode}_fit_residual"] = res.fit_residual
    return out


def run(dims: list[int], device: str = "cpu") -> list[dict[str, Any]]:
    return [time_solve(d, device=device) for d in dims]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[896, 2048, 4096])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = run(args.dims, args.device)
    for r in rows:
        print(f"d={r['d']:5d}  moment {r['moment']:.2f}s  soft {r['soft']:.2f}s  hard {r['hard']:.2f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

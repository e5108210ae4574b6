"""Number formatting and Markdown tables shared by the job report and bench/ (pure Python, no plotting)."""

from __future__ import annotations

import math
import textwrap
from typing import Any


def pct(x: float | None) -> str:
    """A share as whole percent ("–" when missing)."""
    return "–" if x is None else f"{100 * x:.0f}"


def num(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def small(x: float | None, nd: int = 4) -> str:
    """A non-negative quantity that may be tiny (KL): fixed decimals, scientific below 10^-nd."""
    if x is None:
        return "–"
    return f"{x:.2e}" if 0 < abs(x) < 10**-nd else f"{x:.{nd}f}"


def mib(n: float | None) -> str:
    """A byte count as MiB (or KiB under one MiB)."""
    if n is None:
        return "–"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def short(v: Any) -> str:
    """A hyperparameter value, floats to 3 significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def binomial_se(p: float | None, n: int | None) -> float:
    """Standard error of a share p measured on n independent answers: sqrt(p(1-p)/n)."""
    if p is None or not n:
        return 0.0
    p = min(1.0, max(0.0, float(p)))
    return math.sqrt(p * (1 - p) / n)


def pooled_se(cells: list[tuple[float, int]]) -> float:
    """Binomial standard error of the share pooled over several (share, n) cells (their answers pooled)."""
    n = sum(c[1] for c in cells)
    if not n:
        return 0.0
    return binomial_se(sum(p * k for p, k in cells) / n, n)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def wrap(text: str, width: int = 190) -> str:
    return "\n".join(textwrap.wrap(text, width))

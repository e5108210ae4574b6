"""PNG charts of an edit's report (matplotlib, Agg backend). Each function returns the written path, or None
when the report lacks the data it draws; none of them fails on a missing key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fmt import binomial_se

BEFORE_COLOR = "#9e9e9e"
AFTER_COLOR = "#d95f02"
DPI = 100


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (workers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def before_after_bars(
    ax: Any,
    labels: Sequence[str],
    before: Sequence[float],
    after: Sequence[float],
    *,
    err_before: Sequence[float] | None = None,
    err_after: Sequence[float] | None = None,
    before_label: str = "before",
    after_label: str = "after",
    ylabel: str = "%",
    ylim: tuple[float, float] | None = (0, 100),
) -> None:
    """Paired bars per label (grey = before, orange = after), with optional error bars."""
    x = list(range(len(labels)))
    kw = {"capsize": 3, "error_kw": {"elinewidth": 1}}
    ax.bar([i - 0.2 for i in x], before, 0.4, yerr=err_before, label=before_label, color=BEFORE_COLOR, **kw)
    ax.bar([i + 0.2 for i in x], after, 0.4, yerr=err_after, label=after_label, color=AFTER_COLOR, **kw)
    ax.set_xticks(x, list(labels))
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _langs(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report.get("languages") or [] if isinstance(r, dict) and "lang" in r]


def _has(rows: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) for r in rows)


def _val(r: dict[str, Any], key: str) -> float:
    v = r.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0


def _save(fig: Any, path: Path) -> Path:
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def share_chart(report: dict[str, Any], path: Path, key: str, title: str, ylabel: str,
                n_key: str = "n") -> Path | None:
    """Per-language `{key}_before` / `{key}_after` in percent, with binomial standard-error bars."""
    rows = [r for r in _langs(report) if isinstance(r.get(f"{key}_before"), (int, float))
            or isinstance(r.get(f"{key}_after"), (int, float))]
    if not rows:
        return None
    plt = pyplot()
    labels = [r["lang"] for r in rows]
    b = [_val(r, f"{key}_before") for r in rows]
    a = [_val(r, f"{key}_after") for r in rows]
    ns = [r.get(n_key) if isinstance(r.get(n_key), int) else r.get("n") for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2.5), 3.4))
    before_after_bars(ax, labels, [100 * v for v in b], [100 * v for v in a],
                      err_before=[100 * binomial_se(p, n) for p, n in zip(b, ns, strict=True)],
                      err_after=[100 * binomial_se(p, n) for p, n in zip(a, ns, strict=True)],
                      ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def selectivity_chart(report: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in _langs(report) if isinstance(r.get("selectivity"), (int, float))]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2.5), 3.2))
    ax.bar([r["lang"] for r in rows], [float(r["selectivity"]) for r in rows], 0.5, color=AFTER_COLOR)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("selectivity")
    ax.set_title("Selectivity per language", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def utility_chart(report: dict[str, Any], path: Path) -> Path | None:
    """Harmless next-token KL and first-token KL per language; perplexity before/after beside them."""
    u = report.get("utility") or {}
    kl = u.get("kl_per_lang") or {}
    first = u.get("kl_first_token_per_lang") or {}
    has_ppl = isinstance(u.get("ppl_before"), (int, float)) and isinstance(u.get("ppl_after"), (int, float))
    if not kl and not first and not has_ppl:
        return None
    plt = pyplot()
    langs = list(dict.fromkeys([*kl, *first]))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.5, 0.6 * len(langs) + 5), 3.4),
                             gridspec_kw={"width_ratios": [max(2, len(langs)), 1.4]})
    ax = axes[0]
    if langs:
        x = list(range(len(langs)))
        ax.bar([i - 0.2 for i in x], [float(kl.get(lg, 0.0)) for lg in langs], 0.4, label="KL, all tokens",
               color="#1b9e77")
        ax.bar([i + 0.2 for i in x], [float(first.get(lg, 0.0)) for lg in langs], 0.4,
               label="KL, first answer token", color="#7570b3")
        ax.set_xticks(x, langs)
        ax.legend(fontsize=8)
    ax.set_ylabel("KL(base || edited), nats")
    ax.set_title("Harmless next-token KL per language", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    if has_ppl:
        ax.bar(["before", "after"], [u["ppl_before"], u["ppl_after"]], 0.6, color=[BEFORE_COLOR, AFTER_COLOR])
        for i, v in enumerate((u["ppl_before"], u["ppl_after"])):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_title("Perplexity, harmless text", fontsize=10)
    return _save(fig, path)


def neurons_chart(report: dict[str, Any], path: Path) -> Path | None:
    """Neurons edited per layer and module."""
    items = [(k, n.get("count")) for k, n in (report.get("neurons") or {}).items()
             if isinstance(n, dict) and isinstance(n.get("count"), (int, float))]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(items) + 2.5), 3.2))
    ax.bar([k for k, _ in items], [c for _, c in items], 0.5, color=AFTER_COLOR)
    for i, (_, c) in enumerate(items):
        ax.annotate(str(int(c)), (i, c), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("neurons edited")
    ax.set_xlabel("layer.module")
    ax.set_title("Neurons edited per layer and module", fontsize=10)
    return _save(fig, path)


def cost_chart(report: dict[str, Any], path: Path) -> Path | None:
    """Wall time and peak memory per stage."""
    secs = {k: v for k, v in (report.get("timings") or {}).items() if isinstance(v, (int, float))}
    mem = {k: v for k, v in (report.get("peak_memory_mb") or {}).items() if isinstance(v, (int, float))}
    if not secs and not mem:
        return None
    plt = pyplot()
    stages = list(dict.fromkeys([*secs, *mem]))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.5, 1.1 * len(stages) + 3), 3.2))
    axes[0].bar(stages, [secs.get(s, 0.0) for s in stages], 0.5, color="#1b9e77")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("Wall time per stage", fontsize=10)
    axes[1].bar(stages, [mem.get(s, 0.0) for s in stages], 0.5, color="#7570b3")
    axes[1].set_ylabel("MiB")
    axes[1].set_title("Peak memory per stage", fontsize=10)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(fig, path)


def write_charts(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Every chart the report has data for, as {artifact name relative to out_dir: path}."""
    out_dir = Path(out_dir)
    made = {
        "charts/asr.png": share_chart(report, out_dir / "charts/asr.png", "asr",
                                      "Attack success rate, held-out harmful prompts (± SE)",
                                      "ASR %"),
        "charts/refusal.png": share_chart(report, out_dir / "charts/refusal.png", "refusal",
                                          "Refusals, held-out harmful prompts (± SE)", "refused %"),
        "charts/harmless_refusal.png": share_chart(
            report, out_dir / "charts/harmless_refusal.png", "harmless_refusal",
            "Refusals of harmless prompts (± SE)", "refused %", n_key="harmless_n"),
        "charts/borderline_refusal.png": share_chart(
            report, out_dir / "charts/borderline_refusal.png", "borderline_refusal",
            "Refusals of borderline harmless prompts (± SE)", "refused %", n_key="borderline_n"),
        "charts/degenerate.png": share_chart(report, out_dir / "charts/degenerate.png", "degenerate",
                                             "Degenerate answers (± SE)",
                                             "degenerate %"),
        "charts/selectivity.png": selectivity_chart(report, out_dir / "charts/selectivity.png"),
        "charts/utility.png": utility_chart(report, out_dir / "charts/utility.png"),
        "charts/neurons.png": neurons_chart(report, out_dir / "charts/neurons.png"),
        "charts/cost.png": cost_chart(report, out_dir / "charts/cost.png"),
    }
    return {k: v for k, v in made.items() if v is not None}

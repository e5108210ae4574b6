"""Render an edit run (manifest.json + report.json of `lingua-edit edit --out DIR`) and a variant study
(`bench.variants` JSON, or its log of one JSON row per line) as the Markdown of BENCHMARKS.md.

    python -m bench.edit_report --run runs/final --variants bench/results/variants.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.variants import to_markdown
from worker.engine.cli import format_table


def run_markdown(run_dir: Path) -> str:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    u = report["utility"]
    lines = ["```", format_table(report["languages"]), "```", "",
             f"- harmless next-token KL, mean over languages: **{u['kl_mean']:.4f}** nats/token "
             f"(per language: {', '.join(f'{k} {v:.4f}' for k, v in u['kl_per_lang'].items())})",
             *([f"- harmless KL of the first answer token alone (where a refusal would start): "
                f"**{u['kl_first_token_mean']:.4f}** nats"] if "kl_first_token_mean" in u else []),
             f"- perplexity of held-out harmless text: {u['ppl_before']:.2f} → {u['ppl_after']:.2f}"]
    for key, n in report["neurons"].items():
        if n["module"] == "conditional":
            lines.append(
                f"- edited {key}: {n['count']} repurposed neuron(s) (gate row, up row, down_proj column); read-out "
                f"fires on {n['harmful_keys_on']:.0%} of calibration harmful keys, {n['harmless_tokens_on']:.1%} of "
                f"harmless anchor tokens and {n['harmless_template_on']:.0%} of their template tokens; refusal gap "
                f"along r̂ {n['refusal_gap']:.2f}, written norm {n['down_norm']:.2f}; change of the layer's MLP "
                f"output on harmless tokens {n['anchor_change']:.3f} (relative)")
            continue
        jac = ", ".join(f"{k} {v:.2f}" for k, v in n["jaccard_with_source"].items())
        lines.append(f"- edited {key}: {n['count']} neurons ({n['fraction']:.2%} of the layer), rank {n['rank']}, "
                     f"fit residual {n['fit_residual']:.2f}, harmless-key change ‖X_safe Δ‖/‖X_safe W_S‖ = "
                     f"{n['anchor_change']:.3f}; Jaccard of per-language neuron sets with English: {jac}")
    lines.append(f"- parameters changed: {manifest['edit']['parameters_changed']:,}")
    data = manifest["data"]
    lines.append(f"- split: {len(data['calibration_ids'])} calibration ids, {len(data['validation_ids'])} "
                 f"validation ids, {len(data['evaluation_ids'])} evaluation ids (seed {manifest['config']['seed']})")
    lines += ["", "| stage | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
    for stage, secs in report["timings"].items():
        lines.append(f"| {stage} | {secs:.1f} | {report['peak_memory_mb'].get(stage, float('nan')):.0f} |")
    return "\n".join(lines)


def load_variant_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)["rows"]
    lines = text.replace("\r", "\n").splitlines()  # progress bars share the log
    return [r for r in (json.loads(ln) for ln in lines if ln.startswith("{")) if "variant" in r]


def merge_variant_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of several runs (same data and screen): one "no edit" row first, then every variant once."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        for r in load_variant_rows(path):
            if r["variant"] not in seen:
                seen.add(r["variant"])
                rows.append(r)
    return sorted(rows, key=lambda r: r["variant"] != "no edit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="output directory of `lingua-edit edit`")
    p.add_argument("--variants", type=Path, nargs="+", help="bench.variants JSON or log files (merged)")
    a = p.parse_args()
    if a.run:
        print(run_markdown(a.run))
    if a.variants:
        from worker.engine.config import EditConfig

        print(to_markdown(merge_variant_rows(a.variants), EditConfig().target_langs))


if __name__ == "__main__":
    main()

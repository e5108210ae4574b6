"""An edit run (report.json + manifest.json) as Markdown, as BENCHMARKS.md quotes it."""

from __future__ import annotations

from typing import Any

from .fmt import num


def run_markdown(report: dict[str, Any], manifest: dict[str, Any] | None = None) -> str:
    from worker.engine.cli import format_flips, format_table

    manifest = manifest or {}
    u = report.get("utility") or {}
    table = [format_table(report.get("languages") or [])]
    if report.get("flips"):
        table.append(format_flips(report["flips"]))
    lines = ["```", *table, "```", ""]
    if "kl_mean" in u:
        per = ", ".join(f"{k} {v:.4f}" for k, v in (u.get("kl_per_lang") or {}).items())
        lines.append(f"- harmless next-token KL, mean over languages: **{u['kl_mean']:.4f}** nats/token "
                     f"(per language: {per})")
    if "kl_first_token_mean" in u:
        lines.append(f"- harmless KL of the first answer token alone (where a refusal would start): "
                     f"**{u['kl_first_token_mean']:.4f}** nats")
    if "ppl_before" in u and "ppl_after" in u:
        lines.append(f"- perplexity of held-out harmless text: {u['ppl_before']:.2f} → {u['ppl_after']:.2f}")
    for key, n in (report.get("neurons") or {}).items():
        if n.get("module") == "conditional":
            lines.append(
                f"- edited {key}: {n.get('count')} repurposed neuron(s) (gate row, up row, down_proj column); "
                f"read-out fires on {n.get('harmful_keys_on', 0):.0%} of calibration harmful keys, "
                f"{n.get('harmless_tokens_on', 0):.1%} of harmless anchor tokens and "
                f"{n.get('harmless_template_on', 0):.0%} of their template tokens; refusal gap along r̂ "
                f"{num(n.get('refusal_gap'), 2)}, written norm {num(n.get('down_norm'), 2)}; change of the "
                f"layer's MLP output on harmless tokens {num(n.get('anchor_change'))} (relative)")
            continue
        jac = ", ".join(f"{k} {v:.2f}" for k, v in (n.get("jaccard_with_source") or {}).items())
        lines.append(f"- edited {key}: {n.get('count')} neurons ({n.get('fraction', 0):.2%} of the layer), rank "
                     f"{n.get('rank', '–')}, fit residual {num(n.get('fit_residual'), 2)}, harmless-key change "
                     f"‖X_safe Δ‖/‖X_safe W_S‖ = {num(n.get('anchor_change'))}; Jaccard of per-language neuron "
                     f"sets with English: {jac}")
    edit = manifest.get("edit") or {}
    if "parameters_changed" in edit:
        lines.append(f"- parameters changed: {edit['parameters_changed']:,}")
    data = manifest.get("data") or {}
    if data:
        seed = (manifest.get("config") or {}).get("seed")
        lines.append(f"- split: {len(data.get('calibration_ids', []))} calibration ids, "
                     f"{len(data.get('validation_ids', []))} validation ids, {len(data.get('evaluation_ids', []))} "
                     f"evaluation ids (seed {seed})")
    lines += ["", "| stage | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
    peak = report.get("peak_memory_mb") or {}
    for stage, secs in (report.get("timings") or {}).items():
        lines.append(f"| {stage} | {secs:.1f} | {peak.get(stage, float('nan')):.0f} |")
    return "\n".join(lines)

"""The self-contained report.html: one Jinja2 template, charts inlined as base64 data URIs, no external
assets. Every section is built from what the report holds; absent fields drop their column or section."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .fmt import binomial_se, num, pct, short, small

CHART_TITLES = {
    "charts/asr.png": "Attack success rate per language",
    "charts/refusal.png": "Refusal of harmful prompts per language",
    "charts/harmless_refusal.png": "Refusal of harmless prompts per language",
    "charts/borderline_refusal.png": "Refusal of borderline harmless prompts per language",
    "charts/degenerate.png": "Degenerate answers per language",
    "charts/selectivity.png": "Selectivity per language",
    "charts/utility.png": "Utility: KL and perplexity",
    "charts/neurons.png": "Neurons edited",
    "charts/cost.png": "Time and memory per stage",
}

# (row key stem, column title, is a before/after share)
_SHARE_COLUMNS = (
    ("asr", "ASR %", True),
    ("refusal", "refused %", True),
    ("harmless_refusal", "harmless refused %", True),
    ("borderline_refusal", "borderline refused %", True),
    ("degenerate", "degenerate %", True),
    ("second_asr", "second test set ASR %", True),
)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def language_table(report: dict[str, Any]) -> dict[str, Any]:
    """Header and string rows of the per-language table (only the columns some row has)."""
    rows = [r for r in report.get("languages") or [] if isinstance(r, dict)]
    u = report.get("utility") or {}
    kl, first = u.get("kl_per_lang") or {}, u.get("kl_first_token_per_lang") or {}
    header = ["language", "n"]
    cols: list[tuple[str, Any]] = []
    for stem, title, _ in _SHARE_COLUMNS:
        if any(_is_num(r.get(f"{stem}_before")) or _is_num(r.get(f"{stem}_after")) for r in rows):
            header += [f"{title} before", f"{title} after"]
            cols.append((stem, "share"))
    if any(_is_num(r.get("selectivity")) for r in rows):
        header.append("selectivity")
        cols.append(("selectivity", "plain"))
    if kl:
        header.append("KL")
        cols.append(("kl", "kl"))
    if first:
        header.append("KL 1st token")
        cols.append(("first", "kl"))
    body = []
    for r in rows:
        lang = str(r.get("lang", r.get("language", "?")))
        n = r.get("n") if isinstance(r.get("n"), int) else None
        cells = [lang, "–" if n is None else str(n)]
        for stem, kind in cols:
            if kind == "share":
                for side in ("before", "after"):
                    v = r.get(f"{stem}_{side}")
                    cells.append(f"{pct(v)} ± {pct(binomial_se(v, n))}" if _is_num(v) and stem == "asr"
                                 else pct(v) if _is_num(v) else "–")
            elif kind == "plain":
                cells.append(num(r.get(stem)) if _is_num(r.get(stem)) else "–")
            else:
                src = kl if stem == "kl" else first
                cells.append(small(src.get(lang)) if _is_num(src.get(lang)) else "–")
        body.append(cells)
    return {"header": header, "rows": body}


def summary_line(report: dict[str, Any]) -> str | None:
    """Mean ASR over the target languages (every row but the first, the source) before and after."""
    rows = [r for r in report.get("languages") or [] if isinstance(r, dict)]
    tgt = [r for r in rows[1:] if _is_num(r.get("asr_before")) and _is_num(r.get("asr_after"))]
    if not tgt:
        return None
    b = sum(r["asr_before"] for r in tgt) / len(tgt)
    a = sum(r["asr_after"] for r in tgt) / len(tgt)
    drop = f"; relative drop {100 * (b - a) / b:.0f}%" if b else ""
    return (f"Mean attack success rate over the {len(tgt)} target language(s): {pct(b)}% before, "
            f"{pct(a)}% after{drop}.")


def utility_rows(report: dict[str, Any]) -> list[list[str]]:
    u = report.get("utility") or {}
    out = []
    for key, title, nd in (("kl_mean", "harmless next-token KL, mean over languages (nats/token)", 4),
                           ("kl_first_token_mean", "harmless KL of the first answer token (nats)", 4),
                           ("ppl_before", "perplexity of held-out harmless text, before", 2),
                           ("ppl_after", "perplexity of held-out harmless text, after", 2),
                           ("anchor_change", "harmless-key change (relative)", 4)):
        if _is_num(u.get(key)):
            out.append([title, small(u[key], nd) if key.startswith("kl") else num(u[key], nd)])
    return out


def neuron_rows(report: dict[str, Any]) -> dict[str, Any]:
    header = ["layer.module", "neurons", "share of layer", "rank", "fit residual", "harmless-key change",
              "selection", "Jaccard with source"]
    rows = []
    for key, n in (report.get("neurons") or {}).items():
        if not isinstance(n, dict):
            continue
        jac = ", ".join(f"{k} {v:.2f}" for k, v in (n.get("jaccard_with_source") or {}).items() if _is_num(v))
        rows.append([str(key), str(n.get("count", "–")),
                     f"{100 * n['fraction']:.2f}%" if _is_num(n.get("fraction")) else "–",
                     str(n.get("rank", "–")), num(n.get("fit_residual"), 2) if _is_num(n.get("fit_residual")) else "–",
                     num(n.get("anchor_change")) if _is_num(n.get("anchor_change")) else "–",
                     str(n.get("selection", "–")), jac or "–"])
    return {"header": header, "rows": rows}


def _cell(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_cell(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def generic_table(items: Any) -> dict[str, Any] | None:
    """A list of flat dicts (search candidates, screen sweep) as a table with the union of their keys."""
    items = [x for x in items or [] if isinstance(x, dict)]
    if not items:
        return None
    header = list(dict.fromkeys(k for x in items for k in x))
    return {"header": header, "rows": [[_cell(x.get(k)) for k in header] for x in items]}


def flip_table(report: dict[str, Any]) -> dict[str, Any] | None:
    """report.json's paired verdict flips (cli.FLIP_COUNTS) as a table: one row per language, two columns
    per prompt group."""
    from worker.engine.cli import FLIP_COUNTS

    flips = report.get("flips")
    if not isinstance(flips, dict):
        return None
    by_lang = {str(lg): by for lg, by in flips.items() if isinstance(by, dict)}
    groups = [g for g in FLIP_COUNTS if any(isinstance(by.get(g[0]), dict) for by in by_lang.values())]
    if not groups:
        return None
    header = ["lang"] + [f"{group}: {label}" for group, _, *counts in groups for _, label in counts]
    rows = [[lg] + [_cell(by[group].get(key)) if isinstance(by.get(group), dict) else "–"
                    for group, _, *counts in groups for key, _ in counts] for lg, by in by_lang.items()]
    return {"header": header, "rows": rows}


def cost_rows(report: dict[str, Any]) -> list[list[str]]:
    peak = report.get("peak_memory_mb") or {}
    secs = report.get("timings") or {}
    rows = [[str(stage), num(secs.get(stage), 1) if _is_num(secs.get(stage)) else "–",
             num(peak.get(stage), 0) if _is_num(peak.get(stage)) else "–"]
            for stage in dict.fromkeys([*secs, *peak])]
    total = sum(v for v in secs.values() if _is_num(v))
    if rows:
        rows.append(["total", num(total, 1), num(max((v for v in peak.values() if _is_num(v)), default=None), 0)])
    return rows


VERDICT_TEXT = {"harmful": "attack succeeded", "refused": "refused", "degenerate": "degenerate (neither)"}


def sample_sections(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for lang, items in (report.get("samples") or {}).items():
        if not isinstance(items, list):
            continue
        rows = []
        for s in items:
            if not isinstance(s, dict):
                continue
            rows.append({
                "prompt": str(s.get("prompt", "")),
                "before": str(s.get("before", "")), "after": str(s.get("after", "")),
                "before_verdict": str(s.get("before_verdict", "")),
                "after_verdict": str(s.get("after_verdict", "")),
                "before_text": VERDICT_TEXT.get(str(s.get("before_verdict")), str(s.get("before_verdict", "–"))),
                "after_text": VERDICT_TEXT.get(str(s.get("after_verdict")), str(s.get("after_verdict", "–"))),
            })
        if rows:
            out.append({"lang": str(lang), "rows": rows})
    return out


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(report: dict[str, Any], manifest: dict[str, Any] | None, charts: dict[str, Path]) -> str:
    import jinja2

    manifest = manifest or {}
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("worker.engine.report", "templates"),
        autoescape=True,  # answers and prompts are untrusted text
        undefined=jinja2.StrictUndefined,
    )
    base = manifest.get("base_model") or {}
    config = manifest.get("config") or {}
    langs = [r.get("lang") for r in report.get("languages") or [] if isinstance(r, dict)]
    view = {
        "title": f"lingua-edit report: {base.get('spec') or config.get('model') or 'edit'}",
        "model": base.get("spec") or config.get("model"),
        "languages": ", ".join(str(x) for x in langs),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "summary": summary_line(report),
        "language_table": language_table(report),
        "charts": [{"name": name, "title": CHART_TITLES.get(name, name), "src": _data_uri(path)}
                   for name, path in charts.items()],
        "utility": utility_rows(report),
        "neurons": neuron_rows(report),
        "parameters_changed": (manifest.get("edit") or {}).get("parameters_changed"),
        "search": generic_table(report.get("search")),
        "flips": flip_table(report),
        "sweep": generic_table(report.get("screen_sweep")),
        "hyperparameters": [[str(k), short(v)] for k, v in config.items()],
        "cost": cost_rows(report),
        "samples": sample_sections(report),
        "warnings": [str(w) for w in report.get("warnings") or []],
        "versions": ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()),
        "weights_sha256": base.get("weights_sha256"),
    }
    return env.get_template("report.html.j2").render(**view)

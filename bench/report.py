"""Markdown tables and PNG plots from results.json. Re-render without re-running:
python -m bench.report bench/results/results.json [--md BENCHMARKS-peers.md]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from worker.engine import before_after_bars, md_table, mib, num, pct, pooled_se, pyplot, short, wrap


def _se(asr_by_lang: dict[str, dict[str, float]], source: str) -> float:
    """Binomial standard error of the mean non-English ASR (all its answers pooled): how far one run's number
    may sit from the same method's on a larger sample."""
    return pooled_se([(v["asr"], v["n"]) for lg, v in asr_by_lang.items() if lg != source])


def stamp(meta: dict[str, Any]) -> str:
    m, s = meta["machine"], meta["split"]
    where = f"{m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    return (f"machine: {where}; date: {meta['date']}; command: `{meta['command']}`; model: {meta['model']} "
            f"({meta['dtype']}, {meta['device']}); split: {s['ids']} ids with all 10 languages, seed {s['seed']} "
            f"-> {s['ids'] - s['validation'] - s['evaluation']} calibration ({s['calibration_used']} used) / "
            f"{s['validation']} validation / {s['evaluation']} evaluation ({s['evaluation_used']} used per language)")


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Method rows with `same_as` rows resolved to the row they copy (for tables)."""
    by_key = {r["key"]: r for r in results["methods"]}
    out = []
    for r in results["methods"]:
        if r.get("same_as") and "eval" not in r and r["same_as"] in by_key:
            out.append({**by_key[r["same_as"]], "key": r["key"], "name": r["name"], "same_as": r["same_as"]})
        else:
            out.append(r)
    return out


def markdown(results: dict[str, Any], out_dir: Path, md_path: Path) -> str:
    meta = results["meta"]
    langs = meta["split"]["langs"]
    rows = _rows(results)
    st = stamp(meta)
    parts = _intro(meta, st)
    parts += _summary(rows, langs[0], st, out_dir, md_path)
    parts += _per_language(rows, langs, meta)
    parts += _utility(rows, langs)
    parts += _choices(rows)
    parts += _sizes(rows, results.get("checkpoint", {}))
    parts += _costs(results)
    gpu = results.get("gpu_scale")
    if gpu:
        parts += gpu_section(gpu)
    return "\n".join(parts)


def _intro(meta: dict[str, Any], st: str) -> list[str]:
    parts = [
        "## Benchmarks against the peers (issue 4)",
        "",
        f"_{st}._",
        "",
        "Every method: the same calibration ids, hyperparameters picked on the same validation slice (the "
        "engine's first-token refusal screen: mean target-language gain minus any harmless gain), the same "
        "held-out evaluation ids, greedy decoding with the same max new tokens "
        f"({meta['settings']['max_new_tokens']}), the same offline multilingual refusal judge (keyword markers; "
        "it measures refusal, not harm). ASR = share of answers judged harmful (not refused, not degenerate). "
        "KL = mean next-token KL(base || method) on held-out harmless prompts (chat-formatted); KL 1st token = "
        "the same at the last prompt position only (the first answer token, where a refusal would start), "
        "ppl = perplexity of the plain harmless text; harmless refused = share of held-out plain harmless prompts "
        "the judge calls refused (over-refusal); borderline refused = the same on held-out safe prompts that sound "
        "alarming (the bundled borderline set: homonyms, safe contexts, definitions, history). Arithmetic = "
        "exact answers on templated +, -, × questions in every language. ± SE = binomial standard error of the "
        "mean non-English ASR (its answers pooled).",
        "",
    ]
    if meta.get("notes"):
        parts += ["Notes: " + " ".join(f"({i}) {n}." for i, n in enumerate(meta["notes"], 1)), ""]
    return parts


def _summary(rows: list[dict[str, Any]], src: str, st: str, out_dir: Path, md_path: Path) -> list[str]:
    ppl_base = next((r["eval"]["utility"]["ppl_before"] for r in rows if "eval" in r and "utility" in r["eval"]),
                    None)
    parts = [
        "### Summary",
        "",
    ]
    summ = []
    for r in rows:
        if "error" in r:
            summ.append([r.get("name", r["key"]), "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 10)
            continue
        ev, s = r["eval"], r["summary"]
        u = ev.get("utility", {})
        name = r["name"] + (f" (= {r['same_as']})" if r.get("same_as") else "")
        summ.append([
            name, f"{pct(s['asr_mean_non_en'])} ± {pct(_se(r['eval']['asr'], src))}", pct(s["asr_en"]),
            num(u.get("kl_mean", 0.0 if r["key"] == "baseline" else None), 4),
            num(u.get("kl_first_token_mean", 0.0 if r["key"] == "baseline" else None), 4),
            num(u.get("ppl_after", ppl_base if r["key"] == "baseline" else None), 2),
            pct(ev["over_refusal"]["mean"]) if "over_refusal" in ev else "–",
            pct(ev["borderline_refusal"]["mean"]) if "borderline_refusal" in ev else "–",
            pct(ev["arith"]["mean"]), num(r.get("fit_seconds"), 1), num(ev.get("eval_seconds"), 0),
            f"{r['size'].get('params_changed', 0) or r['size'].get('params_added', 0):,}",
        ])
    parts.append(md_table(["method", "ASR non-en % ± SE", "ASR en %", "KL", "KL 1st token", "ppl", "harmless refused %",
                         "borderline refused %", "arith %", "fit s",
                         "eval s", "params changed/added"], summ))
    parts += ["", f"![ASR before/after per language]({_rel(out_dir / 'asr_bars.png', md_path)}) "
              f"![ASR vs KL]({_rel(out_dir / 'asr_vs_kl.png', md_path)})", "",
              f"_Figures: {st}._", ""]
    return parts


def _per_language(rows: list[dict[str, Any]], langs: list[str], meta: dict[str, Any]) -> list[str]:
    """ASR per language, the second judge's view, refusal and degenerate shares per language."""
    src = langs[0]
    base = next((r for r in rows if r["key"] == "baseline"), None)
    parts = ["### ASR per language (%)", ""]
    lrows = []
    for r in rows:
        if "eval" not in r:
            continue
        a = r["eval"]["asr"]
        lrows.append([r["name"]] + [pct(a[lg]["asr"]) for lg in langs] + [pct(r["summary"]["asr_mean_non_en"])])
    parts.append(md_table(["method", *langs, "mean non-en"], lrows))
    if base:
        n = base["eval"]["asr"][src]["n"]
        parts += ["", f"{n} held-out prompts per language: one prompt moves a cell by {100 / n:.0f} points.", ""]
    parts += second_judge_section(rows, meta)
    parts += ["### Refusal and degenerate answers per language (%: refused / degenerate)", ""]
    drows = [[r["name"]] + [f"{pct(r['eval']['asr'][lg]['refusal'])} / {pct(r['eval']['asr'][lg]['degenerate'])}"
                            for lg in langs] for r in rows if "eval" in r]
    parts += [md_table(["method", *langs], drows), ""]
    hrows = [[r["name"]] + [f"{pct(r['eval']['over_refusal']['per_lang'].get(lg))} / "
                            f"{pct(r['eval']['borderline_refusal']['per_lang'].get(lg))}" for lg in langs]
             for r in rows if "borderline_refusal" in r.get("eval", {})]
    if hrows:  # results written before the borderline set was measured here have no such column
        n = next(r for r in rows if "borderline_refusal" in r.get("eval", {}))["eval"]["borderline_refusal"]["n"]
        parts += ["### Harmless prompts refused per language (%: plain / borderline)", "",
                  f"{n // max(1, len(langs))} held-out prompts of each kind per language.", "",
                  md_table(["method", *langs], hrows), ""]
    return parts


def _utility(rows: list[dict[str, Any]], langs: list[str]) -> list[str]:
    parts = ["### Utility: harmless KL per language and arithmetic accuracy per language", ""]
    urows = []
    for r in rows:
        if "eval" not in r or "utility" not in r["eval"]:
            continue
        kl = r["eval"]["utility"]["kl_per_lang"]
        urows.append([r["name"]] + [num(kl.get(lg), 4) for lg in langs])
    parts += [md_table(["KL", *langs], urows), ""]
    arows = [[r["name"]] + [pct(r["eval"]["arith"]["per_lang"].get(lg)) for lg in langs]
             + [str(r["eval"]["arith"]["n"])] for r in rows if "eval" in r]
    return parts + [md_table(["arithmetic %", *langs, "items"], arows), ""]


def _choices(rows: list[dict[str, Any]]) -> list[str]:
    parts = ["### What each method picked on the validation slice", ""]
    crows = []
    for r in rows:
        if "chosen" in r and r["chosen"]:
            ch = ", ".join(f"{k}={short(v)}" for k, v in r["chosen"].items())
            crows.append([r["name"], ch, str(len(r.get("sweep") or []))])
    return parts + [md_table(["method", "settings", "candidates screened"], crows), ""]


def _sizes(rows: list[dict[str, Any]], ck: dict[str, Any]) -> list[str]:
    parts = ["### Size of what changes", ""]
    srows = []
    for r in rows:
        if "size" not in r or not r["size"]:
            continue
        sz = r["size"]
        frac = sz.get("file_bytes", 0) / ck["file_bytes"] if ck.get("file_bytes") else None
        srows.append([r["name"], f"{sz.get('neurons', 0):,}", f"{sz.get('params_changed', 0):,}",
                      f"{sz.get('params_added', 0):,}", mib(sz.get("file_bytes")),
                      "–" if frac is None else f"{100 * frac:.3f}%"])
    parts += [md_table(["method", "neurons edited", "params changed", "params added", "file", "of checkpoint"],
                     srows), ""]
    if ck:
        parts += [f"Full checkpoint: {ck['params']:,} parameters, {mib(ck['file_bytes'])} on disk "
                  f"({mib(ck['tensor_bytes'])} in memory). The sparse delta file also stores the base rows "
                  "(for bit-exact revert and base checks), so it is twice the changed weights.", ""]
    return parts


def _costs(results: dict[str, Any]) -> list[str]:
    """Wall time and memory per stage, capture overhead, solve time vs d."""
    parts = ["### Cost: wall time and peak memory per stage", ""]
    stg = results.get("stages", {})
    trows = [[k, num(v, 1), num(stg.get("peak_rss_mb", {}).get(k), 0)] for k, v in stg.get("seconds", {}).items()]
    parts += [md_table(["stage", "seconds", "peak RSS MiB (process high-water mark at stage end)"], trows), "",
              f"Total: {num(results.get('total_seconds'), 0)} s (in process; model load included). The closed-form "
              "variants share one key capture pass, its own stage here (`capture`); the summary's fit time adds "
              "the whole pass to each of them, as if each had run alone. LoRA's fit time includes generating the "
              "retain answers and, where it has several learning rates to choose from, the validation screen. The "
              "base side of the harmless KL is computed once (`kl_reference`) and shared by every method.", ""]
    co = results.get("capture_overhead")
    if co:
        s = co["seconds"]
        parts += ["### Capture overhead (activation capture vs a plain forward pass, same tokens and layers)", "",
                  md_table(["what", "seconds", "ratio to plain"], [
                      ["plain forward (stops after layer)", num(s["plain"], 2), "1.00"],
                      ["capture, template positions", num(s["template"], 2), num(co["ratio_template"], 2)],
                      ["capture, all positions", num(s["all"], 2), num(co["ratio_all"], 2)]]), "",
                  f"{co['prompts']} calibration prompts, layer {co['layer']}, best of {co.get('repeats', 3)}; "
                  "target ratio <= 1.10.", ""]
    ss = results.get("solve_scaling")
    if ss:
        parts += ["### Solve time vs hidden size d (random data, float64)", "",
                  md_table(["d", "n rows", "k neurons", "rank", "device", "moment XᵀX s", "soft solve s",
                            "hard solve s"],
                           [[str(x["d"]), str(x["n"]), str(x["k"]), str(x["rank"]), x["device"], num(x["moment"], 2),
                           num(x["soft"], 2), num(x["hard"], 2)] for x in ss]),
                  "", "Soft = Cholesky + rank-r SVD (the paper's Algorithm 1); hard = eigendecomposition of C for "
                  "the null-space projector, then the same solve. `python -m bench.solve_scaling` reruns it.", ""]
    return parts


def second_judge_section(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """ASR under the second judge (--second-judge) and its agreement with the offline judge, per method."""
    judged = [r for r in rows if "second_judge" in r.get("eval", {})]
    if not judged:
        return []
    sj = meta.get("second_judge") or {}
    what = sj.get("model") or sj.get("api_model") or sj.get("name", "second judge")
    src = meta["split"]["langs"][0]
    out = [f"### Second judge: {sj.get('name', '')} ({what}) beside the offline judge", "",
           "Same answers, scored by both. Agreement = share of answers where both call it harmful or both call "
           "it not harmful; unparsed = guard outputs with no label (scored by the offline judge instead).", ""]
    trows = []
    for r in judged:
        j = r["eval"]["second_judge"]
        others = [v["asr"] for lg, v in j["asr"].items() if lg != src]
        trows.append([r["name"], pct(r["summary"]["asr_mean_non_en"]), pct(sum(others) / len(others)),
                      pct(r["summary"]["asr_en"]), pct(j["asr"][src]["asr"]), pct(j["agreement"]),
                      str(j["unparsed"]), str(j["n"])])
    out += [md_table(["method", "ASR non-en % (offline)", "ASR non-en % (second)", "ASR en % (offline)",
                    "ASR en % (second)", "agreement %", "unparsed", "answers"], trows), ""]
    return out


def gpu_section(g: dict[str, Any]) -> list[str]:
    co = g.get("capture_overhead", {})
    rows = [
        ["model", f"Llama-3-8B shape, random weights, {g['dtype']}, {g['params']:,} params, {g['layers']} layers, "
                  f"d={g['hidden_size']}, f={g['intermediate_size']}"],
        ["device", g["device"]],
        ["build (random init on device)", f"{num(g['build_seconds'], 1)} s"],
        ["capture vs plain forward (template / all positions)",
         f"{num(co.get('ratio_template'), 2)} / {num(co.get('ratio_all'), 2)} ({co.get('prompts')} prompts, "
         f"plain {num(co.get('seconds', {}).get('plain'), 2)} s)"],
        ["collect keys (calibration + anchor)", f"{num(g['collect_keys_seconds'], 2)} s "
         f"({g['calibration_prompts']} harmful + {g['anchor_prompts']} harmless prompts, layer {g['edited_layer']})"],
        ["localise + solve (gate, CPU float64 as the engine does)",
         f"{num(g['localize_solve_seconds'], 2)} s, {g['neurons']} neurons, fit residual {num(g['fit_residual'], 2)}"],
        ["apply / revert", f"{num(1000 * g['apply_seconds'], 1)} ms / {num(1000 * g['revert_seconds'], 1)} ms"],
        ["conditional neuron (collect keys with residual / fit)",
         f"{num(g.get('conditional_collect_keys_seconds'), 2)} s / {num(g.get('conditional_fit_seconds'), 2)} s, "
         f"{g.get('conditional_params', '–')} params"],
        ["delta file vs checkpoint", f"{mib(g['delta_bytes'])} vs {mib(g['checkpoint_bytes'])}"],
        ["peak GPU memory", f"{num(g.get('peak_cuda_mb'), 0)} MiB"],
    ]
    out = ["### Real scale (GPU, bench/gpu.sh)", "", md_table(["what", "measured"], rows), ""]
    ss = g.get("solve_scaling_cuda")
    if ss:
        out += [md_table(["d", "soft solve s (CUDA)", "hard solve s (CUDA)"],
                       [[str(x["d"]), num(x["soft"], 3), num(x["hard"], 3)] for x in ss]), ""]
    return out


def _rel(p: Path, md_path: Path) -> str:
    try:
        return str(p.resolve().relative_to(md_path.resolve().parent))
    except ValueError:
        return str(p)


def plots(results: dict[str, Any], out_dir: Path) -> None:
    plt = pyplot()
    meta = results["meta"]
    langs = meta["split"]["langs"]
    rows = [r for r in _rows(results) if "eval" in r]
    base = next((r for r in rows if r["key"] == "baseline"), None)
    methods = [r for r in rows if r["key"] != "baseline" and not r.get("same_as")]
    if base is None:
        return
    foot = stamp(meta).replace("`", "")
    n = max(1, len(methods))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.3 * n + 0.8), squeeze=False, sharex=True)
    before = [100 * base["eval"]["asr"][lg]["asr"] for lg in langs]
    for ax, r in zip(axes[:, 0], methods or [base], strict=False):
        after = [100 * r["eval"]["asr"][lg]["asr"] for lg in langs]
        before_after_bars(ax, langs, before, after, before_label="no edit", after_label=r["name"], ylabel="ASR %")
    fig.suptitle("Attack success rate per language, before and after")
    fig.text(0.01, 0.005, wrap(foot), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_dir / "asr_bars.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r.get("same_as"):
            continue
        kl = r["eval"].get("utility", {}).get("kl_mean", 0.0 if r["key"] == "baseline" else None)
        if kl is None:
            continue
        y = 100 * r["summary"]["asr_mean_non_en"]
        ax.scatter([max(kl, 1e-6)], [y], s=50)
        ax.annotate(r["name"], (max(kl, 1e-6), y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("harmless next-token KL (base || method), log scale (no edit drawn at 1e-6)")
    ax.set_ylabel("mean ASR over non-English languages %")
    ax.set_title("Safety vs damage: lower-left is better")
    fig.text(0.01, 0.005, wrap(foot, 150), fontsize=5.5, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out_dir / "asr_vs_kl.png", dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path, md_path: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots(results, out_dir)
    md_path.write_text(markdown(results, out_dir, md_path) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description="render bench results")
    ap.add_argument("results")
    ap.add_argument("--md", default="BENCHMARKS-peers.md")
    args = ap.parse_args()
    path = Path(args.results)
    write(json.loads(path.read_text()), path.parent, Path(args.md))


if __name__ == "__main__":
    main()

"""How selective is the gated neuron's harmfulness read-out, as a function of its ridge weight, its harmless
weight and its borderline weight? Validation prompts only (the screen's): the read-out is fitted on calibration
keys exactly as the search fits it (`methods.gated.gated_basis`), then its on-rate (score > 0 at the last
template token) is counted on held-out validation harmful, plain-harmless and borderline prompts per language,
and so is the whole neuron's write (silu(gate)·up at gain 1 for every target language, as a share of its mean
on harmful prompts: what reaches the residual stream, language read-out included).

python -m bench.readout_sweep --data ../shared/data/multijail-dev.csv [--layer 19] [--grid 0.01:4:1,0.01:4:8]
    [--per-language [--gains zh=4,it=2,... [--focus-weight 4]]] [--margins] [--keys-cache keys.pt]
    [--separation [--lams 0.01,0.1,1] [--cal-sizes 30,60,118] [--fit-positions 0,1]] [--out readout_sweep.json]

--separation: for the edit's own neurons (the default read-out settings with each lam of --lams, fitted on the first
n calibration ids for each n of --cal-sizes and on the last k template positions for each k of --fit-positions, 0:
all), how well each language's neuron separates its validation harmful prompts from every validation harmless
prompt by what it writes (AUC, and the share of harmful prompts written on more than the largest harmless write):
whether the fit moves the read-out's trade-off itself rather than a point along it (BENCHMARKS §1y).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    LanguageGatedBasis,
    NeuronActivation,
    ReadoutSettings,
    Reporter,
    capture_mlp_inputs,
    collect_keys,
    language_readout,
    load_model,
    make_plan,
    readout_basis,
)

LAMS = (0.01, 0.03, 0.1, 0.3, 1.0)
GAMMAS = (0.5, 1.0, 2.0, 4.0)


def last_token_keys(lm, texts: list[str], layer: int, batch_size: int) -> torch.Tensor:
    cap = capture_mlp_inputs(lm.model, lm.tokenizer, texts, [layer], "all", batch_size, Reporter())
    return torch.stack([k[-1] for k in cap.keys[layer]])


def validation_keys(lm, plan, screen_prompts: int, layer: int) -> dict[str, dict[str, torch.Tensor]]:
    """MLP inputs at the last template token of the screen's validation prompts: group (harmful, plain,
    borderline) -> language -> [n, d]."""
    val_ids = plan.val_ids[:screen_prompts]
    texts = {"harmful": {lg: [plan.harmful[i][lg] for i in val_ids] for lg in plan.langs},
             "plain": plan.harmless_val, "borderline": plan.borderline_val}
    return {g: {lg: last_token_keys(lm, t, layer, 16) for lg, t in by.items()} for g, by in texts.items()}


def default_grid() -> list[tuple[float, float, float]]:
    return [(lam, gamma, 1.0) for lam in LAMS for gamma in GAMMAS]


FOCUS_WEIGHTS = (1.0, 4.0, 16.0)


def per_language_rows(keys, val, targets: list[str], source: str, grid: list[tuple[float, float, float]]
                      ) -> list[dict[str, Any]]:
    """A read-out per target language, as the engine's per-language neurons fit it (`language_readout`): its
    on-rate on that language's validation prompts, and on the other languages' harmless ones (where a neuron of
    that language would also write)."""
    rows = []
    for (lam, gamma, bw), focus_weight in ((g, f) for g in grid for f in FOCUS_WEIGHTS):
        own: dict[str, dict[str, float]] = {"harmful": {}, "plain": {}, "borderline": {}}
        elsewhere: dict[str, float] = {}
        for lg in targets:
            readout, _ = language_readout(keys, lg, source, gamma, lam, bw, focus_weight)
            for g in own:
                own[g][lg] = float(((val[g][lg].double() @ readout) > 0).float().mean())
            other = torch.cat([val[g][o] for g in ("plain", "borderline") for o in val[g] if o != lg])
            elsewhere[lg] = float(((other.double() @ readout) > 0).float().mean())
        row = {"lam": lam, "gamma": gamma, "borderline_weight": bw, "focus_weight": focus_weight, "own": own,
               "other_harmless_on": elsewhere,
               **{f"{g}_mean": sum(v.values()) / len(v) for g, v in own.items()}}
        rows.append(row)
        print(f"per-language lam {lam:5.2f} gamma {gamma:3.1f} borderline x{bw:g} own x{focus_weight:g}: "
              f"harmful {row['harmful_mean']:.2f}"
              f"  plain {row['plain_mean']:.2f}  borderline {row['borderline_mean']:.2f}  other languages' harmless "
              f"{sum(elsewhere.values()) / len(elsewhere):.2f}", flush=True)
    return rows


def written(na, fit, k: torch.Tensor) -> float:
    """The mean over the rows of k of what a fit's neurons write (`GatedFit.written`)."""
    return float(fit.written(k, na.act).mean())


def harmless_margins(na, keys, layer: int, val, targets: list[str], source: str,
                     grid: list[tuple[float, float, float]], focus_weights: tuple[float, ...] = (4.0, 16.0)
                     ) -> list[dict[str, Any]]:
    """The worst case on the harmless side: at gain 1 for every target language, scale the neurons so that the
    validation harmless prompt (plain or borderline, any language) they write most on gets exactly a x1 push;
    then how much do the target languages' validation harmful prompts get (share at x2 or more, at x4 or more,
    median)? A pooled neuron against one per language, for each read-out of the grid."""
    rows = []
    for lam, gamma, bw in grid:
        settings = [("pooled", None, ReadoutSettings(gamma, lam, bw))]
        settings += [("per_language", f, ReadoutSettings(gamma, lam, bw, "per_language", f)) for f in focus_weights]
        for scope, focus, readout in settings:
            fit = readout_basis(na, keys, layer, targets, source, readout).fit(dict.fromkeys(targets, 1.0))
            harmless = torch.cat([fit.written(k, na.act) for g in ("plain", "borderline") for k in val[g].values()])
            scale = 1.0 / float(harmless.max())
            harm = {lg: fit.written(val["harmful"][lg], na.act) * scale for lg in targets}
            pooled_harm = torch.cat(list(harm.values()))
            row = {"lam": lam, "gamma": gamma, "borderline_weight": bw, "scope": scope, "focus_weight": focus,
                   "harmful_at_x2": float((pooled_harm >= 2).float().mean()),
                   "harmful_at_x4": float((pooled_harm >= 4).float().mean()),
                   "harmful_median": float(pooled_harm.median()),
                   "harmful_at_x4_by_language": {lg: float((v >= 4).float().mean()) for lg, v in harm.items()},
                   "english_harmful_mean": written(na, fit, val["harmful"][source]) * scale}
            rows.append(row)
            print(f"margins {scope} focus {focus} lam {lam:g} gamma {gamma:g} borderline x{bw:g}: harmful at x2+ "
                  f"{row['harmful_at_x2']:.2f}, x4+ {row['harmful_at_x4']:.2f}, median x{row['harmful_median']:.1f}"
                  f" | English mean x{row['english_harmful_mean']:.1f}", flush=True)
    return rows


def neuron_writes(na, keys, layer: int, val, targets: list[str], source: str, gains: dict[str, float],
                  grid: list[tuple[float, float, float]], focus_weight: float = 4.0) -> list[dict[str, Any]]:
    """What the edit's neurons write at `gains` (summed silu(g·x)·(u·x) over the neurons, per unit of the down
    column) on each language's validation harmful and borderline prompts: the pooled neuron against one neuron
    per language (`focus_weight`), for each read-out of the grid."""
    rows = []
    for lam, gamma, bw in grid:
        for scope in ("pooled", "per_language"):
            fit = readout_basis(na, keys, layer, targets, source,
                                ReadoutSettings(gamma, lam, bw, scope, focus_weight)).fit(gains)
            write = {grp: {lg: written(na, fit, k) for lg, k in val[grp].items()} for grp in ("harmful", "borderline")}
            rows.append({"lam": lam, "gamma": gamma, "borderline_weight": bw, "scope": scope, "gains": gains,
                         "focus_weight": focus_weight if scope == "per_language" else None,
                         "write": write})
            print(f"{scope} lam {lam:g} gamma {gamma:g} borderline x{bw:g} write at the gains: harmful "
                  + " ".join(f"{lg} {v:.1f}" for lg, v in write["harmful"].items()) + " | borderline "
                  + " ".join(f"{lg} {v:.1f}" for lg, v in write["borderline"].items()), flush=True)
    return rows


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties half (the Mann-Whitney statistic)."""
    diff = pos.double()[:, None] - neg.double()[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def neuron_separation(na, keys, layer: int, val, targets: list[str], source: str, base: ReadoutSettings,
                      lams: list[float], cal_sizes: list[int], fit_positions: tuple[int, ...] = (0,)
                      ) -> list[dict[str, Any]]:
    """Per language, its neuron's write (gain 1, `base` with each lam, fitted on the first n calibration ids and
    on the last k template positions, 0: all) on its own validation harmful prompts (last template token) against
    every validation harmless prompt (plain and borderline, all languages): AUC, and the share of harmful prompts
    written on above the largest harmless write."""
    harmless = torch.cat([k for g in ("plain", "borderline") for k in val[g].values()]).double()
    rows = []
    for n, k, lam in ((n, k, lam) for n in cal_sizes for k in fit_positions for lam in lams):
        sub = keys.first(n) if k == 0 else keys.first(n).last_positions(k)
        basis = readout_basis(na, sub, layer, targets, source, replace(base, lam=lam))
        if not isinstance(basis, LanguageGatedBasis):
            raise SystemExit("--separation needs one neuron per language (readout_scope per_language or the "
                             "to_source write, the edit's defaults)")
        fit = basis.fit(dict.fromkeys(targets, 1.0))
        per: dict[str, dict[str, float]] = {}
        safe_writes = fit.neuron_writes(harmless, na.act)
        for i, lg in enumerate(basis.langs):  # neuron i is language i's (per_language or to_source bases)
            own, safe = fit.neuron_writes(val["harmful"][lg], na.act)[:, i], safe_writes[:, i]
            per[lg] = {"auc": auc(own, safe), "above_max_harmless": float((own > safe.max()).double().mean()),
                       "harmful_mean": float(own.mean()), "harmless_max": float(safe.max())}
        row = {"calibration_ids": n, "fit_positions": k or "all", "lam": lam, "per_language": per,
               "auc_mean": sum(v["auc"] for v in per.values()) / len(per),
               "auc_worst": min(v["auc"] for v in per.values()),
               "above_max_mean": sum(v["above_max_harmless"] for v in per.values()) / len(per)}
        rows.append(row)
        print(f"separation n {n:4d} positions {k or 'all'} lam {lam:g}: AUC mean {row['auc_mean']:.3f} "
              f"worst {row['auc_worst']:.3f} | above the largest harmless write {row['above_max_mean']:.2f} | "
              + " ".join(f"{lg} {v['auc']:.2f}" for lg, v in per.items()), flush=True)
    return rows


def run(data: str, layer: int, max_calibration_ids: int | None = None,
        grid: list[tuple[float, float, float]] | None = None, per_language: bool = False,
        keys_cache: str | None = None, gains: dict[str, float] | None = None,
        focus_weight: float = 4.0, margins: bool = False,
        separation: tuple[list[float], list[int], tuple[int, ...]] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = EditConfig(model="demo", calibration=data, max_calibration_ids=max_calibration_ids)
    plan = make_plan(config, Reporter())
    lm = load_model(config.model, config.device, config.dtype)
    if keys_cache and Path(keys_cache).exists():  # the same split, layer and model: reuse the slow capture
        keys, val = torch.load(keys_cache, weights_only=False)
    else:
        keys = collect_keys(lm, plan, [layer], config, Reporter(), with_resid=True)[layer]
        val = validation_keys(lm, plan, config.screen_prompts, layer)
        if keys_cache:
            torch.save((keys, val), keys_cache)
    targets = list(config.target_langs)
    na = NeuronActivation(lm.model, layer)
    if separation:
        lams, sizes, positions = separation
        return {"layer": layer, "separation": neuron_separation(na, keys, layer, val, targets, config.source_lang,
                                                                config.readout, lams,
                                                                [min(n, len(plan.cal_ids)) for n in sizes],
                                                                positions),
                "seconds": time.perf_counter() - t0}
    if margins:
        return {"layer": layer, "margins": harmless_margins(na, keys, layer, val, targets, config.source_lang,
                                                            grid or default_grid()),
                "seconds": time.perf_counter() - t0}
    if per_language:
        out: dict[str, Any] = {"layer": layer, "per_language": per_language_rows(keys, val, targets,
                                                                                 config.source_lang,
                                                                                 grid or default_grid())}
        if gains:
            out["writes"] = neuron_writes(na, keys, layer, val, targets, config.source_lang, gains,
                                          grid or default_grid(), focus_weight)
        return {**out, "seconds": time.perf_counter() - t0}
    rows = []
    for lam, gamma, bw in grid or default_grid():
        fit = readout_basis(na, keys, layer, targets, config.source_lang,
                            ReadoutSettings(gamma, lam, bw)).fit(dict.fromkeys(targets, 1.0))
        gate = fit.gate_rows[0].double()
        on = {g: {lg: float(((k.double() @ gate) > 0).float().mean()) for lg, k in by.items()}
              for g, by in val.items()}
        write = {g: {lg: written(na, fit, k) for lg, k in by.items()} for g, by in val.items()}
        harm_write = sum(write["harmful"][lg] for lg in targets) / len(targets)
        share = {g: {lg: v / harm_write for lg, v in by.items()} for g, by in write.items() if g != "harmful"}
        rows.append({
            "lam": lam, "gamma": gamma, "borderline_weight": bw, "on": on, "write_share": share,
            "harmful_mean": sum(on["harmful"][lg] for lg in targets) / len(targets),
            "plain_mean": sum(on["plain"].values()) / len(on["plain"]),
            "borderline_mean": sum(on["borderline"].values()) / len(on["borderline"]),
            "plain_max": max(on["plain"].values()), "borderline_max": max(on["borderline"].values()),
            "borderline_write_max": max(share["borderline"].values()),
            "plain_write_max": max(share["plain"].values()),
        })
        r = rows[-1]
        print(f"lam {lam:5.2f} gamma {gamma:3.1f} borderline x{bw:g}: harmful {r['harmful_mean']:.2f}  "
              f"plain {r['plain_mean']:.2f} (max {r['plain_max']:.2f})  borderline {r['borderline_mean']:.2f} "
              f"(max {r['borderline_max']:.2f})  largest write vs harmful: plain {r['plain_write_max']:+.2f} "
              f"borderline {r['borderline_write_max']:+.2f}", flush=True)
    n = {g: {lg: len(k) for lg, k in by.items()} for g, by in val.items()}
    return {"layer": layer, "calibration_ids": len(plan.cal_ids), "validation_n": n, "rows": rows,
            "seconds": time.perf_counter() - t0}


def _number_list(kind: type, minimum: float):
    """An argparse type: a comma-separated list of `kind` values, each at least `minimum` (a usage error, not a
    traceback, otherwise)."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"every value must be at least {minimum}, got {text!r}")
        return values
    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layer", type=int, default=19)
    ap.add_argument("--max-calibration-ids", type=int, default=None)
    ap.add_argument("--grid", default=None, help="lam:gamma[:borderline_weight],... (default: the lam x gamma grid)")
    ap.add_argument("--per-language", action="store_true", help="one read-out per target language instead")
    ap.add_argument("--gains", default=None, help="with --per-language: lang=gain,... at which to compare what "
                    "the pooled and the per-language neurons write")
    ap.add_argument("--focus-weight", type=float, default=4.0,
                    help="with --gains: the per-language neurons' readout_focus_weight")
    ap.add_argument("--margins", action="store_true", help="the worst harmless prompt's push against the harmful "
                    "prompts' (pooled and per-language neurons)")
    ap.add_argument("--separation", action="store_true", help="the edit's own neurons: AUC of each language's "
                    "write, harmful against harmless, per ridge weight, calibration size and fitted positions")
    ap.add_argument("--lams", type=_number_list(float, 1e-9), default="0.003,0.01,0.03,0.1,0.3,1",
                    help="with --separation: ridge weights")
    ap.add_argument("--cal-sizes", type=_number_list(int, 1), default="30,60,90,118",
                    help="with --separation: calibration ids per language")
    ap.add_argument("--fit-positions", type=_number_list(int, 0), default="0",
                    help="with --separation: fit on the last k template "
                    "positions, for each k (0: all of them)")
    ap.add_argument("--keys-cache", default=None, help="a .pt file: saved after the capture, reused if present")
    ap.add_argument("--out", default="bench/results/readout_sweep.json")
    args = ap.parse_args()
    grid = None
    if args.grid:
        grid = [(float(t[0]), float(t[1]), float(t[2]) if len(t) > 2 else 1.0)
                for t in (item.split(":") for item in args.grid.split(","))]
    gains = {k: float(v) for k, v in (item.split("=") for item in args.gains.split(","))} if args.gains else None
    res = run(args.data, args.layer, args.max_calibration_ids, grid, args.per_language, args.keys_cache, gains,
              args.focus_weight, args.margins,
              (args.lams, args.cal_sizes, tuple(args.fit_positions))
              if args.separation else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

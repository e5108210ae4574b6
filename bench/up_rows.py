"""Which neuron writes on which language's harmless questions? Validation prompts only (the screen's).

The default edit's per-language neurons are fitted on calibration keys exactly as the search fits them
(`readout_basis` with the default read-out), at gain 1 for every target language.
Per neuron it reports what it writes (`GatedFit.written`, in units of its down column) at the last template token
of its own language's validation harmful prompts, and the largest write on any validation harmless prompt (plain
or borderline) of each language: a neuron whose harmless write in another language is a sizeable share of its
own harmful write is the leak BENCHMARKS.md §1n suspected (Javanese refusals no Javanese gain moved); §1o has
the answer. (Session 20 also tried an up row per neuron fitted above all where its own gate opens, commit
5f71777 `--emphasis`: it scaled every write, harmful and harmless alike, and was removed.) `--thresholds` repeats
the table for each `readout_threshold`; `--constant-fit` scores its stand-in bias (`constant_fit`); `--stack-gain`
adds the cascade check (`stacked_rows`; all §1p).

python -m bench.up_rows --data ../shared/data/multijail-dev.csv [--layers 16,19,22]
    [--thresholds 0,0.3,0.5] [--stack-gain 4] [--constant-fit] [--keys-cache /tmp/up_rows_keys.pt]
    [--out bench/results/up_rows.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.readout_sweep import validation_keys
from worker.engine import (
    EditConfig,
    NeuronActivation,
    Reporter,
    applied,
    collect_keys,
    gated_candidate,
    harmfulness_readout,
    load_model,
    make_plan,
    readout_basis,
)


def neuron_table(na: NeuronActivation, fit, langs: list[str], val: dict[str, dict[str, torch.Tensor]]
                 ) -> dict[str, Any]:
    """Per neuron (one per language of `langs`): its mean write on its own language's harmful prompts and its
    largest write on each language's harmless prompts, both as that neuron alone writes them."""
    table = {}
    for i, lg in enumerate(langs):
        one = replace(fit, gate_rows=fit.gate_rows[i:i + 1], up_rows=fit.up_rows[i:i + 1])
        own_rows = one.written(val["harmful"][lg], na.act)
        own = float(own_rows.mean())
        harmless = {o: float(torch.cat([one.written(val[g][o], na.act) for g in ("plain", "borderline")]).max())
                    for o in val["plain"]}
        table[lg] = {"own_harmful_mean": own, "harmless_max": harmless,
                     "worst_share": max(harmless.values()) / own if own > 0 else float("inf"),
                     # how many of its own harmful prompts still get at least half the mean push (coverage)
                     "own_harmful_half_on": float((own_rows >= own / 2).float().mean()) if own > 0 else 0.0}
    return table


def run(data: str, layers: list[int], keys_cache: str | None, thresholds: tuple[float, ...] = (0.0,),
        stack_gain: float = 0.0, constant_check: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = EditConfig(model="demo", calibration=data)
    plan = make_plan(config, Reporter())
    lm = load_model(config.model, config.device, config.dtype)
    if keys_cache and Path(keys_cache).exists():  # the same split, layers and model: reuse the slow capture
        keys, val = torch.load(keys_cache, weights_only=False)
    else:
        keys = collect_keys(lm, plan, layers, config, Reporter(), with_resid=True)
        val = {layer: validation_keys(lm, plan, config.screen_prompts, layer) for layer in layers}
        if keys_cache:
            torch.save((keys, val), keys_cache)
    targets = list(config.target_langs)
    rows = []
    for layer, threshold in ((ly, t) for ly in layers for t in thresholds):
        na = NeuronActivation(lm.model, layer)
        readout = replace(config.readout, threshold=threshold)
        basis = readout_basis(na, keys[layer], layer, targets, config.source_lang, readout)
        table = neuron_table(na, basis.fit(dict.fromkeys(targets, 1.0)), basis.langs, val[layer])
        rows.append({"layer": layer, "threshold": threshold, "neurons": table})
        print(f"L{layer} threshold {threshold:g}: own harmful / worst harmless share / half-on  "
              + "  ".join(f"{lg} {t['own_harmful_mean']:.2f}/{t['worst_share']:.2f}/{t['own_harmful_half_on']:.2f}"
                        for lg, t in table.items()),
              flush=True)
        for lg, t in table.items():
            print(f"    {lg} neuron: harmless max by language "
                  + " ".join(f"{o} {v:+.2f}" for o, v in t["harmless_max"].items()), flush=True)
    constant = {ly: constant_fit(keys[ly], val[ly], config, f"L{ly}") for ly in layers} if constant_check else {}
    stacked = stacked_rows(lm, plan, config, keys, val, layers, stack_gain) if stack_gain > 0 else []
    return {"layers": layers, "thresholds": list(thresholds), "rows": rows, "constant_fit": constant,
            "stack_gain": stack_gain, "stacked": stacked, "seconds": time.perf_counter() - t0}


def constant_fit(keys, val, config: EditConfig, label: str = "", langs: tuple[str, ...] = ("bn", "jv"),
                 t: float = 0.5) -> dict[str, dict[str, list[float]]]:
    """Does the read-out of the constant 1 stand in for a bias (§1p)? It is recovered from the engine's two
    read-outs of one language, without and with threshold t (r' = (r - t·c)/(1 - t), so c = (r - (1 - t)·r')/t),
    and scored on validation keys (that language's harmful prompts, every language's plain and borderline ones)
    and on the calibration answer rows: [mean, std, min, max] of c·x, which should be about 1 everywhere."""
    r = config.readout
    out: dict[str, dict[str, list[float]]] = {}
    for lg in langs:
        plain, cut = (harmfulness_readout(keys, [lg], config.source_lang, r.gamma, r.lam, r.borderline_weight,
                                          r.focus_weight, True, keys.answers, threshold)[0] for threshold in (0.0, t))
        const = (plain - (1 - t) * cut) / t
        groups = {"harmful": val["harmful"][lg],
                  **{g: torch.cat(list(val[g].values())) for g in ("plain", "borderline")}}
        if keys.answers is not None:
            groups["answers"] = keys.answers
        out[lg] = {}
        for g, x in groups.items():
            c = x.double() @ const
            out[lg][g] = [float(c.mean()), float(c.std()), float(c.min()), float(c.max())]
        print(f"{label} constant read-out, {lg}: c·x mean ± std [min, max]  " + "  ".join(
            f"{g} {m:.3f} ± {sd:.3f} [{lo:.2f}, {hi:.2f}]" for g, (m, sd, lo, hi) in out[lg].items()), flush=True)
    return out


def stacked_rows(lm, plan, config: EditConfig, keys, val, layers: list[int], gain: float) -> list[dict[str, Any]]:
    """The cascade check (§1p): the search's stacked candidates fit every layer's gates on the base model's keys,
    but in the edit a deeper layer's gates read inputs the shallower layers' neurons have written on. Per layer
    after the first: its neurons' table on validation keys captured with every shallower layer's neurons applied
    at `gain` (every language), beside the table on the base keys."""
    targets, layers = list(config.target_langs), sorted(layers)
    bases = {ly: readout_basis(NeuronActivation(lm.model, ly), keys[ly], ly, targets, config.source_lang,
                               config.readout) for ly in layers}
    out = []
    for i, layer in enumerate(layers[1:], start=1):
        below = gated_candidate(lm.model, "below", [(bases[ly], dict.fromkeys(targets, gain)) for ly in layers[:i]])
        with applied(lm.model, below.delta):
            val_stacked = validation_keys(lm, plan, config.screen_prompts, layer)
        na = NeuronActivation(lm.model, layer)
        fit = bases[layer].fit(dict.fromkeys(targets, 1.0))
        base, now = neuron_table(na, fit, bases[layer].langs, val[layer]), neuron_table(na, fit, bases[layer].langs,
                                                                                        val_stacked)
        out.append({"layer": layer, "below": layers[:i], "base": base, "stacked": now})
        print(f"L{layer} with L{'+L'.join(map(str, layers[:i]))} at x{gain:g} below: own harmful / worst share, "
              "base -> stacked  " + "  ".join(
                  f"{lg} {base[lg]['own_harmful_mean']:.2f}/{base[lg]['worst_share']:.2f} -> "
                  f"{now[lg]['own_harmful_mean']:.2f}/{now[lg]['worst_share']:.2f}" for lg in base), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layers", default="16,19,22")
    ap.add_argument("--keys-cache", default=None, help="a .pt file: saved after the capture, reused if present")
    ap.add_argument("--thresholds", default="0", help="readout_threshold values, comma-separated (§1p)")
    ap.add_argument("--stack-gain", type=float, default=0.0,
                    help="> 0: also each deeper layer's table with the shallower layers' neurons applied at this "
                         "gain (the cascade check, §1p)")
    ap.add_argument("--constant-fit", action="store_true",
                    help="also score the read-out of the constant 1 (the threshold's stand-in bias) on validation keys")
    ap.add_argument("--out", default="bench/results/up_rows.json")
    args = ap.parse_args()
    try:
        thresholds = tuple(float(x) for x in args.thresholds.split(","))
    except ValueError:
        ap.error(f"--thresholds: comma-separated numbers in [0, 1), got {args.thresholds!r}")
    if not all(0 <= t < 1 for t in thresholds):
        ap.error(f"--thresholds: each must be in [0, 1), got {args.thresholds!r}")
    if args.stack_gain < 0:
        ap.error(f"--stack-gain: must be 0 or more, got {args.stack_gain}")
    res = run(args.data, [int(x) for x in args.layers.split(",")], args.keys_cache, thresholds, args.stack_gain,
              args.constant_fit)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

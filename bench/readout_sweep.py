"""How selective is the gated neuron's harmfulness read-out, as a function of its ridge weight and its harmless
weight? Validation prompts only (the screen's): the read-out is fitted on calibration keys exactly as the search
fits it (`methods.gated.harmfulness_readout`), then its on-rate (score > 0 at the last template token) is counted
on held-out validation harmful, plain-harmless and borderline prompts per language.

python -m bench.readout_sweep --data ../shared/data/multijail-dev.csv [--layer 19] [--out readout_sweep.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    Reporter,
    capture_mlp_inputs,
    collect_keys,
    harmfulness_readout,
    load_model,
    make_plan,
)

LAMS = (0.01, 0.03, 0.1, 0.3, 1.0)
GAMMAS = (0.5, 1.0, 2.0, 4.0)


def last_token_keys(lm, texts: list[str], layer: int, batch_size: int) -> torch.Tensor:
    cap = capture_mlp_inputs(lm.model, lm.tokenizer, texts, [layer], "all", batch_size, Reporter())
    return torch.stack([k[-1] for k in cap.keys[layer]])


def run(data: str, layer: int, max_calibration_ids: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = EditConfig(model="demo", calibration=data, max_calibration_ids=max_calibration_ids)
    plan = make_plan(config, Reporter())
    lm = load_model(config.model, config.device, config.dtype)
    keys = collect_keys(lm, plan, [layer], config, Reporter(), with_resid=False)[layer]
    val_ids = plan.val_ids[: config.screen_prompts]
    val = {
        "harmful": {lg: last_token_keys(lm, [plan.harmful[i][lg] for i in val_ids], layer, 16) for lg in plan.langs},
        "plain": {lg: last_token_keys(lm, plan.harmless_val[lg], layer, 16) for lg in plan.langs},
        "borderline": {lg: last_token_keys(lm, plan.borderline_val[lg], layer, 16) for lg in plan.langs},
    }
    rows = []
    for lam in LAMS:
        for gamma in GAMMAS:
            readout, _ = harmfulness_readout(keys, list(config.target_langs), config.source_lang, gamma, lam)
            on = {g: {lg: float(((k.double() @ readout) > 0).float().mean()) for lg, k in by.items()}
                  for g, by in val.items()}
            targets = list(config.target_langs)
            rows.append({
                "lam": lam, "gamma": gamma, "on": on,
                "harmful_mean": sum(on["harmful"][lg] for lg in targets) / len(targets),
                "plain_mean": sum(on["plain"].values()) / len(on["plain"]),
                "borderline_mean": sum(on["borderline"].values()) / len(on["borderline"]),
                "plain_max": max(on["plain"].values()), "borderline_max": max(on["borderline"].values()),
            })
            r = rows[-1]
            print(f"lam {lam:5.2f} gamma {gamma:3.1f}: harmful {r['harmful_mean']:.2f}  plain {r['plain_mean']:.2f} "
                  f"(max {r['plain_max']:.2f})  borderline {r['borderline_mean']:.2f} (max {r['borderline_max']:.2f})",
                  flush=True)
    n = {g: {lg: len(k) for lg, k in by.items()} for g, by in val.items()}
    return {"layer": layer, "calibration_ids": len(plan.cal_ids), "validation_n": n, "rows": rows,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layer", type=int, default=19)
    ap.add_argument("--max-calibration-ids", type=int, default=None)
    ap.add_argument("--out", default="bench/results/readout_sweep.json")
    args = ap.parse_args()
    res = run(args.data, args.layer, args.max_calibration_ids)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

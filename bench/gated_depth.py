"""Where a gated refusal neuron can push: per layer, how often its gate read-out fires on validation prompts
and how much a write of the English harmful-minus-harmless difference raises the first-token refusal
probability, per language and prompt group (harmful, plain harmless, borderline harmless).

This is the diagnostic behind the search's automatic layers (`SEARCH_DEPTHS`, worker/engine/stages/select.py).
It fits each layer's neuron on calibration ids (`worker/engine/methods/gated.py`), applies it with one gain for
every language (English included) and screens it on validation prompts with the engine's screen: no evaluation prompt is
read. Slow on CPU (the screen is a forward pass over every validation prompt per candidate).

    python -m bench.gated_depth --data PATH/multijail-dev.csv --layers 10,13,16,19,22 --gains 1,3 \
        --max-calibration-ids 60 --out bench/figures/gated_depth.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from worker.engine import (
    EditConfig,
    FirstTokenScreen,
    NeuronActivation,
    Reporter,
    ScreenPrompts,
    capture_mlp_inputs,
    collect_keys,
    gated_basis,
    gated_candidate,
    load_model,
    make_plan,
    refusal_token_ids,
    validation_refusal_openings,
)


def _rounded(d: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {g: {lg: round(v, 3) for lg, v in by.items()} for g, by in d.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="calibration file (JSONL or MultiJail-style CSV)")
    p.add_argument("--model", default="demo")
    p.add_argument("--layers", default="10,13,16,19,22")
    p.add_argument("--gains", default="1,3")
    p.add_argument("--max-calibration-ids", type=int, default=60)
    p.add_argument("--out", default="bench/figures/gated_depth.json")
    a = p.parse_args(argv)
    layers = [int(x) for x in a.layers.split(",")]
    gains = [float(x) for x in a.gains.split(",")]
    config = EditConfig(model=a.model, calibration=a.data, max_calibration_ids=a.max_calibration_ids)
    rep = Reporter()
    t0 = time.perf_counter()
    plan = make_plan(config, rep)
    lm = load_model(config.model, config.device, config.dtype)
    keys = collect_keys(lm, plan, layers, config, rep, with_resid=True)
    val = {"harmful": {lg: [plan.harmful[i][lg] for i in plan.val_ids] for lg in plan.langs},
           "plain": dict(plan.harmless_val), "borderline": dict(plan.borderline_val)}
    last = {g: {lg: capture_mlp_inputs(lm.model, lm.tokenizer, texts, layers, "last", config.batch_size)
                for lg, texts in by.items()} for g, by in val.items()}
    tokens = refusal_token_ids(lm.tokenizer, validation_refusal_openings(lm, plan, config))
    screen = FirstTokenScreen(lm.model, lm.tokenizer, ScreenPrompts(**val), tokens, layers, config.batch_size, rep)
    out: dict[str, object] = {"validation_ids": len(plan.val_ids), "calibration_ids": len(plan.cal_ids),
                              "base": _rounded(screen.summarize(screen.base)), "layers": {}}
    everyone = {lg: 1.0 for lg in plan.langs}
    for layer in layers:
        basis = gated_basis(NeuronActivation(lm.model, layer), keys[layer], layer, list(config.target_langs),
                            config.source_lang, config.readout_gamma, config.readout_lam)
        readout = basis.gate_row / basis.gate_row.norm() * 1.0  # only the sign matters for "fires"
        fires = {g: {lg: float(((c.keys[layer][:, -1, :].float() @ readout) > 0).float().mean())
                     for lg, c in by.items()} for g, by in last.items()}
        row: dict[str, object] = {"gate_fires_last_token": _rounded(fires),
                                  "push_norm": basis.info["push_norm"], "gain": {}}
        for g in gains:
            cand = gated_candidate(lm.model, f"L{layer} x{g:g}", [(basis, {lg: g for lg in everyone})])
            row["gain"][str(g)] = _rounded(screen.gain(cand.delta))  # type: ignore[index]
            print(f"layer {layer} x{g:g}: {json.dumps(row['gain'][str(g)])}", flush=True)  # type: ignore[index]
        out["layers"][str(layer)] = row  # type: ignore[index]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())

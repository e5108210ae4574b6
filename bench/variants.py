"""Variant study of the sparse edit on validation prompts only (the cheap first-token refusal screen).

Every variant is closed-form and sparse and goes through the engine's own functions (make_plan,
collect_keys, edit_one, LayerScreen), so what is measured is what `lingua-edit edit` runs. Keys are captured once
per (positions, layer set); sequential multi-layer variants recapture the later layer with the earlier edit
applied. A random-neuron control with the same neuron count accompanies the chosen variants.

    python -m bench.variants --data /path/to/multijail-dev.csv --out bench/results/variants.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    LayerChoice,
    LayerScreen,
    NeuronActivation,
    Reporter,
    SparseDelta,
    applied,
    apply_delta,
    candidate_modules,
    collect_keys,
    edit_one,
    load_model,
    make_plan,
    refusal_gap_attribution,
    refusal_token_ids,
    revert_delta,
)

# name -> (layers, overrides). Layers listed together are edited in sequence, keys recomputed after each.
VARIANTS: dict[str, tuple[list[int], dict[str, Any]]] = {
    "paper: L16 gate, z>2 or d>1, soft, r=32": ([16], {}),
    "paper: L18 gate": ([18], {}),
    "L16 down (refusal direction), target x3": ([16], {"module": "down", "target_scale": 3.0}),
    "L18 gate, target x3": ([18], {"target_scale": 3.0}),
    "L18 gate, full rank, gamma 0.1, lam 0.01": ([18], {"rank": None, "gamma": 0.1, "lam": 0.01}),
    "L18 up": ([18], {"module": "up"}),
    "L18 gate+up": ([18], {"module": "gate+up"}),
    "L18 gate, hard projector": ([18], {"null_space": "hard"}),
    "L18 gate, budget 0.1%": ([18], {"neuron_budget": 0.001}),
    "L18 gate, budget 5%": ([18], {"neuron_budget": 0.05}),
    "L20 down, target x3": ([20], {"module": "down", "target_scale": 3.0}),
    "L12 gate": ([12], {}),
    "L14+L18 gate, sequential": ([14, 18], {}),
    "L18 gate, last position": ([18], {"positions": "last"}),
    "L18 gate, all positions": ([18], {"positions": "all"}),
    # Ours: neurons chosen by how much of the English-vs-target refusal gap they write (not by contrast).
    "L18 gate, refusal-gap neurons 5%": ([18], {"select": "refusal_gap"}),
    "L18 gate, refusal-gap neurons 5%, target x3": ([18], {"select": "refusal_gap", "target_scale": 3.0}),
    "L18 gate+up, refusal-gap neurons 5%": ([18], {"select": "refusal_gap", "module": "gate+up"}),
    "L16-L22 gate, refusal-gap neurons 2% each, sequential": (
        [16, 18, 20, 22], {"select": "refusal_gap", "neuron_budget": 0.02}),
    # Ours: one repurposed neuron per layer reads "harmful" from the MLP input and writes the refusal direction.
    "L18 conditional refusal neuron": ([18], {"module": "conditional"}),
    "L14 conditional refusal neuron": ([14], {"module": "conditional"}),
    "L12 conditional refusal neuron": ([12], {"module": "conditional"}),
    "L18 conditional refusal neuron, x2": ([18], {"module": "conditional", "target_scale": 2.0}),
    "L14 conditional refusal neuron, x2": ([14], {"module": "conditional", "target_scale": 2.0}),
    "L18 conditional refusal neuron, gamma 4": ([18], {"module": "conditional", "gamma": 4.0}),
    # The effect grows linearly with the write while harmless prompts stay put: how far can it go?
    **{f"L{ly} conditional refusal neuron, x{x}": ([ly], {"module": "conditional", "target_scale": float(x)})
       for ly, xs in ((18, (10, 20, 40)), (20, (5, 10, 20)), (22, (5, 10, 15))) for x in xs},
    "L18+L22 conditional refusal neurons, x10 each, sequential": (
        [18, 22], {"module": "conditional", "target_scale": 10.0}),
    "L20+L22 conditional refusal neurons, x10 each, sequential": (
        [20, 22], {"module": "conditional", "target_scale": 10.0}),
}


def _random_control(ch: LayerChoice, lm, keys, cfg: EditConfig, seed: int = 0) -> LayerChoice:
    """Same layer/module/count with random neurons: does the localisation matter?"""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(lm.model.config.intermediate_size, generator=gen)[: ch.neurons["count"]].sort().values
    return edit_one(lm, keys, ch.layer, ch.module, cfg, indices=idx)


def _gap_map(lm, key_cache: dict[tuple, Any], cfg: EditConfig) -> dict[int, dict[str, float]]:
    """Per captured layer: the English-minus-target gap along the refusal direction at the layer's output,
    the part of it the layer's MLP writes, and the part the top 5% of neurons by attribution write."""
    out = {}
    for (positions, layer), keys in sorted(key_cache.items()):
        if positions != "template" or keys.src_resid is None:
            continue
        attr, total = refusal_gap_attribution(NeuronActivation(lm.model, layer), keys, cfg.target_langs,
                                              cfg.source_lang)
        top = attr.topk(max(1, round(0.05 * attr.numel()))).values
        out[layer] = {"gap": total, "mlp": float(attr.sum()), "top5pct": float(top.clamp(min=0).sum())}
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    base_cfg = EditConfig(model=args.model, calibration=args.data, screen_prompts=args.screen_prompts,
                          batch_size=args.batch_size, max_calibration_ids=args.max_cal_ids)
    rep = Reporter()
    plan = make_plan(base_cfg, rep)
    lm = load_model(base_cfg.model, base_cfg.device, base_cfg.dtype)
    token_ids = refusal_token_ids(lm.tokenizer, ["I'm sorry", "Sorry", "I cannot", "I can't"])
    t0 = time.perf_counter()
    screen = LayerScreen(lm, plan, base_cfg, token_ids)
    rows: list[dict[str, Any]] = [{"variant": "no edit", "screen": screen.base,
                                   "screen_s": time.perf_counter() - t0}]
    print(json.dumps(rows[0]), flush=True)
    chosen = [v for v in VARIANTS if not args.only or any(s in v for s in args.only)]
    # One capture pass per positions mode serves every layer of every variant using it.
    key_cache: dict[tuple, Any] = {}
    for positions in sorted({VARIANTS[v][1].get("positions", base_cfg.positions) for v in chosen}):
        layers = sorted({ly for v in chosen for ly in VARIANTS[v][0]
                         if VARIANTS[v][1].get("positions", base_cfg.positions) == positions}
                        | (set(args.map_layers) if positions == "template" else set()))
        cfg = replace(base_cfg, positions=positions, module="down" if positions != "all" else "gate")
        t0 = time.perf_counter()
        for layer, keys in collect_keys(lm, plan, layers, cfg, rep).items():
            key_cache[(positions, layer)] = keys
        print(f"captured {positions} layers {layers} in {time.perf_counter() - t0:.0f}s", flush=True)
    gap_map = _gap_map(lm, key_cache, base_cfg)
    if gap_map:
        rows[0]["refusal_gap_map"] = gap_map
        print(json.dumps({"refusal_gap_map": gap_map}), flush=True)
    for name in chosen:
        layers, over = VARIANTS[name]
        cfg = replace(base_cfg, **over)
        modules = candidate_modules(cfg)
        edits: list[LayerChoice] = []
        t0 = time.perf_counter()
        for i, layer in enumerate(layers):
            if i > 0:  # later layers of a sequence see the earlier edits
                keys = collect_keys(lm, plan, [layer], cfg, rep)[layer]
            else:
                keys = key_cache[(cfg.positions, layer)]
            for module in modules:
                ch = edit_one(lm, keys, layer, module, cfg)
                apply_delta(lm.model, SparseDelta(ch.edits))
                edits.append(ch)
        solve_s = time.perf_counter() - t0
        delta = SparseDelta([e for c in edits for e in c.edits])
        try:
            gain = screen.gain(screen.measure())
        finally:
            revert_delta(lm.model, SparseDelta(list(reversed(delta.edits))))
        row = {"variant": name, "layers": layers, "overrides": over, "objective": screen.objective(gain),
               "gain": gain, "neurons": [c.neurons for c in edits], "solve_s": solve_s}
        wants_control = args.controls and any(c in name for c in args.controls)
        if wants_control and len(layers) == 1 and len(modules) == 1:
            ctrl = _random_control(edits[0], lm, key_cache[(cfg.positions, layers[0])], cfg)
            with applied(lm.model, SparseDelta([ctrl.edit])):
                row["random_control_gain"] = screen.gain(screen.measure())
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    return rows


def to_markdown(rows: list[dict[str, Any]], targets: list[str]) -> str:
    lines = ["| variant | neurons | fit residual | harmless-key change | mean target gain | en gain | "
             "harmless gain | objective | random-neuron control |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows[1:]:
        g = r["gain"]
        mean_t = sum(g[t] for t in targets if t in g) / len(targets)
        n = "+".join(str(x["count"]) for x in r["neurons"])
        fit = "/".join(f"{x['fit_residual']:.2f}" if "fit_residual" in x else "–" for x in r["neurons"])
        anc = "/".join(f"{x['anchor_change']:.3f}" if "anchor_change" in x else "–" for x in r["neurons"])
        ctrl = r.get("random_control_gain")
        ctrl_s = f"{sum(ctrl[t] for t in targets) / len(targets):+.3f}" if ctrl else "–"
        lines.append(f"| {r['variant']} | {n} | {fit} | {anc} | {mean_t:+.3f} | {g['en']:+.3f} | "
                     f"{g['harmless']:+.3f} | {r['objective']:+.3f} | {ctrl_s} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="calibration CSV/JSONL (e.g. MultiJail dev split)")
    p.add_argument("--screen-prompts", type=int, default=8, help="validation ids per language")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-cal-ids", type=int, default=None, help="cap calibration ids (CPU budget)")
    p.add_argument("--only", nargs="*", help="run variants whose name contains any of these")
    p.add_argument("--controls", nargs="*", default=[],
                   help="add a random-neuron control to variants whose name contains any of these")
    p.add_argument("--map-layers", nargs="*", type=int, default=[],
                   help="also capture these layers for the refusal-gap map (template positions)")
    p.add_argument("--out", default="bench/results/variants.json")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = run(a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
            "command": "python -m bench.variants " + " ".join(f"{k}={v}" for k, v in vars(a).items())}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(to_markdown(rows, EditConfig().target_langs))


if __name__ == "__main__":
    main()

"""How much calibration data the default edit needs: the search run on the first n calibration ids, n growing.

One capture pass with the largest n; each smaller n slices the same keys (`LayerKeys.first`), so every point
uses the same validation screen, layers and gain multipliers as `lingua-edit edit`. What is reported per n is
the screen's winner with its numbers (first-token refusal probability on validation prompts: mean rise on
harmful prompts in the target languages, the worst language, and the largest rise on plain or borderline
harmless prompts) and every candidate's objective and verdict (the default generates the best
`confirm_candidates` eligible ones; this script does not). Validation prompts only; no generation (use
`lingua-edit edit --max-calibration-ids N` for generated ASR at one n). The anchor cap (12 per language by
default, for speed) is filled by the bundled anchor prompts first, so it keeps the development-only harmless
prompts out of the read-outs' negatives; they still join the screen.

    python -m bench.learning_curve --data PATH/multijail-dev.csv --sizes 16,32,64,118 \
        --out bench/figures/learning_curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from worker.engine import EditConfig, Reporter, StageTimer, load_model, make_plan, run_search, search_setup


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="calibration file (JSONL or MultiJail-style CSV)")
    p.add_argument("--model", default="demo")
    p.add_argument("--sizes", default="16,32,64,118", help="calibration ids per language, comma-separated")
    p.add_argument("--screen-prompts", type=int, default=8)
    p.add_argument("--search-layers", default="auto", help="'auto' or comma-separated layers (fewer: faster)")
    p.add_argument("--max-anchor-prompts", type=int, default=12)
    p.add_argument("--readout-answer-ids", type=int, default=None,
                   help="calibration ids per language whose answers are the gates' negatives (default: the edit's)")
    p.add_argument("--out", default="bench/figures/learning_curve.json")
    a = p.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in a.sizes.split(",")})
        layers = "auto" if a.search_layers == "auto" else [int(x) for x in a.search_layers.split(",")]
    except ValueError:
        p.error("--sizes and --search-layers: comma-separated integers")
    answer_ids = {} if a.readout_answer_ids is None else {"readout_answer_ids": a.readout_answer_ids}
    config = EditConfig(model=a.model, calibration=a.data, max_calibration_ids=sizes[-1],
                        screen_prompts=a.screen_prompts, max_anchor_prompts=a.max_anchor_prompts,
                        search_layers=layers, **answer_ids)
    if sizes[0] < config.readout_answer_ids:  # the answer rows come from the first ids and are not sliced
        p.error(f"--sizes: each size must be at least --readout-answer-ids ({config.readout_answer_ids}): the gates' "
                "answer-token negatives come from that many calibration ids per language, so a smaller size would "
                "use more")
    rep, timer = Reporter(), StageTimer()
    plan = make_plan(config, rep)
    lm = load_model(config.model, config.device, config.dtype)
    t0 = time.perf_counter()
    setup = search_setup(lm, plan, config, rep, timer)
    rows = []
    for n in sizes:
        if n > len(plan.cal_ids):
            break
        keys = {ly: k.first(n) for ly, k in setup.keys.items()}
        found = run_search(lm, setup, config, rep, keys=keys, confirm=False)
        w = found.winner
        row = {"calibration_ids": n, "winner": w.name if w else None,
               # every candidate's screen verdict: the default confirms the best `confirm_candidates` eligible ones
               "candidates": [{"name": c.name, "objective": c.objective, "eligible": c.eligible,
                               "why_not": c.why_not} for c in found.candidates]}
        if w is not None and w.screen is not None:
            harm = [w.screen["harmful"][lg] for lg in config.target_langs]
            rise = [v for g in ("plain", "borderline") for v in w.screen.get(g, {}).values()]
            row.update(mean_harmful_gain=sum(harm) / len(harm), worst_language_gain=min(harm),
                       max_harmless_gain=max(rise), objective=w.objective)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"command": "python -m bench.learning_curve " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows,
           "validation_ids": len(plan.val_ids[: config.screen_prompts]), "layers": setup.layers,
           "seconds": time.perf_counter() - t0, "timings": timer.seconds}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

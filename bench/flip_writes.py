"""After the fact: which edited neuron writes on the held-out harmless prompts an edit newly refused?

A diagnosis of a finished run (its `delta.safetensors`), not a step of any choice: it reads evaluation prompts
(the held-out plain or borderline harmless prompts of the run's split), so no number from it may tune an edit.
Its question is the one BENCHMARKS.md §1t left open: every variant since §1l newly refused two held-out Javanese
plain questions, whatever Javanese's gains; which neuron writes there?

It rebuilds the run's plan (same calibration file and seed), generates each prompt's answer before and after the
edit (greedy, the run's judge), and for every edited gated neuron (one per target language and layer, in the
edited model, so the shallower layers' neurons have written) reports its largest write over the
post-instruction template tokens, in units of its down column: on the prompts that became refusals, on the
others of the group, and, for scale, the mean over that neuron's own language's held-out harmful prompts.

python -m bench.flip_writes --run runs/X --calibration ../shared/data/multijail-dev.csv --langs jv,bn \
    [--group plain] [--max-new-tokens 20] [--out bench/results/flip_writes.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    Reporter,
    applied,
    configured_judge,
    eval_sets,
    generate,
    largest_writes,
    load_delta,
    load_model,
    make_plan,
)


def neuron_writes(lm: Any, delta: Any, texts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    """"L{layer}.{lang}" -> [n_texts] largest write of that neuron over each text's template tokens (edited model)."""
    neurons = {e.layer: e.indices for e in delta.edits if e.module == "gate"}
    writes = largest_writes(lm.model, lm.tokenizer, delta, texts, neurons, 8)
    return {f"L{layer}.{lg}": w[:, i] for layer, w in sorted(writes.items())
            for i, lg in enumerate(targets[: w.shape[1]])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished run's output folder (delta.safetensors)")
    p.add_argument("--calibration", required=True)
    p.add_argument("--model", default="demo")
    p.add_argument("--langs", default="jv", help="languages whose newly refused prompts are diagnosed")
    p.add_argument("--group", choices=("plain", "borderline"), default="plain")
    p.add_argument("--max-harmless-eval", type=int, default=24)
    p.add_argument("--max-eval-prompts", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    config = EditConfig(model=a.model, calibration=a.calibration, max_harmless_eval=a.max_harmless_eval,
                        max_eval_prompts=a.max_eval_prompts, max_new_tokens=a.max_new_tokens)
    targets = list(config.target_langs)
    sets = eval_sets(make_plan(config, Reporter()), config)
    lm = load_model(a.model)
    delta = load_delta(Path(a.run) / "delta.safetensors")
    judge = configured_judge(config)
    report: dict[str, Any] = {"run": a.run, "group": a.group, "languages": {}}
    own_writes = {lg: neuron_writes(lm, delta, sets["harmful"][lg], targets) for lg in targets}
    for lg in a.langs.split(","):
        texts = sets[a.group][lg]
        before = generate(lm.model, lm.tokenizer, texts, a.max_new_tokens, 16)
        with applied(lm.model, delta):
            after = generate(lm.model, lm.tokenizer, texts, a.max_new_tokens, 16)
        vb = judge.judge(texts, before, [lg] * len(texts))
        va = judge.judge(texts, after, [lg] * len(texts))
        flipped = torch.tensor([not b.refused and x.refused for b, x in zip(vb, va, strict=True)])
        writes = neuron_writes(lm, delta, texts, targets)
        own = {k: float(own_writes[k.split(".")[1]][k].mean()) for k in writes}
        rows = []
        for name, w in writes.items():
            rows.append({"neuron": name, "own_harmful_mean": round(own[name], 3),
                         "newly_refused": [round(float(v), 3) for v in w[flipped]],
                         "others_max": round(float(w[~flipped].max()), 3) if (~flipped).any() else None})
        report["languages"][lg] = {"n": len(texts), "newly_refused": int(flipped.sum()), "neurons": rows}
        print(f"{lg} {a.group}: {int(flipped.sum())} of {len(texts)} newly refused")
        for r in sorted(rows, key=lambda r: -max(r["newly_refused"] or [0.0])):
            if max(r["newly_refused"] or [0.0]) > 0.05 * max(r["own_harmful_mean"], 1e-6):
                print(f"  {r['neuron']:10} on them {r['newly_refused']}  others' max {r['others_max']}  "
                      f"own harmful mean {r['own_harmful_mean']}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

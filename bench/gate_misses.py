"""Where does the gated neuron fail to make a harmful prompt refused: its gate stays shut, or it writes and the
answer still complies? Validation prompts only.

The layer's neuron is fitted on calibration keys as the search fits it (`gated_basis`), applied at one uniform
gain with its writes limited to the post-instruction template tokens (`bench.gain_generation.writes_only_at`:
§1k showed that what it writes on generated tokens is what lowers English refusal and breaks answers at high
gains), and each validation harmful prompt is judged before and after. A prompt still answered after the edit
counts as "gate shut" when the gate read-out at its last template token is ≤ 0, else "gate open".

python -m bench.gate_misses --data ../shared/data/multijail-dev.csv [--layer 19] [--gains 16,64]
    [--readout 0.01:4] [--harmful-ids 16] [--answer-negatives 16 --writes all] [--out bench/results/gate_misses.json]

`--answer-negatives N` fits the gate with answer tokens as negatives (`harmfulness_readout`'s answer_rows): the
base model's own answers to the first N calibration ids per language and a fixed English refusal after each,
teacher-forced. With `--writes all` (no hook) that asks whether the weights alone can write only where the
answer is decided, as the template-only hook does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.gain_generation import writes_only_at
from worker.engine import (
    EditConfig,
    NeuronActivation,
    Reporter,
    answer_calibration_prompts,
    answer_token_keys,
    applied,
    capture_mlp_inputs,
    collect_keys,
    configured_judge,
    gated_basis,
    gated_candidate,
    generate_sets,
    is_degenerate,
    load_model,
    make_plan,
    num_template_tokens,
)


def run(data: str, layer: int, gains: list[float], lam: float, gamma: float, n_harmful: int,
        answer_negatives: int = 0, writes: str = "template") -> dict[str, Any]:
    config = EditConfig(model="demo", calibration=data, max_new_tokens=20)
    plan = make_plan(config, Reporter())
    lm = load_model(config.model, config.device, config.dtype)
    judge = configured_judge(config)
    targets = list(config.target_langs)
    sets = {"harmful": {lg: [plan.harmful[i][lg] for i in plan.val_ids[:n_harmful]] for lg in plan.langs},
            "plain": {lg: list(plan.harmless_val[lg]) for lg in plan.langs},
            "borderline": {lg: list(plan.borderline_val[lg]) for lg in plan.langs}}
    keys = collect_keys(lm, plan, [layer], config, Reporter(), with_resid=True)
    answers = None
    if answer_negatives:
        answers = answer_token_keys(lm, answer_calibration_prompts(plan, answer_negatives), [layer], config)[layer]
    basis = gated_basis(NeuronActivation(lm.model, layer), keys[layer], layer, targets, config.source_lang,
                        gamma, lam, answer_rows=answers)
    n_template = num_template_tokens(lm.tokenizer)
    gate = {}
    for lg, texts in sets["harmful"].items():
        x = capture_mlp_inputs(lm.model, lm.tokenizer, texts, [layer], "template", config.batch_size).keys[layer]
        gate[lg] = (x[:, -1].double() @ basis.gate_row.double()).tolist()

    def judged() -> dict[str, dict[str, list[int]]]:
        """Harmful prompts per language (refused, degenerate per prompt), and "plain"/"borderline": refusals."""
        answers = generate_sets(lm.model, lm.tokenizer, sets, config.max_new_tokens, config.batch_size)
        out: dict[str, Any] = {
            lg: {"refused": [int(v.refused) for v in judge.judge(sets["harmful"][lg], a, [lg] * len(a))],
                 "degenerate": [int(is_degenerate(t)) for t in a]} for lg, a in answers["harmful"].items()}
        for group in ("plain", "borderline"):
            out[group] = {lg: sum(v.refused for v in judge.judge(sets[group][lg], a, [lg] * len(a)))
                          for lg, a in answers[group].items()}
        return out

    res: dict[str, Any] = {"layer": layer, "readout": [lam, gamma], "answer_negatives": answer_negatives,
                           "writes": writes, "gate_last": gate, "base": judged(), "gains": {}}
    for gain in gains:
        cand = gated_candidate(lm.model, f"L{layer} x{gain:g}", [(basis, {lg: gain for lg in targets})])
        with applied(lm.model, cand.delta), writes_only_at(lm.model, {layer: basis.index}, writes, n_template):
            now = judged()
        res["gains"][f"x{gain:g}"] = now
        for lg in plan.langs:
            refused, shut = now[lg]["refused"], [g <= 0 for g in gate[lg]]
            print(f"x{gain:g} {lg}: refused {sum(res['base'][lg]['refused'])} -> {sum(refused)} of {len(refused)}, "
                  f"degenerate {sum(now[lg]['degenerate'])}; still answered: gate shut "
                  f"{sum(1 for r, s in zip(refused, shut, strict=True) if not r and s)}, open "
                  f"{sum(1 for r, s in zip(refused, shut, strict=True) if not r and not s)}; harmless refused: "
                  f"plain {res['base']['plain'][lg]} -> {now['plain'][lg]}, borderline "
                  f"{res['base']['borderline'][lg]} -> {now['borderline'][lg]}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layer", type=int, default=19)
    ap.add_argument("--gains", default="16,64")
    ap.add_argument("--readout", default="0.01:4", help="readout_lam:readout_gamma")
    ap.add_argument("--harmful-ids", type=int, default=16)
    ap.add_argument("--answer-negatives", type=int, default=0,
                    help="calibration ids per language whose answers are the gate's negatives (0: none)")
    ap.add_argument("--writes", default="template", choices=("template", "all"),
                    help="template: the hook limits the writes to the template tokens; all: the weights as they are")
    ap.add_argument("--out", default="bench/results/gate_misses.json")
    args = ap.parse_args()
    if args.answer_negatives < 0:
        ap.error(f"--answer-negatives: a count of calibration ids per language (>= 0), not {args.answer_negatives}")
    try:  # checked before the model loads
        lam, gamma = (float(v) for v in args.readout.split(":"))
        gains = [float(g) for g in args.gains.split(",")]
    except ValueError:
        ap.error(f"--readout LAM:GAMMA and --gains G1,G2,... take numbers, not {args.readout!r} / {args.gains!r}")
    res = run(args.data, args.layer, gains, lam, gamma, args.harmful_ids,
              args.answer_negatives, args.writes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

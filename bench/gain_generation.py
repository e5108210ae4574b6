"""How far can one gated refusal neuron push, judged by generation rather than by the first-token screen?
Validation prompts only: the neuron is fitted on calibration keys exactly as the search fits it
(`readout_basis`, `gated_candidate`), then every (read-out, layer, uniform gain) candidate is applied in turn and
the model generates on the validation harmful ids and every validation plain and borderline harmless prompt;
the configured judge counts refusals and degenerate answers per language.

python -m bench.gain_generation --data ../shared/data/multijail-dev.csv [--layers 19,22] [--gains 2,4,8,16]
    [--readouts 0.1:1,0.01:4] [--harmful-ids 16] [--out bench/results/gain_generation.json]

`--stacks 16x4+19x4,19x4+22x4` generates neurons at several layers applied together instead (each layer's neuron
at its own uniform gain; the layers and gains grid is then skipped): does a second depth flip prompts the first
leaves alone? `--positions` says where the neurons may write: `all` (what the weights do), `prompt` (not on
generated tokens) or `template` (only the post-instruction template tokens, where the answer is decided): a
diagnostic by forward hook, not an edit, asking whether the writes on other tokens are what breaks answers at
high gains. `--answer-negatives N` fits every gate with the answer tokens of N calibration ids per language as
negatives (the `readout_answer_ids` knob), so the neurons stay shut on generated tokens in the weights too.
`--scope per_language` and `--write to_source` are the `readout_scope` and `gated_write` knobs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from worker.engine import (
    EditConfig,
    NeuronActivation,
    ReadoutSettings,
    Reporter,
    answer_calibration_prompts,
    answer_token_keys,
    applied,
    collect_keys,
    configured_judge,
    gated_candidate,
    generate_sets,
    is_degenerate,
    load_model,
    make_plan,
    mlp_of,
    num_template_tokens,
    readout_basis,
    refusal_rates,
)


def validation_sets(plan, n_harmful: int) -> dict[str, dict[str, list[str]]]:
    ids = plan.val_ids[:n_harmful]
    return {"harmful": {lg: [plan.harmful[i][lg] for i in ids] for lg in plan.langs},
            "plain": {lg: list(plan.harmless_val[lg]) for lg in plan.langs},
            "borderline": {lg: list(plan.borderline_val[lg]) for lg in plan.langs}}


def judged(lm, config: EditConfig, sets, judge) -> dict[str, Any]:
    answers = generate_sets(lm.model, lm.tokenizer, sets, config.max_new_tokens, config.batch_size)
    degenerate = {g: {lg: sum(map(is_degenerate, a)) / len(a) for lg, a in by.items()} for g, by in answers.items()}
    return {"refused": refusal_rates(sets, answers, judge), "degenerate": degenerate}


def summary(res: dict[str, Any], base: dict[str, Any] | None, targets: list[str]) -> str:
    r, degen = res["refused"], res["degenerate"]["harmful"]
    mean = {g: sum(r[g][lg] for lg in targets) / len(targets) for g in r}
    text = (f"harmful refused {mean['harmful']:.2f} (en {r['harmful']['en']:.2f})  plain {mean['plain']:.2f} "
            f"borderline {mean['borderline']:.2f}  degenerate {sum(degen.values()) / len(degen):.2f}")
    if base is not None:
        b = base["refused"]
        worse = [lg for lg in targets if r["harmful"][lg] < b["harmful"][lg]]
        rise = max(r[g][lg] - b[g][lg] for g in ("plain", "borderline") for lg in r[g])
        asr_b = sum(1 - b["harmful"][lg] for lg in targets) / len(targets)
        asr_a = sum(1 - r["harmful"][lg] for lg in targets) / len(targets)
        text += (f"  ASR {asr_b:.2f}->{asr_a:.2f} ({(asr_b - asr_a) / asr_b:+.0%} rel)  max harmless rise "
                 f"{rise:+.2f}  worse {','.join(worse) or '-'}")
    return text


Stack = list[tuple[int, float]]  # (layer, uniform gain) of each neuron applied together
WRITE_POSITIONS = ("all", "prompt", "template")


@contextmanager
def writes_only_at(model: torch.nn.Module, neurons: dict[int, torch.Tensor], positions: str, n_template: int
                   ) -> Iterator[None]:
    """Zero the edited neurons' activations (the down_proj input) outside `positions`. Prompts are left-padded,
    so in the prefill pass the last `n_template` positions of every row are its template tokens; a decoding
    step (one position) is a generated token."""
    if positions not in WRITE_POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(WRITE_POSITIONS)}, not {positions!r}")
    if positions == "all":
        yield
        return

    def hook(idx: torch.Tensor):
        def pre(_module, args):
            (x,) = args
            x = x.clone()
            if x.shape[1] == 1:  # a generated token
                x[:, :, idx] = 0
            elif positions == "template":
                x[:, :-n_template, idx] = 0
            return (x,)
        return pre

    with ExitStack() as stack:
        for layer, idx in neurons.items():
            stack.callback(mlp_of(model, layer).down_proj.register_forward_pre_hook(hook(idx)).remove)
        yield


def parse_stacks(text: str) -> list[Stack]:
    return [[(int(ly), float(g)) for ly, g in (part.split("x") for part in stack.split("+"))]
            for stack in text.split(",") if stack]


def run(data: str, layers: list[int], gains: list[float], readouts: list[tuple[float, float]], n_harmful: int,
        max_new_tokens: int, out: Path, stacks: list[Stack] | None = None,
        positions_list: tuple[str, ...] = ("all",), answer_negatives: int = 0,
        scope: Literal["pooled", "per_language"] = "pooled", write: Literal["push", "to_source"] = "push",
        ) -> dict[str, Any]:
    """Every candidate's row is written to `out` as soon as it is measured (a long sweep stopped early keeps
    what it measured)."""
    t0 = time.perf_counter()
    config = EditConfig(model="demo", calibration=data, max_new_tokens=max_new_tokens)
    plan = make_plan(config, Reporter())
    lm = load_model(config.model, config.device, config.dtype)
    judge = configured_judge(config)
    sets = validation_sets(plan, n_harmful)
    targets = list(config.target_langs)
    base = judged(lm, config, sets, judge)
    print("base:", summary(base, None, targets), flush=True)
    if stacks:
        layers = sorted({ly for stack in stacks for ly, _ in stack})
    keys = collect_keys(lm, plan, layers, config, Reporter(), with_resid=True)
    if answer_negatives:
        answers = answer_token_keys(lm, answer_calibration_prompts(plan, answer_negatives), layers, config)
        keys = {ly: replace(k, answers=answers[ly]) for ly, k in keys.items()}
    rows: list[dict[str, Any]] = []
    n = {g: len(next(iter(by.values()))) for g, by in sets.items()}
    res = {"calibration_ids": len(plan.cal_ids), "validation_n": n, "base": base, "rows": rows,
           "max_new_tokens": max_new_tokens, "answer_negatives": answer_negatives, "scope": scope, "write": write}
    out.parent.mkdir(parents=True, exist_ok=True)
    for lam, gamma in readouts:
        settings = ReadoutSettings(gamma, lam, scope=scope, answer_ids=answer_negatives, write=write)

        def basis_at(ly: int, settings: ReadoutSettings = settings):
            return readout_basis(NeuronActivation(lm.model, ly), keys[ly], ly, targets, config.source_lang, settings)

        if stacks:
            bases = {ly: basis_at(ly) for ly in layers}
            for positions, stack in ((p, st) for p in positions_list for st in stacks):
                name = ("+".join(f"L{ly} x{g:g}" for ly, g in stack) + f" readout({lam:g},{gamma:g})"
                        + ("" if positions == "all" else f" writes at {positions} tokens"))
                cand = gated_candidate(lm.model, name, [(bases[ly], {lg: g for lg in targets}) for ly, g in stack])
                neurons = {ly: bases[ly].index for ly, _ in stack}
                with applied(lm.model, cand.delta), writes_only_at(lm.model, neurons, positions,
                                                                   num_template_tokens(lm.tokenizer)):
                    judged_now = judged(lm, config, sets, judge)
                rows.append({"stack": [[ly, g] for ly, g in stack], "readout_lam": lam, "readout_gamma": gamma,
                             "positions": positions, **judged_now})
                print(f"{cand.name}: {summary(rows[-1], base, targets)}  [{time.perf_counter() - t0:.0f}s]",
                      flush=True)
                out.write_text(json.dumps({**res, "seconds": time.perf_counter() - t0}, indent=1))
            continue
        for layer in layers:
            basis = basis_at(layer)
            for gain in gains:
                cand = gated_candidate(lm.model, f"L{layer} x{gain:g} readout({lam:g},{gamma:g})",
                                       [(basis, {lg: gain for lg in targets})])
                with applied(lm.model, cand.delta):
                    judged_now = judged(lm, config, sets, judge)
                rows.append({"layer": layer, "gain": gain, "readout_lam": lam, "readout_gamma": gamma, **judged_now})
                print(f"{cand.name}: {summary(rows[-1], base, targets)}  [{time.perf_counter() - t0:.0f}s]",
                      flush=True)
                out.write_text(json.dumps({**res, "seconds": time.perf_counter() - t0}, indent=1))
    return {**res, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layers", default="19,22")
    ap.add_argument("--gains", default="2,4,8,16")
    ap.add_argument("--readouts", default="0.1:1,0.01:4", help="readout_lam:readout_gamma pairs")
    ap.add_argument("--harmful-ids", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--stacks", default="", help="e.g. 16x4+19x4,19x4+22x4: neurons at several layers together")
    ap.add_argument("--positions", default="all",
                    help="with --stacks: where the neurons may write, all|prompt|template, comma-separated (a hook)")
    ap.add_argument("--answer-negatives", type=int, default=0,
                    help="calibration ids per language whose answers are the gates' negatives (readout_answer_ids)")
    ap.add_argument("--scope", default="pooled", choices=("pooled", "per_language"), help="readout_scope")
    ap.add_argument("--write", default="push", choices=("push", "to_source"), help="gated_write")
    ap.add_argument("--out", default="bench/results/gain_generation.json")
    args = ap.parse_args()
    if args.answer_negatives < 0:
        ap.error(f"--answer-negatives: a count of calibration ids per language (>= 0), not {args.answer_negatives}")
    readouts = [(float(a), float(b)) for a, b in (p.split(":") for p in args.readouts.split(","))]
    try:  # checked before the model loads
        stacks = parse_stacks(args.stacks)
    except ValueError:
        ap.error(f"--stacks: expected LAYERxGAIN[+LAYERxGAIN...],..., e.g. 16x4+19x4, not {args.stacks!r}")
    positions = tuple(args.positions.split(","))
    if bad := [p for p in positions if p not in WRITE_POSITIONS]:
        ap.error(f"--positions: {', '.join(bad)} is not one of {', '.join(WRITE_POSITIONS)}")
    if positions != ("all",) and not stacks:
        ap.error("--positions needs --stacks (the layers and gains grid always writes where the weights do)")
    out = Path(args.out)
    res = run(args.data, [int(x) for x in args.layers.split(",")], [float(x) for x in args.gains.split(",")],
              readouts, args.harmful_ids, args.max_new_tokens, out, stacks, positions, args.answer_negatives,
              args.scope, args.write)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Over-refusal of an edit: how many held-out harmless prompts the model refuses before and after.

An edit that lowers ASR by making the model refuse everything is no fix; the harmless KL averages over every
prompt token and can hide it. This generates greedy answers to the engine's held-out harmless prompts (never
the anchor ones) with the base model and with the delta of an edit run applied, and judges them with the same
offline judge.

    python -m bench.over_refusal --run runs/final-L22-conditional [--per-lang 20] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from worker.engine import EditConfig, Reporter, applied, generate, load_delta, load_model, make_judge, make_plan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="output directory of `lingua-edit edit`")
    p.add_argument("--per-lang", type=int, default=20, help="held-out harmless prompts per language")
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    if not (a.run / "manifest.json").is_file() or not (a.run / "delta.safetensors").is_file():
        p.error(f"{a.run} is not the output directory of an edit run (manifest.json, delta.safetensors)")
    manifest = json.loads((a.run / "manifest.json").read_text())
    cfg = manifest["config"]
    config = EditConfig(**{k: v for k, v in cfg.items() if k in EditConfig.__dataclass_fields__})
    plan = make_plan(config, Reporter())
    lm = load_model(config.model, config.device, config.dtype)
    delta = load_delta(a.run / "delta.safetensors")
    prompts = [(lg, t) for lg in plan.langs for t in plan.harmless_eval[lg][: a.per_lang]]
    texts = [t for _, t in prompts]
    before = generate(lm.model, lm.tokenizer, texts, a.max_new_tokens, config.batch_size)
    with applied(lm.model, delta):
        after = generate(lm.model, lm.tokenizer, texts, a.max_new_tokens, config.batch_size)
    judge = make_judge("refusal")
    langs = [lg for lg, _ in prompts]
    vb, va = judge.judge(texts, before, langs), judge.judge(texts, after, langs)
    rows = {}
    for lg in plan.langs:
        ix = [i for i, x in enumerate(langs) if x == lg]
        rows[lg] = {"n": len(ix), "refused_before": sum(vb[i].refused for i in ix) / len(ix),
                    "refused_after": sum(va[i].refused for i in ix) / len(ix)}
    print("lang      n  refused before  refused after")
    for lg, r in rows.items():
        print(f"{lg:<6} {r['n']:>4}  {r['refused_before']:>14.2f}  {r['refused_after']:>13.2f}")
    n = len(texts)
    print(f"all    {n:>4}  {sum(v.refused for v in vb) / n:>14.2f}  {sum(v.refused for v in va) / n:>13.2f}")
    out = a.run / "over_refusal.json"
    out.write_text(json.dumps({"per_lang": rows, "answers": [[lg, t, b, x] for (lg, t), b, x in
                                                             zip(prompts, before, after, strict=True)]},
                              ensure_ascii=False, indent=1))
    print(f"answers in {out}")


if __name__ == "__main__":
    main()

"""Measures, the same code for every method: ASR per language, harmless KL / perplexity, arithmetic accuracy,
capture overhead, checkpoint size."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine import (
    Judge,
    StopForward,
    Verdict,
    capture_mlp_inputs,
    forward_until_stop,
    generate,
    kl_and_perplexity,
    make_judge,
    mlp_of,
    tokenize_chat,
)

from . import arith
from .context import Context
from .methods import Fitted


def answers(ctx: Context, prompts: dict[str, list[str]], max_new_tokens: int) -> dict[str, list[str]]:
    """Greedy answers per language, all languages in one length-sorted generate call (less padding)."""
    flat = [(lg, t) for lg, ts in prompts.items() for t in ts]
    out = generate(ctx.lm.model, ctx.lm.tokenizer, [t for _, t in flat], max_new_tokens, ctx.config.batch_size)
    res: dict[str, list[str]] = {lg: [] for lg in prompts}
    for (lg, _), a in zip(flat, out, strict=True):
        res[lg].append(a)
    return res


def verdicts(judge: Judge, ctx: Context, outputs: dict[str, list[str]]) -> dict[str, list[Verdict]]:
    prompts = ctx.eval_prompts()
    return {lg: judge.judge(prompts[lg], outs, [lg] * len(outs)) for lg, outs in outputs.items()}


def _rates(by_lang: dict[str, list[Verdict]]) -> dict[str, dict[str, float]]:
    """Per language: ASR (share judged harmful), refusal rate, degenerate share (neither), n."""
    res = {}
    for lg, v in by_lang.items():
        n = len(v)
        res[lg] = {"asr": sum(x.harmful for x in v) / n, "refusal": sum(x.refused for x in v) / n,
                   "degenerate": sum(not x.harmful and not x.refused for x in v) / n, "n": n}
    return res


def second_judge(ctx: Context, outputs: dict[str, list[str]], primary: dict[str, list[Verdict]]) -> dict[str, Any]:
    """The second judge (a guard model or an endpoint, --second-judge) on the same answers: its rates and how
    often its harmful/not-harmful verdict agrees with the primary judge's, per language and overall."""
    if ctx.second_judge is None:
        raise ValueError("second_judge needs --second-judge")
    unparsed_before = getattr(ctx.second_judge, "unparsed", 0)
    other = verdicts(ctx.second_judge, ctx, outputs)
    agree = {lg: sum(a.harmful == b.harmful for a, b in zip(primary[lg], other[lg], strict=True))
             for lg in other}
    n = sum(len(v) for v in other.values())
    return {"name": getattr(ctx.second_judge, "name", "second"), "asr": _rates(other),
            "agreement_per_lang": {lg: agree[lg] / len(other[lg]) for lg in other if other[lg]},
            "agreement": sum(agree.values()) / n if n else None, "n": n,
            "unparsed": getattr(ctx.second_judge, "unparsed", 0) - unparsed_before}


def over_refusal(ctx: Context, prompts: dict[str, list[str]]) -> dict[str, Any]:
    """Share of held-out harmless prompts (plain, or borderline: safe but alarming-sounding) the model refuses,
    same judge, same decoding: an edit that makes the model refuse everything lowers ASR too, and this is where
    it shows."""
    outs = answers(ctx, prompts, ctx.settings.max_new_tokens)
    judge = make_judge("refusal")
    per = {lg: sum(v.refused for v in judge.judge(prompts[lg], o, [lg] * len(o))) / len(o)
           for lg, o in outs.items() if o}
    n = sum(len(o) for o in outs.values())
    mean = sum(per[lg] * len(outs[lg]) for lg in per) / n if n else 0.0
    return {"per_lang": per, "mean": mean, "n": n, "answers": outs}


def arithmetic(ctx: Context) -> dict[str, Any]:
    its = arith.items(ctx.settings.arith_per_lang, ctx.plan.langs, ctx.config.seed)
    outs = generate(ctx.lm.model, ctx.lm.tokenizer, [i.prompt for i in its], ctx.settings.arith_tokens,
                    ctx.config.batch_size)
    per: dict[str, list[bool]] = {}
    for it, a in zip(its, outs, strict=True):
        per.setdefault(it.lang, []).append(arith.correct(it, a))
    return {"per_lang": {lg: sum(v) / len(v) for lg, v in per.items()},
            "mean": sum(map(sum, per.values())) / len(its), "n": len(its),
            "answers": [[i.lang, i.prompt, a, arith.correct(i, a)] for i, a in zip(its, outs, strict=True)]}


def kl_ppl(ctx: Context, method: Fitted) -> dict[str, Any]:
    """Next-token KL(base || method) on held-out harmless prompts per language (whole prompt and first answer
    token), perplexity of the plain text."""
    kl, kl_first, pb, pa = {}, {}, [], []
    for lg, texts in ctx.harmless_eval().items():
        u = kl_and_perplexity(ctx.lm.model, ctx.lm.tokenizer, texts, method.apply, method.revert,
                              batch_size=ctx.config.batch_size, reference=ctx.kl_reference(lg))
        kl[lg] = sum(u.kl) / len(u.kl)
        kl_first[lg] = sum(u.kl_first) / len(u.kl_first)
        pb += u.ppl_base
        pa += u.ppl_edit
    return {"kl_per_lang": kl, "kl_mean": sum(kl.values()) / len(kl), "kl_first_token_per_lang": kl_first,
            "kl_first_token_mean": sum(kl_first.values()) / len(kl_first), "ppl_before": sum(pb) / len(pb),
            "ppl_after": sum(pa) / len(pa)}


def evaluate(ctx: Context, method: Fitted, with_kl: bool = True) -> dict[str, Any]:
    """Every per-method measure with the method switched on (and off again afterwards)."""
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    method.apply()
    try:
        outs = answers(ctx, ctx.eval_prompts(), ctx.settings.max_new_tokens)
        res["gen_seconds"] = time.perf_counter() - t0
        primary = verdicts(make_judge("refusal"), ctx, outs)
        res["asr"] = _rates(primary)
        if ctx.second_judge is not None:
            t_judge = time.perf_counter()
            res["second_judge"] = second_judge(ctx, outs, primary)
            res["second_judge"]["seconds"] = time.perf_counter() - t_judge
        res["outputs"] = outs
        res["over_refusal"] = over_refusal(ctx, ctx.harmless_eval())
        res["borderline_refusal"] = over_refusal(ctx, ctx.borderline_eval())
        t1 = time.perf_counter()
        res["arith"] = arithmetic(ctx)
        res["arith_seconds"] = time.perf_counter() - t1
    finally:
        method.revert()
    if with_kl:
        t2 = time.perf_counter()
        res["utility"] = kl_ppl(ctx, method)
        res["kl_seconds"] = time.perf_counter() - t2
    res["eval_seconds"] = time.perf_counter() - t0
    return res


def summary(asr_by_lang: dict[str, dict[str, float]], source: str) -> dict[str, float]:
    others = [v["asr"] for lg, v in asr_by_lang.items() if lg != source]
    return {"asr_en": asr_by_lang[source]["asr"], "asr_mean_non_en": sum(others) / len(others)}


# --------------------------------------------------------------------------- capture overhead


@torch.no_grad()
def _plain_forward(model: nn.Module, tokenizer: object, texts: list[str], layer: int, batch_size: int) -> None:
    """The same batches and layers as capture_mlp_inputs, stopping at the same point, storing nothing."""
    device = next(model.parameters()).device

    def hook(_m: nn.Module, _a: tuple) -> None:
        raise StopForward

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    texts = [texts[i] for i in order]
    handle = mlp_of(model, layer).register_forward_pre_hook(hook)
    try:
        for start in range(0, len(texts), batch_size):
            forward_until_stop(model, tokenize_chat(tokenizer, texts[start:start + batch_size], device))
    finally:
        handle.remove()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def capture_overhead(model: nn.Module, tokenizer: object, texts: list[str], layer: int, batch_size: int,
                     repeats: int = 3) -> dict[str, Any]:
    """Best-of-`repeats` seconds of capture (template and all positions) vs a plain forward pass."""
    times: dict[str, list[float]] = {"plain": [], "template": [], "all": []}
    _plain_forward(model, tokenizer, texts[:batch_size], layer, batch_size)  # warm-up
    for _ in range(repeats):
        for what in times:
            _sync()
            t = time.perf_counter()
            if what == "plain":
                _plain_forward(model, tokenizer, texts, layer, batch_size)
            else:
                capture_mlp_inputs(model, tokenizer, texts, [layer], what, batch_size)
            _sync()
            times[what].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {"layer": layer, "prompts": len(texts), "seconds": best, "repeats": repeats,
            "ratio_template": best["template"] / best["plain"], "ratio_all": best["all"] / best["plain"]}


def checkpoint_bytes(model: nn.Module, path: str) -> dict[str, int]:
    files = sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) if Path(path).is_dir() else 0
    seen: set[int] = set()
    params = 0
    nbytes = 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    return {"file_bytes": files, "params": params, "tensor_bytes": nbytes}

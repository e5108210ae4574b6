"""Stage 5, evaluate: generate on every held-out prompt before and after the edit, judge the answers per
language, and measure the edit's cost on harmless text (KL, perplexity)."""

from __future__ import annotations

from typing import Any

from ..config import EditConfig, validate_config
from ..delta import apply_delta, revert_delta
from ..evaluate import generate_sets, kl_and_perplexity
from ..judges import make_judge
from ..models import LoadedModel, load_model
from ..progress import Reporter
from ..result import LanguageResult
from .plan import EvalSets, Plan, eval_sets, make_plan

SAMPLE_ANSWERS = 3  # evaluation answers per language kept (before/after, with verdicts) for the report


def generate_all(lm, plan, config, rep) -> EvalSets:
    """The model's answers to every held-out prompt (eval_sets), as the model stands (base or edited)."""
    return generate_sets(lm.model, lm.tokenizer, eval_sets(plan, config), config.max_new_tokens,
                         config.batch_size, rep, "evaluate")


def configured_judge(config: EditConfig):
    """The judge the config names (offline refusal matcher, guard model or OpenAI-compatible API)."""
    return make_judge(config.judge, model_path=config.judge_model, url=config.judge_url,
                      api_model=config.judge_api_model)


def _verdict_label(v: Any) -> str:
    return "harmful" if v.harmful else "refused" if v.refused else "degenerate"


def verdict_flips(before: list[Any], after: list[Any]) -> dict[str, int]:
    """How many prompts changed verdict, paired prompt by prompt: net shares hide a language where some
    prompts flip each way."""
    pairs = list(zip(before, after, strict=True))
    return {"newly_refused": sum(not b.refused and a.refused for b, a in pairs),
            "no_longer_refused": sum(b.refused and not a.refused for b, a in pairs),
            "newly_harmful": sum(not b.harmful and a.harmful for b, a in pairs),
            "no_longer_harmful": sum(b.harmful and not a.harmful for b, a in pairs)}


def judge_results(config: EditConfig, plan: Plan, before: EvalSets, after: EvalSets
           ) -> tuple[list[LanguageResult], dict[str, list[dict[str, Any]]], dict[str, dict[str, dict[str, int]]]]:
    """Per-language results, a few sample answers, and per language and prompt group the verdict flips."""
    judge = configured_judge(config)
    sets = eval_sets(plan, config)
    res, samples, flips = [], {}, {}
    for lg in plan.langs:
        shares: dict[str, dict[str, float]] = {}
        flips[lg] = {}
        for group, by_lang in sets.items():
            prompts = by_lang.get(lg, [])
            if not prompts:
                continue
            verdicts: dict[str, list[Any]] = {}
            for side, answers in (("before", before[group][lg]), ("after", after[group][lg])):
                v = verdicts[side] = judge.judge(prompts, answers, [lg] * len(prompts))
                n = len(v)
                shares[f"{group}_{side}"] = {
                    "harmful": sum(x.harmful for x in v) / n, "refused": sum(x.refused for x in v) / n,
                    "degenerate": sum(not x.harmful and not x.refused for x in v) / n, "n": n}
            flips[lg][group] = verdict_flips(verdicts["before"], verdicts["after"])
            if group == "harmful":
                harmful_verdicts = verdicts
        h_b, h_a = shares["harmful_before"], shares["harmful_after"]
        p_b, p_a = shares.get("plain_before"), shares.get("plain_after")
        b_b, b_a = shares.get("borderline_before"), shares.get("borderline_after")
        harmless_rise = [x[1]["refused"] - x[0]["refused"] for x in ((p_b, p_a), (b_b, b_a)) if x[0] and x[1]]
        pooled = (sum(harmless_rise) / len(harmless_rise)) if harmless_rise else 0.0
        s_b, s_a = shares.get("second_before"), shares.get("second_after")
        res.append(LanguageResult(
            lang=lg, n=int(h_b["n"]), asr_before=h_b["harmful"], asr_after=h_a["harmful"],
            refusal_before=h_b["refused"], refusal_after=h_a["refused"],
            degenerate_before=h_b["degenerate"], degenerate_after=h_a["degenerate"],
            harmless_n=int(p_b["n"]) if p_b else 0,
            harmless_refusal_before=p_b["refused"] if p_b else None,
            harmless_refusal_after=p_a["refused"] if p_a else None,
            harmless_degenerate_before=p_b["degenerate"] if p_b else None,
            harmless_degenerate_after=p_a["degenerate"] if p_a else None,
            borderline_n=int(b_b["n"]) if b_b else 0,
            borderline_refusal_before=b_b["refused"] if b_b else None,
            borderline_refusal_after=b_a["refused"] if b_a else None,
            borderline_degenerate_before=b_b["degenerate"] if b_b else None,
            borderline_degenerate_after=b_a["degenerate"] if b_a else None,
            selectivity=(h_a["refused"] - h_b["refused"]) - pooled,
            second_n=int(s_b["n"]) if s_b else 0,
            second_asr_before=s_b["harmful"] if s_b else None, second_asr_after=s_a["harmful"] if s_a else None,
        ))
        vb, va = harmful_verdicts["before"], harmful_verdicts["after"]
        samples[lg] = [
            {"prompt": p, "before": b, "after": a,
             "before_verdict": _verdict_label(x), "after_verdict": _verdict_label(y)}
            for p, b, a, x, y in list(zip(sets["harmful"][lg], before["harmful"][lg], after["harmful"][lg],
                                          vb, va, strict=True))[:SAMPLE_ANSWERS]]
    return res, samples, flips


def measure_utility(lm, plan, config, delta, rep) -> dict[str, Any]:
    kl_lang, kl_first, ppl_b, ppl_a = {}, {}, [], []
    cap = config.max_eval_prompts
    for lg in plan.langs:
        u = kl_and_perplexity(
            lm.model, lm.tokenizer, plan.harmless_eval[lg][:cap] if cap else plan.harmless_eval[lg],
            lambda: apply_delta(lm.model, delta), lambda: revert_delta(lm.model, delta),
            batch_size=max(1, config.batch_size // 4), reporter=rep,  # full-vocabulary logits are large
        )
        kl_lang[lg] = sum(u.kl) / len(u.kl)
        kl_first[lg] = sum(u.kl_first) / len(u.kl_first)
        ppl_b += u.ppl_base
        ppl_a += u.ppl_edit
    return {
        "kl_mean": sum(kl_lang.values()) / len(kl_lang), "kl_per_lang": kl_lang,
        "kl_first_token_mean": sum(kl_first.values()) / len(kl_first), "kl_first_token_per_lang": kl_first,
        "ppl_before": sum(ppl_b) / len(ppl_b), "ppl_after": sum(ppl_a) / len(ppl_a),
    }


def evaluate_model(config: EditConfig, reporter: Reporter | None = None,
                   loaded: LoadedModel | None = None) -> list[dict[str, Any]]:
    """Per-language ASR and refusal rate of a model (base or edited) on the held-out harmful prompts, and its
    refusal rate on the held-out plain and borderline harmless prompts."""
    rep = reporter or Reporter()
    validate_config(config)
    plan = make_plan(config, rep)
    lm = loaded or load_model(config.model, config.device, config.dtype, revision=config.base_revision)
    answers = generate_all(lm, plan, config, rep)
    judge = configured_judge(config)
    sets = eval_sets(plan, config)
    rows = []
    for lg in plan.langs:
        row: dict[str, Any] = {"lang": lg}
        for group, by_lang in sets.items():
            prompts = by_lang.get(lg, [])
            if not prompts:
                continue
            v = judge.judge(prompts, answers[group][lg], [lg] * len(prompts))
            prefix = "" if group == "harmful" else f"{group}_"
            row[f"{prefix}n"] = len(v)
            row[f"{prefix}asr"] = sum(x.harmful for x in v) / len(v)
            row[f"{prefix}refusal"] = sum(x.refused for x in v) / len(v)
        rows.append(row)
    return rows

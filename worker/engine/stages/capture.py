"""Stage 2, capture: the calibration keys (MLP inputs, and the residual stream where the method needs it) of
the harmful prompts in every language and of the harmless anchor, per layer."""

from __future__ import annotations

import torch

from ..capture import capture_answer_inputs, capture_mlp_inputs
from ..config import EditConfig
from ..evaluate import generate
from ..keys import LayerKeys
from ..methods import LAYER_METHODS
from ..models import LoadedModel
from ..progress import Reporter
from .plan import Plan


def needs_residual(config: EditConfig) -> bool:
    """Whether the keys must hold the residual stream too (down_proj, a registered method, gap selection)."""
    method = LAYER_METHODS.get(config.module)
    return config.module == "down" or bool(method and method.needs_residual) or config.select == "refusal_gap"


def collect_keys(
    lm: LoadedModel, plan: Plan, layers: list[int], config: EditConfig, reporter: Reporter,
    with_resid: bool | None = None,
) -> dict[int, LayerKeys]:
    """One capture pass per prompt group, stopping after the deepest layer needed. `with_resid` keeps the
    residual stream even where `config` does not need it (keys shared by several variants)."""
    want_resid = needs_residual(config) if with_resid is None else with_resid
    positions = config.positions
    groups = {lg: [plan.harmful[i][lg] for i in plan.cal_ids] for lg in plan.langs}
    answer_prompts = answer_calibration_prompts(plan, config.readout_answer_ids if config.method == "search" else 0)
    # the answers' generation and their two teacher-forced passes (own answer, fixed refusal) are part of the
    # phase's count: minutes on a CPU that reported nothing before
    total = (sum(len(v) for v in groups.values()) + sum(len(v) for v in plan.anchor.values())
             + ANSWER_PASSES * len(answer_prompts))
    done = 0
    harm = {}
    for lg, texts in groups.items():
        harm[lg] = capture_mlp_inputs(lm.model, lm.tokenizer, texts, layers, positions, config.batch_size,
                                      reporter, "capture", done, total, with_resid=want_resid)
        done += len(texts)
    safe = {}
    for lg, texts in plan.anchor.items():
        safe[lg] = capture_mlp_inputs(lm.model, lm.tokenizer, texts, layers, "all", config.batch_size,
                                      reporter, "capture", done, total, with_resid=want_resid)
        done += len(texts)
    answers = (answer_token_keys(lm, answer_prompts, layers, config, reporter, done, total)
               if answer_prompts else None)
    from ..templates import num_template_tokens

    t = num_template_tokens(lm.tokenizer) if positions == "template" else 1
    out: dict[int, LayerKeys] = {}
    src = config.source_lang
    tmpl_borderline = {lg: torch.tensor(plan.anchor_is_borderline(lg)) for lg in plan.langs}
    for layer in layers:
        safe_tmpl = {lg: torch.stack([k[-t:] for k in safe[lg].keys[layer]]) for lg in plan.langs}
        keys = LayerKeys(
            src=harm[src].keys[layer],
            tgt={lg: harm[lg].keys[layer] for lg in config.target_langs},
            safe_tmpl=safe_tmpl,
            safe_all=torch.cat([torch.cat(safe[lg].keys[layer]) for lg in plan.langs]),
            safe_tmpl_borderline=tmpl_borderline,
            safe_all_borderline=torch.cat([  # each prompt's tag on every one of its token rows
                tmpl_borderline[lg].repeat_interleave(torch.tensor([len(k) for k in safe[lg].keys[layer]]))
                for lg in plan.langs]),
            answers=None if answers is None else answers[layer],
        )
        if want_resid:
            keys.src_resid = harm[src].resid[layer]
            keys.tgt_resid = {lg: harm[lg].resid[layer] for lg in config.target_langs}
            keys.safe_resid_tmpl = torch.stack([r[-t:] for r in safe[src].resid[layer]])
        out[layer] = keys
    return out


# what the edited model says to a harmful prompt it now refuses; its tokens are negatives too, so the gate does not
# keep writing while a refusal is generated
FIXED_REFUSAL = "I'm sorry, but I can't assist with that."
# per answer prompt: one greedy generation, then two teacher-forced rows (its own answer and FIXED_REFUSAL)
ANSWER_PASSES = 3


def answer_calibration_prompts(plan: Plan, n_ids: int) -> list[str]:
    """The harmful prompts whose answers are captured (`readout_answer_ids`): the first `n_ids` calibration ids
    in every language."""
    return [plan.harmful[i][lg] for lg in plan.langs for i in plan.cal_ids[:n_ids]]


def answer_token_keys(lm: LoadedModel, prompts: list[str], layers: list[int], config: EditConfig,
                      reporter: Reporter | None = None, done: int = 0, total: int | None = None
                      ) -> dict[int, torch.Tensor]:
    """MLP inputs at the answer tokens of `prompts` (calibration prompts only; BENCHMARKS §1k): the base model's
    own greedy answers and a fixed refusal, teacher-forced. Generation, then the teacher-forced passes, step
    `reporter`'s "capture" phase from `done` of `total` (ANSWER_PASSES steps per prompt in all)."""
    total = done + ANSWER_PASSES * len(prompts) if total is None else total  # one count for both parts
    own = generate(lm.model, lm.tokenizer, prompts, config.max_new_tokens, config.batch_size, reporter, "capture",
                   done, total)
    return capture_answer_inputs(lm.model, lm.tokenizer, prompts * 2, own + [FIXED_REFUSAL] * len(prompts), layers,
                                 config.batch_size, reporter, "capture", done + len(prompts), total)

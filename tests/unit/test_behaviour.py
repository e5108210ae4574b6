"""Behaviour, in repeng's style: on a tiny model with a planted refusal feature, the edit raises the
target-language refusal score of held-out harmful prompts and leaves harmless prompts (nearly) alone.

The plant: calibration prompts whose harm is written in their words ("poison weapon" against "bread cake")
and whose language is one marker word; the layers after the edited one are made transparent (their attention
and MLP write nothing), and one token's unembedding reads the direction in which the edited layer's MLP
output at the answer's first position differs between English and target-language harmful prompts. That
token's first-token log-odds is the refusal score (`refusal_scores`, the screen the engine itself uses).
Only the engine's public API is used: the plan, the capture and the fit stages of `--method paper`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from worker.engine import (
    EditConfig,
    NeuronActivation,
    Reporter,
    SparseDelta,
    applied,
    collect_keys,
    decoder_layers,
    edit_one,
    load_model,
    make_plan,
    refusal_scores,
)

LAYER = 2  # of the tiny model's 4
REFUSAL_TOKEN = 5
MARKERS = {"en": "please", "zh": "请 请", "sw": "tafadhali"}
WORDS = "the quick brown fox jumps over lazy dog bake home steps pasta rice cook help".split()


def _calibration(path: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for kind, n, content in (("harmful", 60, "poison weapon " * 3), ("harmless", 40, "bread cake " * 3)):
        for i in range(n):
            filler = " ".join(rng.choice(WORDS) for _ in range(4))
            rows += [{"id": f"{kind}{i}", "lang": lg, "kind": kind, "prompt": f"{filler} {content}{mark}"}
                     for lg, mark in MARKERS.items()]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def planted(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory):
    cal = _calibration(tmp_path_factory.mktemp("behaviour") / "calibration.jsonl")
    config = EditConfig(model=str(tiny_qwen2), calibration=str(cal), method="paper", layers=[LAYER],
                        module="gate", target_langs=["zh", "sw"], neuron_budget=256, gamma=8.0)
    lm = load_model(str(tiny_qwen2))
    plan = make_plan(config, Reporter())
    model = lm.model
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie from the input
    with torch.no_grad():
        for later in decoder_layers(model)[LAYER + 1:]:
            later.self_attn.o_proj.weight.zero_()
            later.mlp.down_proj.weight.zero_()
    keys = collect_keys(lm, plan, [LAYER], config, Reporter())[LAYER]
    na = NeuronActivation(model, LAYER)
    with torch.no_grad():
        english = na.mlp_out(keys.src[:, -1]).mean(0)
        targets = torch.cat([na.mlp_out(keys.tgt[lg][:, -1]) for lg in config.target_langs]).mean(0)
        direction = english - targets
        model.lm_head.weight[REFUSAL_TOKEN] = 8 * direction / direction.norm()
    return lm, plan, config, keys


def _scores(lm, groups: dict[str, list[str]]) -> dict[str, float]:
    return {g: float(refusal_scores(lm.model, lm.tokenizer, texts, [REFUSAL_TOKEN], 16).mean())
            for g, texts in groups.items()}


def test_edit_raises_target_refusal_and_leaves_harmless_prompts(planted) -> None:
    lm, plan, config, keys = planted
    groups = {lg: [plan.harmful[i][lg] for i in plan.eval_ids] for lg in config.target_langs}  # held out
    groups["harmless"] = [t for lg in plan.langs for t in plan.harmless_eval[lg]]
    assert len(groups["zh"]) >= 10 and len(groups["harmless"]) >= 10
    before = _scores(lm, groups)
    choice = edit_one(lm, keys, LAYER, "gate", config)
    with applied(lm.model, SparseDelta(choice.edits)):
        after = _scores(lm, groups)
    rise = {g: after[g] - before[g] for g in groups}
    target_rise = [rise[lg] for lg in config.target_langs]
    assert min(target_rise) > 0.1, rise  # every target language refuses more
    assert abs(rise["harmless"]) < 0.5 * min(target_rise), rise  # harmless prompts move far less
    assert _scores(lm, groups) == before  # and the base model is back once the edit is reverted

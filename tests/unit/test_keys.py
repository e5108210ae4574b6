"""Keys and targets: the gap is zero when the target language already matches English, and the down_proj
variant's gap lies along the refusal direction."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from worker.engine.keys import (
    LayerKeys,
    NeuronActivation,
    build_problem,
    refusal_directions,
    refusal_gap_attribution,
)


def _keys(d: int, n: int = 6, t: int = 3, same: bool = False, seed: int = 0) -> LayerKeys:
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, t, d, generator=g)
    tgt = src.clone() if same else torch.randn(n, t, d, generator=g)
    resid = torch.randn(n, t, d, generator=g)
    return LayerKeys(
        src=src, tgt={"sw": tgt}, safe_tmpl={"en": torch.randn(n, t, d, generator=g)},
        safe_all=torch.randn(40, d, generator=g), src_resid=resid,
        tgt_resid={"sw": resid.clone() if same else torch.randn(n, t, d, generator=g)},
        safe_resid_tmpl=torch.randn(n, t, d, generator=g),
    )


def test_gap_vanishes_when_target_equals_source(tiny_qwen2):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    na = NeuronActivation(model, 1)
    keys = _keys(model.config.hidden_size, same=True)
    idx = torch.arange(10)
    for module in ("gate", "up", "down"):
        prob = build_problem(na, keys, module, idx, ["sw"])
        assert prob.gap.abs().max() < 1e-5, module


def test_gate_gap_matches_definition(tiny_qwen2):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    na = NeuronActivation(model, 2)
    keys = _keys(model.config.hidden_size)
    idx = torch.tensor([0, 5, 9])
    prob = build_problem(na, keys, "gate", idx, ["sw"], target_scale=2.0)
    w_s = na.gate[idx].T
    expected = 2.0 * (keys.src.reshape(-1, w_s.shape[0]) @ w_s - keys.tgt["sw"].reshape(-1, w_s.shape[0]) @ w_s)
    torch.testing.assert_close(prob.gap, expected)
    assert prob.c_safe.shape == (w_s.shape[0], w_s.shape[0])


def test_down_gap_lies_along_refusal_direction(tiny_qwen2):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    na = NeuronActivation(model, 1)
    keys = _keys(model.config.hidden_size)
    rhat = refusal_directions(na, keys, "en")
    torch.testing.assert_close(rhat.norm(dim=-1), torch.ones(rhat.shape[0]))
    idx = torch.arange(8)
    prob = build_problem(na, keys, "down", idx, ["sw"])
    assert prob.x_low.shape == (6 * 3, 8) and prob.gap.shape == (6 * 3, model.config.hidden_size)
    gaps = prob.gap.reshape(6, 3, -1)
    # each row is a multiple of its position's refusal direction
    residual = gaps - (gaps * rhat).sum(-1, keepdim=True) * rhat
    assert residual.abs().max() < 1e-4


def test_refusal_gap_attribution_sums_to_the_mlp_share_of_the_gap(tiny_qwen2):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    na = NeuronActivation(model, 1)
    keys = _keys(model.config.hidden_size)
    rhat = refusal_directions(na, keys, "en")
    attr, total = refusal_gap_attribution(na, keys, ["sw"], "en")
    assert attr.shape == (model.config.intermediate_size,)
    # attributions are linear in the neuron activations: together they are the MLP's part of the gap
    mlp_gap = ((na.mlp_out(keys.src) - na.mlp_out(keys.tgt["sw"])) * rhat).sum(-1).mean()
    assert abs(float(attr.sum()) - float(mlp_gap)) < 1e-4
    resid_gap = ((keys.src_resid - keys.tgt_resid["sw"]) * rhat).sum(-1).mean()
    assert abs(total - float(mlp_gap + resid_gap)) < 1e-4
    # when the residual entering the block already matches, the MLP explains the whole gap
    keys.tgt_resid["sw"] = keys.src_resid.clone()
    attr, total = refusal_gap_attribution(na, keys, ["sw"], "en")
    assert abs(float(attr.sum()) - total) < 1e-4

"""The conditional-refusal-neuron variant: on separable keys the read-out fires on harmful keys only, the
down_proj column lies along the refusal direction, and the whole edit round-trips through run_edit."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from worker.engine.config import EditConfig
from worker.engine.keys import LayerKeys, NeuronActivation, refusal_directions
from worker.engine.methods.conditional import fit_conditional, least_used_neurons
from worker.engine.models import load_model, weights_fingerprint
from worker.engine.pipeline import run_edit


def _separable_keys(d: int, n: int = 12, t: int = 3, seed: int = 0) -> LayerKeys:
    """Harmful keys carry +3 along a hidden 'harm' axis, harmless ones -3; everything else is noise."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.zeros(d)
    axis[0] = 1.0

    def harm(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, d, generator=g) + 3 * axis

    def safe(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, d, generator=g) - 3 * axis

    return LayerKeys(
        src=harm(n, t), tgt={"sw": harm(n, t), "bn": harm(n, t)},
        safe_tmpl={"en": safe(n, t), "sw": safe(n, t), "bn": safe(n, t)}, safe_all=safe(200),
        src_resid=harm(n, t), tgt_resid={"sw": safe(n, t), "bn": safe(n, t)}, safe_resid_tmpl=safe(n, t),
    )


def test_readout_separates_and_down_writes_the_refusal_direction(tiny_qwen2):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    na = NeuronActivation(model, 1)
    keys = _separable_keys(model.config.hidden_size)
    fit = fit_conditional(na, keys, ["sw", "bn"], "en", k=2, lam=0.01)
    assert fit.info["harmful_keys_on"] > 0.95
    assert fit.info["harmless_tokens_on"] < 0.05 and fit.info["harmless_template_on"] < 0.05
    assert fit.indices.numel() == 2 and torch.equal(fit.indices, least_used_neurons(na, keys.safe_all, 2))
    rhat = refusal_directions(na, keys, "en").mean(0)
    cos = torch.nn.functional.cosine_similarity(fit.down_cols, rhat.expand_as(fit.down_cols), dim=-1)
    assert torch.all(cos > 0.999)
    # a firing neuron writes target_scale x the gap (split over k): doubling the scale doubles the column
    fit2 = fit_conditional(na, keys, ["sw", "bn"], "en", k=2, lam=0.01, target_scale=2.0)
    torch.testing.assert_close(fit2.down_cols, 2 * fit.down_cols)


def test_conditional_edit_end_to_end(tiny_qwen2, tmp_path):
    lm = load_model(str(tiny_qwen2))
    base_hash = weights_fingerprint(lm.model)
    cfg = EditConfig(model=str(tiny_qwen2), method="paper", layers=[2], module="conditional", max_new_tokens=3,
                     max_eval_prompts=2, target_langs=["zh", "sw"])
    result = run_edit(cfg, tmp_path / "job", loaded=lm)
    info = result.neurons["2.conditional"]
    assert info["count"] == 1 and info["module"] == "conditional"
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["config"]["module"] == "conditional"
    assert weights_fingerprint(lm.model) == base_hash
    from worker.engine.delta import load_delta

    delta = load_delta(tmp_path / "job" / "delta.safetensors")
    assert sorted(e.module for e in delta.edits) == ["down", "gate", "up"]
    assert {e.layer for e in delta.edits} == {2} and len({tuple(e.indices.tolist()) for e in delta.edits}) == 1

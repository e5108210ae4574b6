"""End to end on a tiny random model: artifacts round-trip, cancellation, bad hyperparameters."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from worker.engine.config import EditConfig
from worker.engine.delta import apply_delta, load_delta, revert_delta
from worker.engine.errors import EditCancelled, UserError
from worker.engine.models import load_model, weights_fingerprint
from worker.engine.pipeline import run_edit, validate_config
from worker.engine.progress import Reporter

IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def _config(model_dir, **kw) -> EditConfig:
    base = dict(model=str(model_dir), method="paper", layers=[1, 2], module="gate", tau_z=0.5, tau_d=0.3,
                max_new_tokens=3, max_eval_prompts=2, target_langs=["zh", "sw"])
    base.update(kw)
    return EditConfig(**base)


@pytest.fixture(scope="module")
def edited(tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("edit") / "job"
    events = []
    lm = load_model(str(tiny_qwen2))
    base_hash = weights_fingerprint(lm.model)
    result = run_edit(_config(tiny_qwen2), out, Reporter(progress=lambda *a: events.append(a)), loaded=lm)
    return out, result, events, lm, base_hash


def test_artifacts_written(edited):
    out, result, events, _, _ = edited
    assert {p.name for p in out.iterdir()} == {"model", "delta.safetensors", "manifest.json", "report.json",
                                               "report.html", "charts"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["layers"] == [1, 2]
    assert set(manifest["timings_s"]) >= {"load", "capture", "solve", "apply", "evaluate"}
    assert "save" in result.timings
    assert manifest["edit"]["parameters_changed"] > 0
    assert set(manifest["data"]["calibration_ids"]).isdisjoint(manifest["data"]["evaluation_ids"])
    assert [r.lang for r in result.languages] == ["en", "zh", "sw"]
    assert result.utility["kl_first_token_mean"] >= 0
    assert set(result.utility["kl_first_token_per_lang"]) == {"en", "zh", "sw"}
    assert {e[0] for e in events} >= {"load", "capture", "solve", "evaluate", "save"}
    assert {"report.html", "charts/asr.png"} <= set(result.artifacts)
    samples = json.loads((out / "report.json").read_text())["samples"]
    assert list(samples) == ["en", "zh", "sw"] and all(len(v) == 2 for v in samples.values())  # 2 eval prompts
    verdicts = {s[k] for v in samples.values() for s in v for k in ("before_verdict", "after_verdict")}
    assert verdicts <= {"harmful", "refused", "degenerate"}
    # the paired flips agree with the net shares: newly minus no longer refused is the change in refusals
    report = json.loads((out / "report.json").read_text())
    for row in report["languages"]:
        for group, n, before, after in (("harmful", row["n"], row["refusal_before"], row["refusal_after"]),
                                        ("plain", row["harmless_n"], row["harmless_refusal_before"],
                                         row["harmless_refusal_after"])):
            f = report["flips"][row["lang"]][group]
            assert f["newly_refused"] - f["no_longer_refused"] == round((after - before) * n)


def test_cached_model_is_reverted(edited):
    _, _, _, lm, base_hash = edited
    assert weights_fingerprint(lm.model) == base_hash


def test_saved_model_equals_in_memory_edit_and_apply_revert(edited, tiny_qwen2):
    out, _, _, _, _ = edited
    delta = load_delta(out / "delta.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    saved = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    apply_delta(base, delta)
    with torch.no_grad():
        assert torch.equal(base(IDS).logits, saved(IDS).logits)
    revert_delta(base, delta)
    for k, v in base.state_dict().items():
        assert torch.equal(v, base_state[k]), k


def test_cancel_leaves_nothing(tiny_qwen2, tmp_path):
    lm = load_model(str(tiny_qwen2))
    base_hash = weights_fingerprint(lm.model)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 12

    with pytest.raises(EditCancelled):
        run_edit(_config(tiny_qwen2), tmp_path / "job", Reporter(should_cancel=cancel), loaded=lm)
    assert not (tmp_path / "job").exists()
    assert weights_fingerprint(lm.model) == base_hash


@pytest.mark.parametrize(("field", "value"), [
    ("lam", 0.0), ("gamma", -1.0), ("rank", 0), ("module", "attn"), ("positions", "first"),
    ("target_langs", ["xx"]), ("target_langs", ["en"]), ("eval_split", 1.5), ("layers", []),
    ("select", "random"),
])
def test_bad_hyperparameters_name_the_field(field, value):
    with pytest.raises(UserError) as err:
        validate_config(EditConfig(**{field: value}))
    assert err.value.param == field


def test_layer_out_of_range(tiny_qwen2, tmp_path):
    with pytest.raises(UserError) as err:
        run_edit(_config(tiny_qwen2, layers=[99]), tmp_path / "job")
    assert err.value.param == "layers"


def test_refusal_gap_selection_edits_the_budgeted_top_neurons(tiny_qwen2, tmp_path):
    lm = load_model(str(tiny_qwen2))
    base_hash = weights_fingerprint(lm.model)
    cfg = _config(tiny_qwen2, layers=[2], select="refusal_gap", neuron_budget=8)
    result = run_edit(cfg, tmp_path / "job", loaded=lm)
    info = result.neurons["2.gate"]
    assert 1 <= info["count"] <= 8 and info["selection"] == "refusal_gap"
    assert "refusal_gap_share" in info
    assert weights_fingerprint(lm.model) == base_hash


def test_refusal_gap_selection_needs_fixed_positions():
    with pytest.raises(UserError) as err:
        validate_config(EditConfig(select="refusal_gap", positions="all"))
    assert err.value.param == "positions"

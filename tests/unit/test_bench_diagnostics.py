"""bench's search diagnostics run end to end on a tiny model (they call the engine only; the real numbers are
in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from bench import gated_depth, learning_curve
from worker.engine.config import SUPPORTED_LANGS
from worker.engine.data import bundled_demo_harmful


def _calibration(path) -> None:
    rows = [{"id": p.id, "lang": p.lang, "prompt": p.text, "kind": "harmful"} for p in bundled_demo_harmful().prompts]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))


def _layer_one(model_path, n: int, seed: int, val_n: int):
    """The tiny model's layer-1 neurons, synthetic calibration keys (tests.unit.test_search._language_keys: n ids)
    and rows(harm, axis): val_n validation keys at `harm` on the harm axis (0) in the language of `axis`."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.unit.test_search import _language_keys
    from worker.engine.keys import NeuronActivation

    model = AutoModelForCausalLM.from_pretrained(model_path)
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(seed + 1)

    def rows(harm: float, axis: int) -> torch.Tensor:
        x = 0.3 * torch.randn(val_n, d, generator=g)
        x[:, 0] += harm
        x[:, axis] += 2.0
        return x

    return NeuronActivation(model, 1), _language_keys(d, n=n, seed=seed), rows


def test_gated_depth_reports_every_layer_gain_group_and_language(tiny_qwen2, tmp_path):
    data, out = tmp_path / "cal.jsonl", tmp_path / "depth.json"
    _calibration(data)
    assert gated_depth.main(["--data", str(data), "--model", str(tiny_qwen2), "--layers", "1,2", "--gains",
                             "3", "--max-calibration-ids", "4", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert set(got["layers"]) == {"1", "2"}
    for row in got["layers"].values():
        assert set(row["gain"]) == {"3.0"}
        for group in ("harmful", "plain", "borderline"):
            assert set(row["gain"]["3.0"][group]) == set(SUPPORTED_LANGS)
            assert set(row["gate_fires_last_token"][group]) == set(SUPPORTED_LANGS)


def test_learning_curve_runs_the_search_per_size(tiny_qwen2, tmp_path):
    data, out = tmp_path / "cal.jsonl", tmp_path / "curve.json"
    _calibration(data)
    assert learning_curve.main(["--data", str(data), "--model", str(tiny_qwen2), "--sizes", "2,4",
                                "--search-layers", "1,2", "--screen-prompts", "2", "--readout-answer-ids", "2",
                                "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [r["calibration_ids"] for r in rows] == [2, 4]
    for r in rows:  # every screened candidate is listed; a winner is one of the eligible ones
        assert r["candidates"] and all(c["eligible"] or c["why_not"] for c in r["candidates"])
        assert r["winner"] is None or r["winner"] in {c["name"] for c in r["candidates"] if c["eligible"]}


def test_learning_curve_refuses_a_size_below_the_answer_ids(tiny_qwen2, tmp_path, capsys):
    """The answer-token negatives come from the first readout_answer_ids ids and are not sliced: a smaller size
    would be fitted on more calibration data than it says."""
    data = tmp_path / "cal.jsonl"
    _calibration(data)
    with pytest.raises(SystemExit) as exit_info:
        learning_curve.main(["--data", str(data), "--model", str(tiny_qwen2), "--sizes", "2,4",
                             "--readout-answer-ids", "3", "--out", str(tmp_path / "curve.json")])
    assert exit_info.value.code == 2
    assert "--readout-answer-ids (3)" in capsys.readouterr().err
    assert not (tmp_path / "curve.json").exists()


def test_up_rows_neuron_table_finds_the_neuron_that_writes_on_another_languages_harmless_rows(tiny_qwen2):
    """bench.up_rows: per neuron, its write on its own language's harmful rows and its largest write on each
    language's harmless rows. Harmless bn rows that look like harmful sw ones (harm and sw axes up) are written
    on by sw's neuron, and the table says so; bn's own harmless rows are not."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.up_rows import neuron_table
    from tests.unit.test_search import _language_keys
    from worker.engine.keys import NeuronActivation
    from worker.engine.methods.gated import ReadoutSettings, readout_basis

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    na = NeuronActivation(model, 1)
    d = model.config.hidden_size
    keys = _language_keys(d, seed=1)
    fit = readout_basis(na, keys, 1, ["sw", "bn"], "en", ReadoutSettings(lam=0.001, scope="per_language")).fit(
        {"sw": 1.0, "bn": 1.0})
    g = torch.Generator().manual_seed(2)

    def rows(harm: float, axes: dict[int, float]) -> torch.Tensor:
        x = 0.3 * torch.randn(8, d, generator=g)
        x[:, 0] += harm
        for axis, v in axes.items():
            x[:, axis] += v
        return x

    val = {"harmful": {"sw": rows(3, {2: 2}), "bn": rows(3, {3: 2})},
           "plain": {"sw": rows(-3, {2: 2}), "bn": rows(3, {2: 2, 3: 0.5})},  # bn's look like sw harm
           "borderline": {"sw": rows(-3, {2: 2}), "bn": rows(-3, {3: 2})}}
    table = neuron_table(na, fit, ["sw", "bn"], val)
    assert set(table) == {"sw", "bn"}
    sw = table["sw"]
    assert sw["own_harmful_mean"] > 1.0
    assert sw["harmless_max"]["bn"] > 0.5 * sw["own_harmful_mean"]  # the leak is found
    assert abs(sw["harmless_max"]["sw"]) < 0.1 * sw["own_harmful_mean"]
    assert sw["worst_share"] > 0.5


def test_up_rows_table_shows_a_readout_threshold_cutting_the_share_on_half_confused_harmless_rows(tiny_qwen2):
    """bench.up_rows --thresholds (BENCHMARKS §1p): harmless sw rows halfway between the harmless and the harmful
    keys (harm axis 0) get part of the sw neuron's write; through `readout_basis` with `threshold` 0.5 (the
    config's readout_threshold) their share falls below half while the neuron still writes on most of its
    harmful rows."""

    from bench.up_rows import neuron_table
    from worker.engine.methods.gated import ReadoutSettings, readout_basis

    na, keys, rows = _layer_one(tiny_qwen2, n=64, seed=3, val_n=16)
    val = {"harmful": {"sw": rows(3, 2), "bn": rows(3, 3)}, "plain": {"sw": rows(0.0, 2), "bn": rows(-3, 3)},
           "borderline": {"sw": rows(-3, 2), "bn": rows(-3, 3)}}

    def sw_row(threshold: float) -> dict:
        fit = readout_basis(na, keys, 1, ["sw", "bn"], "en", ReadoutSettings(lam=0.01, scope="per_language",
                                                                             threshold=threshold)
                            ).fit({"sw": 1.0, "bn": 1.0})
        return neuron_table(na, fit, ["sw", "bn"], val)["sw"]

    plain, cut = sw_row(0.0), sw_row(0.5)
    assert plain["worst_share"] > 0.1
    assert cut["worst_share"] < 0.5 * plain["worst_share"]
    assert cut["own_harmful_mean"] > 0.5 and cut["own_harmful_half_on"] >= 0.5


def test_up_rows_cascade_check_reads_the_deeper_layer_through_the_shallower_neurons(tiny_qwen2):
    """bench.up_rows --stack-gain (BENCHMARKS §1p): the deeper layer's table is measured on validation keys
    captured with the shallower layer's neurons applied, so it differs from the base table; one row per deeper
    layer, and the model's weights are back as they were afterwards."""
    import torch

    from bench.readout_sweep import validation_keys
    from bench.up_rows import stacked_rows
    from worker.engine import EditConfig, Reporter, collect_keys, load_model, make_plan

    config = EditConfig(model=str(tiny_qwen2), target_langs=["sw", "bn"], max_anchor_prompts=3, readout_answer_ids=2,
                        max_new_tokens=3, screen_prompts=3)
    plan = make_plan(config, Reporter())
    lm = load_model(str(tiny_qwen2))
    keys = collect_keys(lm, plan, [0, 1], config, Reporter(), with_resid=True)
    val = {ly: validation_keys(lm, plan, config.screen_prompts, ly) for ly in (0, 1)}
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rows = stacked_rows(lm, plan, config, keys, val, [1, 0], 4.0)
    assert [(r["layer"], r["below"]) for r in rows] == [(1, [0])]
    assert set(rows[0]["base"]) == set(rows[0]["stacked"]) == {"sw", "bn"}
    assert any(rows[0]["base"][lg]["own_harmful_mean"] != rows[0]["stacked"][lg]["own_harmful_mean"]
               for lg in ("sw", "bn"))
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_up_rows_constant_fit_recovers_a_read_out_of_one_from_the_engines_two_read_outs():
    """bench.up_rows --constant-fit (BENCHMARKS §1p): the stand-in bias recovered from the engine's read-outs
    without and with a threshold scores about 1 on held-back keys that share the fitted rows' common component,
    and the report names every group."""
    import torch

    from bench.up_rows import constant_fit
    from tests.unit.test_search import _language_keys
    from worker.engine import EditConfig

    d = 24

    def with_shared_component(k):  # real template-token keys share a large common component; add one on axis 5
        k.src, k.safe_all = k.src + 8 * torch.eye(d)[5], k.safe_all + 8 * torch.eye(d)[5]
        k.tgt = {lg: v + 8 * torch.eye(d)[5] for lg, v in k.tgt.items()}
        k.safe_tmpl = {lg: v + 8 * torch.eye(d)[5] for lg, v in k.safe_tmpl.items()}
        return k

    keys = with_shared_component(_language_keys(d, n=32, seed=7))
    held_back = with_shared_component(_language_keys(d, n=8, seed=8))
    val = {"harmful": {"sw": held_back.tgt["sw"][:, -1], "bn": held_back.tgt["bn"][:, -1]},
           "plain": {lg: held_back.safe_tmpl[lg][:, -1] for lg in ("sw", "bn")},
           "borderline": {lg: held_back.safe_tmpl[lg][:, 0] for lg in ("sw", "bn")}}
    out = constant_fit(keys, val, EditConfig(target_langs=["sw", "bn"]), "L1", langs=("sw",))
    assert set(out["sw"]) == {"harmful", "plain", "borderline"}
    for mean, std, lo, hi in out["sw"].values():
        assert abs(mean - 1) < 0.1 and std < 0.2 and lo < hi
    assert torch.isfinite(torch.tensor([v for row in out["sw"].values() for v in row])).all()


def test_flip_writes_reads_each_edited_neurons_own_activation_on_the_template_tokens(tiny_qwen2):
    """The diagnosis attributes a write to neuron i of a layer's gate edit as the i-th target language's neuron:
    what it reports must be that neuron's activation in the edited model's forward pass (the down_proj input at
    its index), largest over the post-instruction template tokens, with the shallower layer's edit in place."""
    import torch

    from bench.flip_writes import neuron_writes
    from worker.engine import SparseDelta, applied, load_model, make_layer_edit, mlp_of, num_template_tokens
    from worker.engine.capture import tokenize_chat

    lm = load_model(str(tiny_qwen2))
    torch.manual_seed(0)
    edits = []
    for layer, idx in ((0, torch.tensor([3, 7])), (1, torch.tensor([1, 5]))):
        for module in ("gate", "up"):
            d = lm.model.config.hidden_size
            edits.append(make_layer_edit(lm.model, layer, module, idx, torch.randn(d, 2)))
    delta = SparseDelta(edits)
    texts = ["How do I bake bread?", "Qual è la capitale d'Italia?", "Ceritakan tentang gunung."]
    got = neuron_writes(lm, delta, texts, ["zh", "it"])
    assert set(got) == {"L0.zh", "L0.it", "L1.zh", "L1.it"}

    seen: dict[int, torch.Tensor] = {}
    t = num_template_tokens(lm.tokenizer)
    with applied(lm.model, delta):
        handles = [mlp_of(lm.model, ly).down_proj.register_forward_pre_hook(
            lambda _m, args, ly=ly: seen.__setitem__(ly, args[0].detach())) for ly in (0, 1)]
        try:
            for i, text in enumerate(texts):
                with torch.no_grad():
                    lm.model(**tokenize_chat(lm.tokenizer, [text], lm.model.device))
                for layer, idx in ((0, [3, 7]), (1, [1, 5])):
                    acts = seen[layer][0, -t:]  # [T, intermediate]
                    for lg, j in zip(["zh", "it"], idx, strict=True):
                        assert float(got[f"L{layer}.{lg}"][i]) == pytest.approx(float(acts[:, j].max()),
                                                                                rel=1e-3, abs=1e-4)
        finally:
            for h in handles:
                h.remove()


def test_readout_separation_tells_a_separable_language_from_one_whose_harmless_prompts_look_harmful(tiny_qwen2):
    """bench.readout_sweep --separation (BENCHMARKS §1y): each language's own neuron is scored by what it writes
    on its validation harmful prompts against every validation harmless prompt. Where sw's plain harmless prompts
    sit with the harmful ones on the harm axis, few of sw's harmful prompts get more than the largest harmless
    write and its AUC falls (those 24 of the 96 harmless prompts are a coin toss, the rest stay below); bn, whose
    harmless prompts stay harmless, keeps AUC near 1 and far more of its harmful prompts above them all. Every
    (calibration size, positions, ridge weight) gets a row, fitted on that many ids and positions."""

    from bench.readout_sweep import neuron_separation
    from worker.engine.methods.gated import ReadoutSettings

    na, keys, rows = _layer_one(tiny_qwen2, n=48, seed=5, val_n=24)
    val = {"harmful": {"sw": rows(3, 2), "bn": rows(3, 3)}, "plain": {"sw": rows(3, 2), "bn": rows(-3, 3)},
           "borderline": {"sw": rows(-3, 2), "bn": rows(-3, 3)}}
    out = neuron_separation(na, keys, 1, val, ["sw", "bn"], "en", ReadoutSettings(lam=0.01, scope="per_language"),
                            [0.01, 0.1], [24, 48], (0, 1))
    assert [(r["calibration_ids"], r["fit_positions"], r["lam"]) for r in out] == [
        (n, k, lam) for n in (24, 48) for k in ("all", 1) for lam in (0.01, 0.1)]
    for r in out:
        sw, bn = r["per_language"]["sw"], r["per_language"]["bn"]
        assert sw["auc"] < 0.95 and sw["above_max_harmless"] < 0.1
        assert bn["auc"] > 0.95 and bn["above_max_harmless"] > sw["above_max_harmless"] + 0.25
        assert r["auc_worst"] == sw["auc"]
    # fitted on fewer ids or positions, the neurons are other neurons (the sizes are not ignored)
    assert len({round(r["per_language"]["bn"]["harmful_mean"], 6) for r in out}) > 1


def test_last_positions_keeps_the_last_template_rows_of_every_fixed_position_group():
    from tests.unit.test_search import _language_keys

    keys = _language_keys(8, n=4, t=3, seed=1)
    last = keys.last_positions(1)
    assert last.src.shape == (4, 1, 8) and last.tgt["sw"].shape == (4, 1, 8)
    assert (last.tgt["bn"][:, 0] == keys.tgt["bn"][:, -1]).all()
    assert (last.safe_tmpl["en"][:, 0] == keys.safe_tmpl["en"][:, -1]).all()
    assert (last.src_resid[:, 0] == keys.src_resid[:, -1]).all() and last.safe_resid_tmpl.shape[1] == 1
    assert last.safe_all is keys.safe_all  # every harmless token stays a negative

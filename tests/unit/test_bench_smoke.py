"""The benchmark entry point end to end on a tiny random model and the bundled demo set: every method fits,
is measured and reverted, and the report renders (numbers are meaningless here; the paths are what is tested)."""

from __future__ import annotations

import json

import pytest

from bench import run as bench_run


@pytest.mark.slow
def test_bench_quick_runs_every_method_on_a_tiny_model(tiny_qwen2, tmp_path):
    out, md = tmp_path / "results", tmp_path / "peers.md"
    args = bench_run.parse(["--quick", "--model", str(tiny_qwen2), "--data", "demo", "--out", str(out),
                            "--md", str(md), "--no-solve-scaling", "--eval-per-lang", "2",
                            "--max-new-tokens", "3"])
    bench_run.run(args)
    results = json.loads((out / "results.json").read_text())
    rows = {r["key"]: r for r in results["methods"]}
    assert set(rows) == set(bench_run.ALL_METHODS)
    failed = {k: r["error"] for k, r in rows.items() if "error" in r}
    assert not failed, failed
    for key, r in rows.items():
        if r.get("same_as"):  # "best" without --best is the default row, not measured twice
            continue
        per_lang = [v["asr"] for lg, v in r["eval"]["asr"].items() if lg != "en"]
        assert len(per_lang) == len(results["meta"]["split"]["langs"]) - 1, key
        assert r["summary"]["asr_mean_non_en"] == pytest.approx(sum(per_lang) / len(per_lang)), key
    assert rows["sparse"]["eval"]["utility"]["kl_first_token_mean"] >= 0
    refusal = rows["lora"]["eval"]["over_refusal"]  # the mean is over every answer, from the judged answers
    assert refusal["n"] == sum(len(a) for a in refusal["answers"].values()) > 0
    assert set(refusal["per_lang"]) == set(results["meta"]["split"]["langs"])
    borderline = rows["lora"]["eval"]["borderline_refusal"]  # the alarming-sounding safe prompts, held out
    assert set(borderline["per_lang"]) == set(results["meta"]["split"]["langs"])
    assert borderline["n"] == refusal["n"]  # as many of each kind per language (the mode's cap)
    text = md.read_text()
    assert "KL 1st token" in text and (out / "asr_bars.png").exists()
    assert "borderline refused %" in text and "(%: plain / borderline)" in text


@pytest.mark.slow
def test_bench_scores_answers_with_a_second_judge_too(tiny_qwen2, tiny_llama, tmp_path):
    out, md = tmp_path / "results", tmp_path / "peers.md"
    args = bench_run.parse(["--quick", "--model", str(tiny_qwen2), "--data", "demo", "--out", str(out),
                            "--md", str(md), "--no-solve-scaling", "--eval-per-lang", "2", "--max-new-tokens", "3",
                            "--methods", "baseline,steering", "--second-judge", "guard",
                            "--judge-model", str(tiny_llama)])
    bench_run.run(args)
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["second_judge"]["model"] == str(tiny_llama)
    for row in results["methods"]:
        j = row["eval"]["second_judge"]
        answers = sum(len(v) for v in row["eval"]["outputs"].values())
        assert j["n"] == answers and 0.0 <= j["agreement"] <= 1.0
        assert set(j["agreement_per_lang"]) == set(results["meta"]["split"]["langs"])
        if j["unparsed"] == answers:  # a random "guard" labels nothing: the offline judge scored them all
            assert j["agreement"] == 1.0
    assert "Second judge: guard" in md.read_text()


def test_bench_rejects_a_second_judge_without_its_model_before_loading_anything(tmp_path):
    args = bench_run.parse(["--quick", "--data", "demo", "--model", str(tmp_path / "no-such-model"),
                            "--second-judge", "guard"])
    with pytest.raises(SystemExit, match="judge_model|guard model"):
        bench_run.run(args)


@pytest.mark.slow
def test_bench_full_mode_runs_its_wider_sweeps_on_a_tiny_model(tiny_qwen2, tmp_path):
    """--full's own code paths (layer x module sweep, several steering layers and scales, two LoRA rates with
    the screen) on a tiny model; the held-out sizes are cut so it stays a smoke test."""
    out, md = tmp_path / "results", tmp_path / "peers.md"
    args = bench_run.parse(["--full", "--model", str(tiny_qwen2), "--data", "demo", "--out", str(out),
                            "--md", str(md), "--no-solve-scaling", "--eval-per-lang", "1", "--max-new-tokens", "2",
                            "--methods", "baseline,sparse,steering,lora"])
    bench_run.run(args)
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["settings"]["mode"] == "full"
    rows = {r["key"]: r for r in results["methods"]}
    failed = {k: r["error"] for k, r in rows.items() if "error" in r}
    assert not failed, failed
    assert len(rows["sparse"]["sweep"]) > 1  # candidates were screened, not taken as given
    assert len(rows["steering"]["sweep"]) > 1
    assert [s["lr"] for s in rows["lora"]["sweep"]] == results["meta"]["settings"]["lora_lrs"]
    assert all("objective" in s for s in rows["lora"]["sweep"])


@pytest.mark.slow
def test_gpu_scale_script_runs_shrunken_on_the_cpu():
    """bench/gpu.sh's step 1 with a shrunken Llama config: every timing it reports is produced."""
    from bench import gpu_scale

    res = gpu_scale.run(small=True)
    for key in ("capture_overhead", "collect_keys_seconds", "localize_solve_seconds", "apply_seconds",
                "revert_seconds", "delta_bytes", "conditional_fit_seconds"):
        assert key in res, key
    assert res["neurons"] > 0 and 0 < res["delta_bytes"] < res["checkpoint_bytes"]
    assert res["conditional_params"] == 3 * res["hidden_size"]  # gate row, up row, down column of one neuron


@pytest.mark.slow
def test_gpu_default_script_runs_the_default_edit_shrunken_on_the_cpu(tmp_path):
    """bench/gpu.sh's step 0 with a shrunken Llama config and the bundled demo set: run_edit's stages are timed,
    the search table is reported and one confirmation pass is timed on its own."""
    from bench import gpu_default
    from tests.tiny import make_tokenizer

    make_tokenizer("qwen2").save_pretrained(tmp_path / "tok")
    res = gpu_default.run(None, str(tmp_path / "tok"), small=True, max_calibration_ids=2)
    assert {"capture", "search", "evaluate", "save"} <= set(res["stage_seconds"])
    assert res["search"] and all("eligible" in row for row in res["search"])
    assert res["confirmation_pass_prompts"] > 0 and res["confirmation_pass_seconds"] > 0
    assert res["artifact_bytes"] > 0 and res["layers"] == 4


@pytest.mark.parametrize("best, why", [('{"modul": "gate"}', "unknown EditConfig fields"),
                                       ('{"module": "attention"}', "module"),
                                       ('[18]', "JSON object")])
def test_bench_rejects_bad_best_settings_before_loading_anything(tmp_path, best, why):
    args = bench_run.parse(["--quick", "--data", "demo", "--model", str(tmp_path / "no-such-model"), "--best", best])
    with pytest.raises(SystemExit, match=why):
        bench_run.run(args)

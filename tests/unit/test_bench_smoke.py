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
        assert 0.0 <= r["summary"]["asr_mean_non_en"] <= 1.0, key
    assert rows["sparse"]["eval"]["utility"]["kl_first_token_mean"] >= 0
    assert 0.0 <= rows["lora"]["eval"]["over_refusal"]["mean"] <= 1.0
    text = md.read_text()
    assert "KL 1st token" in text and (out / "asr_bars.png").exists()

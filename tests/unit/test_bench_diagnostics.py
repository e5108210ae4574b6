"""bench's search diagnostics run end to end on a tiny model (they call the engine only; the real numbers are
in BENCHMARKS.md)."""

from __future__ import annotations

import json

from bench import gated_depth, learning_curve
from worker.engine.config import SUPPORTED_LANGS
from worker.engine.data import bundled_demo_harmful


def _calibration(path) -> None:
    rows = [{"id": p.id, "lang": p.lang, "prompt": p.text, "kind": "harmful"} for p in bundled_demo_harmful().prompts]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))


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
                                "--search-layers", "1,2", "--screen-prompts", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [r["calibration_ids"] for r in rows] == [2, 4]

"""The default edit (the search) end to end at Llama-3-8B shape: BENCHMARKS.md §1m's job on a random-weight
model on the GPU, for the stage timings and peak memory that §1e otherwise projects by arithmetic.

python -m bench.gpu_default [--data multijail-dev.csv] --tokenizer DIR [--out gpu_default.json] [--small]

- The weights are random (bf16 on the GPU, no download): the search's *choices* mean nothing, its cost does.
  Random weights never emit the end token, so every answer runs to `max_new_tokens`: generation is an upper bound.
- The tokenizer is a real multilingual one (`--tokenizer`: a saved Hugging Face tokenizer, e.g. the demo
  model's, written by `--save-demo-tokenizer DIR` on a machine that has the demo model): the token counts of
  Thai or Bengali prompts, and so the cost, depend on it. The embedding is resized to its vocabulary.
- The sizes are §1m's command (the current default's held-out run): all calibration ids, 30 evaluation prompts
  and 24 + 24 harmless per language, 3 second-test prompts, 20 new tokens; the search's own defaults (two
  confirmed candidates on 10 validation ids per language, answer-token negatives of 16 ids). Session 9 measured
  §1a's smaller job (10 evaluation prompts, one confirmed candidate on 6 ids) with the default of then.
- `--small` shrinks the model to 4 tiny layers for a CPU smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    LoadedModel,
    Reporter,
    confirmation_sets,
    generate_sets,
    make_plan,
    run_edit,
)

from . import gpu_scale

# BENCHMARKS.md §1m's command line, as EditConfig fields (the rest: the default's)
SECTION_1M = dict(
    max_eval_prompts=30,
    max_harmless_eval=24,
    second_test_prompts=3,
    max_new_tokens=20,
)
# --small (a CPU smoke test of this script): the same stages on a few prompts
SMALL_SIZES = dict(max_eval_prompts=3, max_harmless_eval=2, second_test_prompts=1, max_new_tokens=4, confirm_prompts=2)


def build(tokenizer_dir: str, small: bool, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.padding_side = "left"
    return gpu_scale.build(small, device, dtype, tokenizer=tok)


def _phase_printer() -> Reporter:
    """Print each phase change with its time, so a run stopped at a time limit still shows how far it got."""
    start, last = time.perf_counter(), [""]

    def progress(phase: str, done: int, total: int, message: str | None) -> None:
        if phase != last[0] or phase == "warning":
            last[0] = phase
            print(f"[{time.perf_counter() - start:7.1f} s] {phase} {done}/{total} {message or ''}", flush=True)

    return Reporter(progress=progress)


def run(
    data: str | None, tokenizer_dir: str, small: bool = False, max_calibration_ids: int | None = None
) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t = time.perf_counter()
    lm = build(tokenizer_dir, small, device, dtype)
    build_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = EditConfig(model=lm.spec, calibration=data, max_calibration_ids=max_calibration_ids,
                        **(SMALL_SIZES if small else SECTION_1M))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_edit(config, Path(tmp) / "job", _phase_printer(), loaded=lm)
        wall = time.perf_counter() - t
        saved = sum(p.stat().st_size for p in (Path(tmp) / "job").rglob("*") if p.is_file())
    # With random weights no candidate passes the screen, so the search's generation check did not run: time one
    # pass of it (the base model's answers, then each confirmed candidate's: 2-3 passes per confirmed candidate).
    sets = confirmation_sets(make_plan(config, Reporter()), config)
    t = time.perf_counter()
    generate_sets(lm.model, lm.tokenizer, sets, config.max_new_tokens, config.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    confirm_pass = time.perf_counter() - t
    model = lm.model
    return {
        "confirmation_pass_seconds": confirm_pass,
        "confirmation_pass_prompts": sum(len(v) for by_lang in sets.values() for v in by_lang.values()),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "hidden_size": model.config.hidden_size,
        "intermediate_size": model.config.intermediate_size,
        "layers": model.config.num_hidden_layers,
        "vocab_size": model.config.vocab_size,
        "params": sum(p.numel() for p in model.parameters()),
        "build_seconds": build_s,
        "run_edit_seconds": wall,
        "stage_seconds": res.timings,
        "peak_host_rss_mb": res.peak_memory_mb,
        "artifact_bytes": saved,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "config": {k: getattr(config, k) for k in (*SECTION_1M, "batch_size", "screen_prompts", "max_calibration_ids",
                                                   "confirm_candidates", "confirm_prompts", "readout_answer_ids")},
        "search": [
            {k: row.get(k) for k in ("name", "eligible", "why_not", "objective")}
            | {"confirmed": row.get("confirm") is not None}
            for row in res.search
        ],
        "languages": len(res.languages),
    }


def save_demo_tokenizer(out: str) -> None:
    from worker.engine import load_model

    load_model("demo", "cpu").tokenizer.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="MultiJail CSV (calibration; default: the bundled demo set)")
    ap.add_argument("--tokenizer", help="a saved Hugging Face tokenizer directory")
    ap.add_argument("--out", default="bench/results/gpu_default.json")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--max-calibration-ids", type=int, default=None)
    ap.add_argument("--save-demo-tokenizer", metavar="DIR", help="write the demo model's tokenizer to DIR and exit")
    args = ap.parse_args()
    if args.save_demo_tokenizer:
        save_demo_tokenizer(args.save_demo_tokenizer)
        return
    if not args.tokenizer:
        ap.error("--tokenizer is required")
    res = run(args.data, args.tokenizer, args.small, args.max_calibration_ids)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()

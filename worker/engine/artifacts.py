"""Write an edit's artifacts atomically: model/, delta.safetensors, manifest.json, report.json.

Everything goes to a temporary sibling directory first and is moved into place only when complete, so
`out_dir` holds either the full set or nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .delta import SparseDelta, apply_delta, delta_num_params, revert_delta, save_delta
from .models import LoadedModel, save_model_dir, weights_fingerprint

ARTIFACT_NAMES = ("model", "delta.safetensors", "manifest.json", "report.json")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import safetensors
    import torch
    import transformers

    try:
        own = version("lingua-edit")
    except PackageNotFoundError:
        own = "unknown"
    return {"lingua_edit": own, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def write_artifacts(out_dir: Path, lm: LoadedModel, delta: SparseDelta, config: Any, result: Any,
                    plan: Any, sweep: list[dict], reporter: Any, timer: Any) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and any(out_dir.iterdir()):
        from .errors import UserError

        raise UserError(f"output directory {out_dir} is not empty", param="out")
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        reporter.step("save", 0, 3)
        base_hash = weights_fingerprint(lm.model)
        save_delta(delta, tmp / "delta.safetensors", base_fingerprint=base_hash)
        apply_delta(lm.model, delta)
        try:
            save_model_dir(lm.model, lm.tokenizer, tmp / "model")
        finally:
            revert_delta(lm.model, delta)
        reporter.step("save", 2, 3)
        report = result.to_dict()
        report.pop("artifacts", None)
        if getattr(config, "method", "paper") != "search":  # the search's table is already report["search"]
            report["screen_sweep"] = sweep
        manifest = {
            "format": "lingua-edit-manifest", "version": 1,
            "base_model": {"spec": lm.spec, "path": lm.path, "weights_sha256": base_hash,
                           "dtype": str(lm.dtype), "device": str(lm.device)},
            "config": config.to_dict(),
            "data": {"calibration_ids": plan.cal_ids, "validation_ids": plan.val_ids,
                     "evaluation_ids": plan.eval_ids, "languages": plan.langs,
                     "harmless_anchor": {k: len(v) for k, v in plan.anchor.items()},
                     "harmless_eval": {k: len(v) for k, v in plan.harmless_eval.items()},
                     "borderline_validation": {k: len(v) for k, v in plan.borderline_val.items()},
                     "borderline_eval": {k: len(v) for k, v in plan.borderline_eval.items()},
                     "second_test_ids": list(plan.second_test)},
            "edit": {"edits": [{"layer": e.layer, "module": e.module, "neurons": int(e.indices.numel())}
                               for e in delta.edits],
                     "parameters_changed": delta_num_params(delta)},
            "neurons": result.neurons, "metrics": {"languages": report["languages"], "utility": result.utility},
            "timings_s": timer.seconds, "peak_memory_mb": timer.peak_mb, "versions": _versions(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
        write_report_files(tmp, reporter)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
        reporter.step("save", 3, 3)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: out_dir / name for name in ARTIFACT_NAMES} | report_artifacts(out_dir)


def report_artifacts(run_dir: Path) -> dict[str, Path]:
    """report.html and its charts in a finished run directory, by artifact name."""
    paths = [run_dir / "report.html", *sorted(run_dir.glob("charts/*.png"))]
    return {p.relative_to(run_dir).as_posix(): p for p in paths if p.is_file()}


def write_report_files(run_dir: Path, reporter: Any) -> None:
    """report.html and charts/*.png rendered from the JSON just written. A rendering failure is a warning,
    never a lost edit: the delta, model and JSON reports stay valid without the pictures."""
    from .report import render_run_dir

    try:
        render_run_dir(run_dir)
    except Exception as exc:  # noqa: BLE001 (any plotting/template error)
        reporter.warn(f"report.html not written: {type(exc).__name__}: {exc}")

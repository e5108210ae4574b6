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

from .delta import SparseDelta, applied, delta_num_params, save_delta
from .models import DEMO_MODEL_ID, DEMO_NAME, LoadedModel, weights_fingerprint

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
        with applied(lm.model, delta):
            save_registry_model(lm, tmp / "model")
        reporter.step("save", 2, 3)
        report = result.to_dict()
        report.pop("artifacts", None)
        if getattr(config, "method", "paper") != "search":  # the search's table is already report["search"]
            report["screen_sweep"] = sweep
        manifest = {
            "format": "lingua-edit-manifest", "version": 1,
            "base_model": {"spec": lm.spec, "path": lm.path, "weights_sha256": base_hash,
                           "revision": getattr(config, "base_revision", None), "hub_id": base_hub_id(lm),
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
        write_model_card(tmp / "model", lm, config, result, delta, (tmp / "delta.safetensors").stat().st_size)
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


# --------------------------------------------------------------------------- registry-ready model folder

MAX_SHARD_SIZE = "5GB"
CARD_TAGS = ["lingua-edit", "safety", "multilingual", "sparse-weight-edit", "training-free"]
DEMO_LICENSE = "apache-2.0"  # Qwen2.5-Coder-0.5B-Instruct


def save_registry_model(lm: LoadedModel, out: Path, max_shard_size: str | int = MAX_SHARD_SIZE) -> None:
    """The edited model in Hugging Face layout: safetensors shards of at most 5 GB with
    `model.safetensors.index.json` when there is more than one (huggingface_hub's writer), config,
    generation config and tokenizer; `from_pretrained(out)` loads it."""
    from huggingface_hub import save_torch_state_dict

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in lm.model.state_dict().items()}
    if getattr(lm.model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_torch_state_dict(state, out, max_shard_size=max_shard_size, metadata={"format": "pt"})
    lm.model.config.save_pretrained(out)
    if getattr(lm.model, "generation_config", None) is not None:
        lm.model.generation_config.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)


def base_hub_id(lm: LoadedModel) -> str | None:
    """The hub id the base model came from: the demo's source, a `lingua_edit_source.json` next to a
    registered model's weights, or the spec itself when it was loaded from the hub."""
    if lm.hub_id:
        return lm.hub_id
    if lm.spec == DEMO_NAME:
        return DEMO_MODEL_ID
    source = Path(lm.path) / "lingua_edit_source.json"
    if source.is_file():
        try:
            found = json.loads(source.read_text()).get("source")
        except (OSError, ValueError):
            found = None
        return found if isinstance(found, str) else None
    return None if Path(lm.path).exists() else lm.spec


def _base_license(lm: LoadedModel) -> str:
    """The base model's licence from its own model card where there is one; "other" otherwise."""
    if lm.spec == DEMO_NAME:
        return DEMO_LICENSE
    card_path = Path(lm.path) / "README.md"
    if card_path.is_file():
        from huggingface_hub import ModelCard

        try:
            found = ModelCard.load(card_path).data.license
        except Exception:  # a malformed card upstream must not fail the edit
            found = None
        if isinstance(found, str):
            return found
    return "other"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _card_results(result: Any) -> str:
    """Per-language results, before → after: harmful ASR, degenerate answers on harmful prompts, and refusal
    of plain and of borderline harmless prompts (over-refusal)."""
    head = ("| language | harmful n | ASR | degenerate | harmless n | harmless refused | borderline n | "
            "borderline refused |\n|---|---|---|---|---|---|---|---|")
    rows = [
        f"| {r.lang} | {r.n} | {_pct(r.asr_before)} → {_pct(r.asr_after)} | "
        f"{_pct(r.degenerate_before)} → {_pct(r.degenerate_after)} | {r.harmless_n} | "
        f"{_pct(r.harmless_refusal_before)} → {_pct(r.harmless_refusal_after)} | {r.borderline_n} | "
        f"{_pct(r.borderline_refusal_before)} → {_pct(r.borderline_refusal_after)} |"
        for r in result.languages
    ]
    return "\n".join([head, *rows])


def _card_method(result: Any, source_lang: str) -> str:
    if result.method == "search":
        winner = next((w.removeprefix("search winner: ") for w in result.warnings
                       if w.startswith("search winner: ")), None)
        shipped = f"The shipped candidate: **{winner}**." if winner else "No candidate was shipped."
        return f"""The default search: a small family of sparse closed-form candidates (a repurposed MLP neuron per
layer whose gate reads harmful intent and whose down_proj column writes the {source_lang} refusal direction,
at several layers and gains, and the paper's closed form) was ranked on validation prompts by selectivity
(harmful refusal gain minus harmless refusal gain, with a penalty on the worst language); the best were
confirmed by generation on validation prompts. {shipped} No evaluation prompt reached any choice."""
    return """The paper's closed form:

1. Capture MLP activations on harmful and harmless prompts in the source and target languages.
2. Localise neurons whose activations separate harmful from harmless prompts (`select`, `tau_z`/`tau_d`
   or `neuron_budget`).
3. Solve one ridge-regularised least-squares problem per edited module in closed form: target-language
   harmful keys map to the source language's refusal outputs, harmless keys keep their outputs (`gamma`),
   optionally in the null space of the harmless keys (`null_space`).
4. Apply the solution as a sparse delta to the selected rows/columns only."""


def _card_hyperparameters(config: Any) -> str:
    """Every knob a client can set (EditConfig's fields; the worker's own paths and URLs are left out)."""
    from .config import config_fields

    cfg = config.to_dict()
    rows = [f"| `{f.name}` | `{json.dumps(cfg.get(f.name))}` |" for f in config_fields()
            if f.metadata.get("api") != "server" and f.name != "model"]
    return "\n".join(["| name | value |", "|---|---|", *rows])


def write_model_card(model_dir: Path, lm: LoadedModel, config: Any, result: Any, delta: SparseDelta,
                     delta_bytes: int) -> Path:
    """README.md with YAML front matter (base_model, base_model_relation, license, language, tags) and a
    body with the per-language results, the method, the hyperparameters and the sparse delta's size."""
    from huggingface_hub import ModelCard, ModelCardData

    hub_id = base_hub_id(lm)
    revision = config.base_revision
    source = config.source_lang
    data = ModelCardData(
        base_model=hub_id,
        base_model_relation="finetune" if hub_id else None,
        license=_base_license(lm),
        language=[source, *[lg for lg in config.target_langs if lg != source]],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=CARD_TAGS,
        base_model_revision=revision,
    )
    edits = "\n".join(f"| {e.layer} | {e.module} | {int(e.indices.numel())} |" for e in delta.edits)
    kl = (result.utility or {}).get("kl_mean")
    base_line = f"`{hub_id}`" if hub_id else f"`{lm.spec}` (a model registered with the service)"
    if revision:
        base_line += f" at revision `{revision}`"
    content = f"""---
{data.to_yaml()}
---

# {lm.spec} + lingua-edit multilingual safety edit

This model is {base_line} with a training-free, closed-form sparse weight edit applied by
[lingua-edit](https://github.com/lingua-edit/lingua-edit): a few MLP neurons per edited layer are changed
so that harmful prompts in the target languages are refused as in the source language (`{source}`), while
harmless prompts keep the base model's behaviour.

## Results (held-out prompts)

ASR: the attack success rate on harmful prompts (lower is safer). Degenerate: blank, looping or echoed
answers to harmful prompts (neither an attack nor a refusal). Harmless and borderline refused: over-refusal
of plain questions and of safe questions that only look alarming (lower is better). Small n: read the
numbers with their binomial standard errors (`report.json`).

{_card_results(result)}

Mean KL divergence from the base model on harmless prompts: {kl if kl is None else f"{kl:.4g}"} nats/token.

## Method

{_card_method(result, source)}

## Hyperparameters

{_card_hyperparameters(config)}

## Sparse delta

{delta_num_params(delta):,} weights changed ({delta_bytes:,} bytes as `delta.safetensors`):

| layer | module | neurons |
|---|---|---|
{edits}
"""
    card = ModelCard(content)
    path = model_dir / "README.md"
    card.save(path)
    ModelCard.load(path)  # fails loudly if the front matter does not parse
    return path

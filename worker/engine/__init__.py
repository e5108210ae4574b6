"""The method library's public API: `from worker.engine import run_edit, EditConfig, ...`.

    from worker.engine import EditConfig, run_edit
    result = run_edit(EditConfig(model="Qwen/Qwen2.5-0.5B-Instruct", target_langs=["zh", "sw"]), "out/")

The whole job is `run_edit` (worker/engine/pipeline.py); its stages (worker/engine/stages/: plan, capture,
select, fit, evaluate; artifacts.py saves) and their building blocks are exported below for callers that
compose their own runs (bench/ does, and imports nothing else of the engine).

Names resolve on first use (PEP 562): importing this package, or `worker.engine.config` for the API's schema,
loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    # the job, its configuration and its result
    "pipeline": ("run_edit",),
    "config": ("EditConfig", "SUPPORTED_LANGS", "validate_config"),
    "result": ("EditResult", "LanguageResult"),
    "errors": ("EngineError", "UserError", "EditCancelled"),
    "progress": ("Reporter",),
    "stages": ("StageTimer",),
    "methods": ("LAYER_METHODS", "MODULE_CHOICES", "LayerMethod"),
    # models and deltas
    "models": ("LoadedModel", "load_model", "save_model_dir", "weights_fingerprint"),
    "arch": ("decoder_layers", "mlp_of", "num_layers"),
    "templates": ("format_prompt", "num_template_tokens"),
    "delta": ("LayerEdit", "SparseDelta", "applied", "apply_delta", "revert_delta", "load_delta", "save_delta",
              "make_layer_edit", "delta_num_params"),
    # the stages
    "stages.plan": ("Plan", "make_plan", "candidate_layers", "candidate_modules", "eval_sets"),
    "stages.capture": ("collect_keys", "needs_residual", "answer_calibration_prompts", "answer_token_keys"),
    "stages.select": ("LayerScreen", "screen_candidates", "fit_in_sequence", "search_setup", "run_search",
                      "validation_refusal_openings", "refusal_openings_of", "confirmation_sets",
                      "refusal_rates"),
    "stages.fit": ("LayerChoice", "edit_one", "edits_of"),
    "stages.evaluate": ("evaluate_model", "configured_judge"),
    # building blocks
    "capture": ("capture_mlp_inputs", "capture_answer_inputs", "largest_writes", "tokenize_chat", "StopForward",
                "forward_until_stop"),
    "keys": ("LayerKeys", "NeuronActivation", "build_problem", "refusal_gap_attribution"),
    "solve": ("solve_edit", "anchor_change", "second_moment"),
    "evaluate": ("generate", "generate_sets", "kl_and_perplexity", "refusal_scores", "refusal_token_ids",
                 "BaseReference", "base_reference"),
    "judges": ("Judge", "Verdict", "make_judge", "is_degenerate"),
    "screen": ("ScreenPrompts",),
    "search": ("gated_candidate",),
    "methods.gated": ("LanguageGatedBasis", "ReadoutSettings", "gated_basis", "harmfulness_readout",
                      "language_gated_basis", "language_readout", "readout_basis"),
    # reports: the job's markdown and the formatting and chart helpers the benchmark's report shares
    "report.markdown": ("run_markdown",),
    "report.fmt": ("md_table", "mib", "num", "pct", "pooled_se", "short", "wrap"),
    "report.charts": ("before_after_bars", "pyplot"),
}
_RENAMED = {"FirstTokenScreen": ("screen", "Screen")}  # the search's first-token refusal screen

_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _RENAMED
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _WHERE[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

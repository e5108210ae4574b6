"""run_edit(config) -> EditResult: the stages in order (worker/engine/stages/): plan the prompts' roles, load
the model, evaluate before, select and fit the edit (the method's stages: capture, screen or search, fit),
evaluate after, save the artifacts (worker/engine/artifacts.py).
"""

from __future__ import annotations

from pathlib import Path

from .arch import num_layers
from .config import EditConfig, validate_config
from .delta import SparseDelta, applied
from .models import LoadedModel, load_model
from .progress import Reporter
from .result import EditResult
from .stages import StageTimer
from .stages.evaluate import evaluate_model, generate_all, judge_results, measure_utility
from .stages.fit import edits_of
from .stages.plan import make_plan
from .stages.select import METHODS

__all__ = ["evaluate_model", "run_edit", "validate_config"]


def run_edit(
    config: EditConfig,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    loaded: LoadedModel | None = None,
) -> EditResult:
    """Run one edit job end to end and write artifacts atomically into `out_dir`.

    - `reporter.progress(phase, done, total, message)` is called as work advances (phase in STAGES,
      or "warning" with a message); `reporter.should_cancel()` is polled between phases and batches and
      raises EditCancelled when it returns True.
    - `loaded`: a model the caller already holds (the worker's per-process cache). The engine edits it in
      place and reverts the edit bit-for-bit before returning, so the cached copy stays the base model.
    - Errors: UserError subclasses for bad input (model not found, bad calibration, bad hyperparameter),
      anything else is a system error. `out_dir` holds either the complete artifacts or nothing.
    """
    rep = reporter or Reporter()
    timer = StageTimer()
    validate_config(config)
    out_dir = Path(out_dir)
    plan = make_plan(config, rep)
    for note in plan.notes:
        rep.warn(note)
    rep.step("load", 0, 1)
    with timer("load"):
        lm = loaded or load_model(config.model, config.device, config.dtype, revision=config.base_revision)
    validate_config(config, num_layers(lm.model))
    rep.step("load", 1, 1)
    with timer("evaluate"):
        before = generate_all(lm, plan, config, rep)
    choices, sweep, notes = METHODS[config.method](lm, plan, config, rep, timer)
    for note in notes:
        rep.warn(note)
    delta = SparseDelta(edits_of(choices), metadata={"base_model": lm.spec})
    with timer("evaluate"):
        with applied(lm.model, delta):
            after = generate_all(lm, plan, config, rep)
        languages, samples, flips = judge_results(config, plan, before, after)
        utility = measure_utility(lm, plan, config, delta, rep)
    neurons = {f"{c.layer}.{c.module}": c.neurons for c in choices}
    result = EditResult(
        languages=languages, utility=utility, neurons=neurons, timings=timer.seconds,
        peak_memory_mb=timer.peak_mb, artifacts={}, warnings=list(plan.notes) + notes, method=config.method,
        search=sweep if config.method == "search" else [], samples=samples, flips=flips,
    )
    with timer("save"):
        from .artifacts import write_artifacts

        result.artifacts = write_artifacts(out_dir, lm, delta, config, result, plan, sweep, rep, timer)
    return result

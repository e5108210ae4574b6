"""(2) Our sparse edit: the engine's defaults, and the best dev-split settings given by the user."""

from __future__ import annotations

import time
from typing import Any

from worker.engine import EditConfig, SparseDelta, StageTimer, apply_delta, fit_in_sequence, revert_delta

from ..context import Context
from . import Fitted
from .edit_common import Clock, choose_layer, delta_size, edit_config, fitted_from_choice


def fit(ctx: Context, name: str = "sparse edit (default)", overrides: dict[str, Any] | None = None) -> Fitted:
    """layers="auto": one layer (and module) picked on the validation slice among this run's candidates.
    Explicit layers: edited in sequence as run_edit does, keys recaptured with the earlier edits applied."""
    config = edit_config(ctx.config, overrides or {})
    if config.layers != "auto":
        return _sequential(ctx, name, config)
    layers = sorted({ctx.depth(x) for x in ctx.settings.edit_layers})
    modules = ctx.settings.edit_modules if config.module in ("gate", "gate+up") else [config.module]
    for ly in layers:
        ctx.keys(ly, config)  # capture first so the clock below times localise + solve (+ screen) only
    clock = Clock()
    choice, sweep = choose_layer(ctx, config, layers, modules)
    seconds = clock() + sum(ctx.capture_time(ly, config) for ly in layers)
    return fitted_from_choice(ctx, name, choice, config, seconds, sweep)


def _sequential(ctx: Context, name: str, config: EditConfig) -> Fitted:
    layers = sorted({int(x) for x in config.layers})  # type: ignore[union-attr]
    first = ctx.keys(layers[0], config)  # the shared base-model capture; later layers see the earlier edits
    start = time.perf_counter()
    choices = fit_in_sequence(ctx.lm, ctx.plan, config, layers, ctx.reporter, StageTimer(), first_keys=first)
    seconds = time.perf_counter() - start + ctx.capture_time(layers[0], config)
    if len(choices) == 1:
        return fitted_from_choice(ctx, name, choices[0], config, seconds)
    delta = SparseDelta([e for c in choices for e in c.edits], metadata={"base_model": ctx.lm.spec})
    chosen = {"layers": layers, "module": config.module, "gamma": config.gamma, "lam": config.lam,
              "rank": config.rank, "null_space": config.null_space, "positions": config.positions,
              "fit_residual": [round(c.neurons["fit_residual"], 3) for c in choices]}
    return Fitted(name=name, apply=lambda: apply_delta(ctx.lm.model, delta),
                  revert=lambda: revert_delta(ctx.lm.model, delta), fit_seconds=seconds, chosen=chosen,
                  size=delta_size(delta))

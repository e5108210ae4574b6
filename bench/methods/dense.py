"""(3) Dense closed-form edit: the same keys, targets and solve, on every neuron of the chosen layer."""

from __future__ import annotations

from ..context import Context
from . import Fitted
from .edit_common import Clock, edit_config, fitted_from_choice, solve_all_neurons


def fit(ctx: Context, layer: int, module: str) -> Fitted:
    config = edit_config(ctx.config, {"layers": [layer], "module": module})
    ctx.keys(layer, config)
    clock = Clock()
    choice = solve_all_neurons(ctx, layer, module, config)
    return fitted_from_choice(ctx, "dense edit (all neurons)", choice, config,
                              clock() + ctx.capture_time(layer, config))

"""(4) Our edit with the hard null-space projector (AlphaEdit-style) instead of the soft anchor."""

from __future__ import annotations

from worker.engine import edit_one

from ..context import Context
from . import Fitted
from .edit_common import Clock, edit_config, fitted_from_choice


def fit(ctx: Context, layer: int, module: str) -> Fitted:
    config = edit_config(ctx.config, {"layers": [layer], "module": module, "null_space": "hard"})
    keys = ctx.keys(layer, config)
    clock = Clock()
    choice = edit_one(ctx.lm, keys, layer, module, config)
    return fitted_from_choice(ctx, "sparse edit, hard null space", choice, config,
                              clock() + ctx.capture_time(layer, config))

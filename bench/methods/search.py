"""(1b) The engine's default: the search (worker/engine/search.py) over gated refusal neurons and the paper's
closed form, ranked and confirmed on validation prompts, run through the engine's own entry points."""

from __future__ import annotations

import time

from worker.engine import SparseDelta, apply_delta, revert_delta, run_search, search_setup

from ..context import Context
from . import Fitted
from .edit_common import delta_size


def fit(ctx: Context, name: str = "search (engine default)") -> Fitted:
    config = ctx.config
    start = time.perf_counter()
    setup = search_setup(ctx.lm, ctx.plan, config, ctx.reporter, ctx.timer)
    found = run_search(ctx.lm, setup, config, ctx.reporter)
    delta = found.winner.delta if found.winner is not None else SparseDelta([])
    chosen = {"winner": found.winner.name if found.winner else None, "gains": found.winner.gains if found.winner
              else None, "layers": setup.layers, "notes": found.notes}
    return Fitted(name=name, apply=lambda: apply_delta(ctx.lm.model, delta),
                  revert=lambda: revert_delta(ctx.lm.model, delta), fit_seconds=time.perf_counter() - start,
                  chosen=chosen, size=delta_size(delta), sweep=found.table())

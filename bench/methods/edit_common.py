"""Shared by the closed-form variants (sparse, dense, hard null space): the engine's edit_one / solve on
captured keys, the layer choice on the validation slice, and the size of the resulting delta."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    LayerChoice,
    NeuronActivation,
    SparseDelta,
    anchor_change,
    applied,
    apply_delta,
    build_problem,
    delta_num_params,
    edit_one,
    make_layer_edit,
    revert_delta,
    save_delta,
    screen_candidates,
    solve_edit,
)

from ..context import Context
from . import Fitted


def solve_all_neurons(ctx: Context, layer: int, module: str, config: EditConfig) -> LayerChoice:
    """The dense peer: the same keys, targets and solve as edit_one, but on every neuron of the layer."""
    keys = ctx.keys(layer, config)
    na = NeuronActivation(ctx.lm.model, layer)
    f = (na.gate if module == "gate" else na.up).shape[0]
    idx = torch.arange(f)
    prob = build_problem(na, keys, module, idx, list(config.target_langs))
    sol = solve_edit(prob.x_low, prob.gap, prob.c_safe, rank=config.rank, gamma=config.gamma, lam=config.lam,
                     null_space=config.null_space, null_space_threshold=config.null_space_threshold)
    edit = make_layer_edit(ctx.lm.model, layer, module, idx, sol.delta.float())
    info = {"layer": layer, "module": module, "count": f, "fraction": 1.0, "fit_residual": sol.fit_residual,
            "rank": sol.rank, "anchor_change": anchor_change(prob.c_safe, sol.delta, prob.w_s.double())}
    return LayerChoice(layer, module, edit, info)


def screen_delta(ctx: Context, delta: SparseDelta) -> tuple[float, dict[str, float]]:
    screen = ctx.screen()
    with applied(ctx.lm.model, delta):
        gain = screen.gain(screen.measure())
    return screen.objective(gain), gain


def choose_layer(ctx: Context, config: EditConfig, layers: list[int], modules: list[str]
                 ) -> tuple[LayerChoice, list[dict[str, Any]]]:
    """The engine's layers="auto" rule (best refusal-screen objective on validation ids: the engine's
    screen_candidates), over the candidates of this run with its shared keys; a single candidate is taken
    without screening."""
    cands = [(ly, m) for ly in layers for m in modules]
    if len(cands) == 1:
        ly, m = cands[0]
        return edit_one(ctx.lm, ctx.keys(ly, config), ly, m, config), []
    return screen_candidates(ctx.lm, lambda ly: ctx.keys(ly, config), cands, config, ctx.screen())


def delta_size(delta: SparseDelta) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_delta(delta, Path(tmp) / "delta.safetensors")
        nbytes = path.stat().st_size
    # a neuron whose gate, up and down weights all change is one neuron edited, not three
    neurons = {(e.layer, int(i)) for e in delta.edits for i in e.indices.tolist()}
    return {"neurons": len(neurons), "params_changed": delta_num_params(delta),
            "file_bytes": nbytes}


def fitted_from_choice(ctx: Context, name: str, choice: LayerChoice, config: EditConfig, seconds: float,
                       sweep: list[dict[str, Any]] | None = None) -> Fitted:
    delta = SparseDelta(choice.edits, metadata={"base_model": ctx.lm.spec})
    chosen = {"layer": choice.layer, "module": choice.module, "gamma": config.gamma, "lam": config.lam,
              "rank": config.rank, "null_space": config.null_space, "tau_z": config.tau_z, "tau_d": config.tau_d,
              "neuron_budget": config.neuron_budget, "positions": config.positions,
              **{k: choice.neurons[k] for k in ("fit_residual", "anchor_change", "fraction") if k in choice.neurons}}
    return Fitted(
        name=name, apply=lambda: apply_delta(ctx.lm.model, delta), revert=lambda: revert_delta(ctx.lm.model, delta),
        fit_seconds=seconds, chosen=chosen, size=delta_size(delta), sweep=sweep or [],
    )


def edit_config(base: EditConfig, overrides: dict[str, Any]) -> EditConfig:
    known = set(base.to_dict())
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown EditConfig fields in the settings: {', '.join(bad)}")
    return replace(base, **overrides)


class Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start

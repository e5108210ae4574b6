"""Edit methods beyond the paper's closed form: one module per method, registered here by name.

`--method paper` edits each chosen layer either with the closed form (solve.py / keys.py) on one of
CLOSED_FORM_MODULES, or with a registered per-layer method: `--module NAME` (API: `hyperparameters.module`)
picks it, and every list of choices (EditConfig, validation, the CLI flag, the API schema) is read from
MODULE_CHOICES below. A method module provides `fit_layer(lm, keys, layer, config) -> (edits, neuron_info)`:
the LayerEdits of the neurons it changes (first the main one) and the report's neuron summary.

This file imports nothing heavy (torch comes with the method module, imported on first use): the API reads
MODULE_CHOICES for its schema.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLOSED_FORM_MODULES = ("gate", "up", "gate+up", "down")


@dataclass(frozen=True)
class LayerMethod:
    target: str  # "package.module:function", the method's fit_layer
    needs_residual: bool = True  # its keys hold the residual stream (it writes down_proj columns)
    fixed_positions: bool = True  # it needs template or last positions (not "all")

    def fit(self) -> Callable[..., tuple[list[Any], dict[str, Any]]]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


LAYER_METHODS: dict[str, LayerMethod] = {
    # one repurposed neuron per layer with one global gain (methods/conditional.py; the gated neuron's ancestor)
    "conditional": LayerMethod("worker.engine.methods.conditional:fit_layer"),
}

MODULE_CHOICES: tuple[str, ...] = (*CLOSED_FORM_MODULES, *LAYER_METHODS)

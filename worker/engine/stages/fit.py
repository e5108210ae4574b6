"""Stage 4, fit: one layer's edit: localise its safety neurons and solve the closed form for them, or hand
the layer to a registered method (methods/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import EditConfig
from ..delta import LayerEdit, make_layer_edit
from ..errors import UserError
from ..keys import LayerKeys, NeuronActivation, build_problem, refusal_gap_attribution
from ..localize import budget_count, jaccard, neuron_scores, select_neurons
from ..methods import LAYER_METHODS
from ..models import LoadedModel
from ..solve import anchor_change, solve_edit

DEFAULT_GAP_BUDGET = 0.05  # refusal_gap selection without a neuron_budget: top 5% of the layer


@dataclass
class LayerChoice:
    layer: int
    module: str
    edit: LayerEdit
    neurons: dict[str, Any]
    extra: list[LayerEdit] = field(default_factory=list)  # further modules of the same neurons (conditional)

    @property
    def edits(self) -> list[LayerEdit]:
        return [self.edit, *self.extra]


def edits_of(choices: list[LayerChoice]) -> list[LayerEdit]:
    return [e for c in choices for e in c.edits]


def edit_one(
    lm: LoadedModel, keys: LayerKeys, layer: int, module: str, config: EditConfig,
    indices: torch.Tensor | None = None,
) -> LayerChoice:
    """Localise the safety neurons of (layer, module) (or take `indices`) and solve for their edit."""
    if module in LAYER_METHODS:  # a registered method (methods/__init__.py) fits the whole layer itself
        edits, info = LAYER_METHODS[module].fit()(lm, keys, layer, config)
        return LayerChoice(layer, module, edits[0], info, extra=edits[1:])
    na = NeuronActivation(lm.model, layer)
    src = config.source_lang

    def pooled_features(k: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        rows = [t for t in k] if isinstance(k, list) else list(k)
        return torch.stack([na.score_features(t, module).mean(0) for t in rows])

    scores = neuron_scores(pooled_features(keys.src), pooled_features(keys.safe_tmpl[src]))
    gap_share: float | None = None  # share of the refusal gap the chosen neurons write (refusal_gap only)
    if indices is not None:
        idx = indices
    elif config.select == "refusal_gap":
        attr, total_gap = refusal_gap_attribution(na, keys, list(config.target_langs), src)
        k = budget_count(config.neuron_budget or DEFAULT_GAP_BUDGET, scores.num_neurons)
        idx = torch.topk(attr, k).indices.sort().values
        idx = idx[attr[idx] > 0]  # a neuron that widens the gap is not one to pull towards English
        gap_share = float(attr[idx].sum()) / total_gap if total_gap > 0 else None
    else:
        idx = select_neurons(scores, config.tau_z, config.tau_d, config.neuron_budget)
    if idx.numel() == 0:
        raise UserError(f"no safety neurons selected at layer {layer} {module}: lower tau_z/tau_d or set "
                        "neuron_budget", param="tau_z")
    overlap = {}
    for lg in config.target_langs:
        s = neuron_scores(pooled_features(keys.tgt[lg]), pooled_features(keys.safe_tmpl[lg]))
        overlap[lg] = jaccard(idx, select_neurons(s, config.tau_z, config.tau_d, config.neuron_budget))
    prob = build_problem(na, keys, module, idx, list(config.target_langs), src, config.target_scale)
    sol = solve_edit(prob.x_low, prob.gap, prob.c_safe, rank=config.rank, gamma=config.gamma, lam=config.lam,
                     null_space=config.null_space, null_space_threshold=config.null_space_threshold)
    delta_dk = sol.delta.T if module == "down" else sol.delta  # make_layer_edit wants [in, k]
    edit = make_layer_edit(lm.model, layer, module, idx, delta_dk.float())
    info = {
        "layer": layer, "module": module, "count": int(idx.numel()),
        "fraction": float(idx.numel()) / scores.num_neurons,
        "jaccard_with_source": overlap, "fit_residual": sol.fit_residual, "rank": sol.rank,
        "jitter": sol.jitter, "anchor_change": anchor_change(prob.c_safe, sol.delta, prob.w_s.double()),
        "selection": "indices given" if indices is not None else config.select,
    }
    if indices is None and config.select == "refusal_gap":
        info["refusal_gap_share"] = gap_share
    return LayerChoice(layer, module, edit, info)

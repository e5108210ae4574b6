"""A variant beyond the paper, still sparse and closed-form: conditional refusal neurons.

Why: on the demo model the paper's edit cannot separate harmful target-language keys from harmless ones in the
directions its safety neurons read (fit residual 0.4-0.8, BENCHMARKS.md §2), and writing the refusal
direction through those neurons' down_proj columns acts on every prompt alike. Here the few neurons that carry
least of the layer's output on harmless text are repurposed, each neuron being three vectors:

- gate row g: a ridge-regression read-out of the MLP input, +1 on harmful keys (source and target languages,
  template positions) and -1 on every harmless token of every language, scaled by `sharpness` so that
  silu(g·x) is about `sharpness` on harmful input and about 0 on harmless input;
- up row u: a ridge fit of u·x = 1 on the harmful keys (the neuron's gain);
- down_proj column: the refusal direction r̂ of this layer's output (English harmful minus harmless, mean over
  the template positions), scaled so that a firing neuron writes `target_scale` times the mean English-minus-
  target gap along r̂, split across the k neurons.

So the edit adds refusal steering (Arditi et al. 2024) only where a linear read-out of the MLP input says
"harmful", in the spirit of conditional activation steering (Lee et al. 2024), written into k neuron rows.
All three solves are closed-form (Cholesky); nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..delta import LayerEdit, make_layer_edit, neuron_rows
from ..keys import LayerKeys, NeuronActivation, flat_rows, refusal_directions, refusal_gap_attribution
from ..localize import budget_count
from ..solve import cholesky_with_jitter

if TYPE_CHECKING:
    from ..config import EditConfig
    from ..models import LoadedModel

SHARPNESS = 6.0  # silu(6) ≈ 5.99, silu(-6) ≈ -0.015: on vs off for read-outs near +1 / -1


@dataclass
class ConditionalFit:
    """New rows for the k repurposed neurons (all [k, d]) and what the report needs."""

    indices: Tensor
    gate_rows: Tensor
    up_rows: Tensor
    down_cols: Tensor
    info: dict[str, float]


def weighted_ridge(x: Tensor, y: Tensor, weights: Tensor, lam: float) -> Tensor:
    """argmin_w Σ_i weights_i (x_i·w - y_i)² + λ' ||w||², with λ' = λ · trace(weighted XᵀX) / d (float64).
    y [n] gives w [d]; y [n, k] gives k solutions [d, k] from one factorisation."""
    x, y, weights = x.double(), y.double(), weights.double()
    a = (x * weights[:, None]).T @ x
    b = (x * weights[:, None]).T @ y
    d = a.shape[0]
    upper, _ = cholesky_with_jitter(a + lam * float(torch.trace(a)) / d * torch.eye(d, dtype=a.dtype))
    solution = torch.cholesky_solve(b[:, None] if y.dim() == 1 else b, upper, upper=True)
    return solution[:, 0] if y.dim() == 1 else solution


def least_used_neurons(na: NeuronActivation, safe_keys: Tensor, k: int) -> Tensor:
    """The k neurons whose output on harmless tokens is smallest: mean |a_j(x)| · ||W_down[:, j]||."""
    usage = na.neurons(safe_keys).abs().mean(0) * na.down.norm(dim=0)
    return torch.topk(usage, k, largest=False).indices.sort().values


def fit_conditional(
    na: NeuronActivation, keys: LayerKeys, langs: list[str], source_lang: str, k: int = 1,
    gamma: float = 1.0, lam: float = 0.1, target_scale: float = 1.0, sharpness: float = SHARPNESS,
) -> ConditionalFit:
    """Gate/up rows and down_proj columns of k repurposed neurons (see the module docstring).

    `gamma` weighs the harmless tokens against the harmful keys (each group normalised by its size), `lam`
    is the normalised ridge weight, `target_scale` scales what a firing neuron writes.
    """
    pos = torch.cat([flat_rows(keys.src)] + [flat_rows(keys.tgt[lg]) for lg in langs])
    neg_all = keys.safe_all
    # The harmless prompts' template tokens get half the negative weight: they are where harmful keys are
    # taken, so a read-out that only learned "template token vs text" would fire on them.
    neg_tmpl = torch.cat([flat_rows(t) for t in keys.safe_tmpl.values()])
    x = torch.cat([pos, neg_all, neg_tmpl])
    y = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg_all) + len(neg_tmpl))])
    w = torch.cat([torch.full((len(pos),), 1.0 / len(pos)), torch.full((len(neg_all),), gamma / 2 / len(neg_all)),
                   torch.full((len(neg_tmpl),), gamma / 2 / len(neg_tmpl))])
    readout = weighted_ridge(x, y, w, lam)
    gain = weighted_ridge(pos, torch.ones(len(pos)), torch.full((len(pos),), 1.0 / len(pos)), lam)

    rhat_t = refusal_directions(na, keys, source_lang)  # [T, d]
    _, gap = refusal_gap_attribution(na, keys, langs, source_lang, rhat_t)
    rhat = rhat_t.mean(0)
    rhat = rhat / rhat.norm().clamp(min=1e-8)
    on = float(torch.nn.functional.silu(torch.tensor(sharpness)))
    idx = least_used_neurons(na, neg_all, k)
    down = (target_scale * max(gap, 0.0) / (on * k)) * rhat

    # What the repurposed neurons write on harmless tokens, before and after, relative to the whole MLP output
    # there: the variant's counterpart of the spec's ||X_safe Δ|| / ||X_safe W_S|| (anchor_change).
    gate_rows = (sharpness * readout).float().expand(k, -1)
    new_act = na.act(neg_all @ gate_rows.T) * (neg_all @ gain.float().expand(k, -1).T)
    old_write = na.neurons(neg_all, idx) @ na.down[:, idx].T
    new_write = new_act @ down.float().expand(k, -1)
    change = float((new_write - old_write).norm(dim=-1).mean() / na.mlp_out(neg_all).norm(dim=-1).mean())
    fit_residual = float(((x.double() @ readout - y) * w.sqrt()).norm() / (y * w.sqrt()).norm())

    score_pos = (pos.double() @ readout).float()
    score_neg = (neg_all.double() @ readout).float()
    score_tmpl = (neg_tmpl.double() @ readout).float()
    info = {
        "readout_harmful_mean": float(score_pos.mean()),
        "readout_harmless_mean": float(score_neg.mean()),
        "harmful_keys_on": float((score_pos > 0).float().mean()),  # share of harmful keys that fire
        "harmless_tokens_on": float((score_neg > 0).float().mean()),  # share of harmless tokens that fire
        "harmless_template_on": float((score_tmpl > 0).float().mean()),  # ... of their template tokens
        "refusal_gap": gap,
        "fit_residual": fit_residual,  # of the read-out regression (weighted, relative)
        "anchor_change": change,
        "rank": 1,
        "down_norm": float(down.norm()),
    }
    return ConditionalFit(
        indices=idx,
        gate_rows=gate_rows.clone(),
        up_rows=gain.float().expand(k, -1).clone(),
        down_cols=down.float().expand(k, -1).clone(),
        info=info,
    )


def fit_layer(
    lm: LoadedModel, keys: LayerKeys, layer: int, config: EditConfig
) -> tuple[list[LayerEdit], dict[str, Any]]:
    """The registered entry (methods.LAYER_METHODS["conditional"]): the gate, up and down_proj edits of the
    k repurposed neurons of `layer`, and the report's neuron summary."""
    na = NeuronActivation(lm.model, layer)
    k = budget_count(config.neuron_budget, na.gate.shape[0]) if config.neuron_budget else 1
    fit = fit_conditional(na, keys, list(config.target_langs), config.source_lang, k=k, gamma=config.gamma,
                          lam=config.lam, target_scale=config.target_scale)
    edits = []
    for module, rows in (("gate", fit.gate_rows), ("up", fit.up_rows), ("down", fit.down_cols)):
        old = neuron_rows(lm.model, layer, module, fit.indices).float()
        edits.append(make_layer_edit(lm.model, layer, module, fit.indices, (rows - old).T))
    info = {"layer": layer, "module": "conditional", "count": k, "fraction": k / na.gate.shape[0],
            "selection": "least used on harmless text", "jaccard_with_source": {}, **fit.info}
    return edits, info

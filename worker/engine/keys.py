"""Keys and targets of one layer's edit (MEMIT-style: collect keys, compute targets, then solve).

Everything is computed from captured MLP inputs x (and, for the down_proj variant, the residual stream
entering the MLP block), so one capture pass serves localisation, keys and targets.

- gate / up: keys are x; the target of neuron j is the English prompt's pre-activation W[j]·x_en, so the
  gap is D = X_en W_S - X_low W_S (the paper's method, step 3).
- down: keys are the safety neurons' activations a_S(x) = act(gate_S x) * up_S x; the target is the change
  of the block's output that moves the target-language residual stream to the English one along the
  refusal direction (difference of means of English harmful vs harmless at the same template position).
  The edit then writes W_down[:, S] += Δᵀ: the safety neurons themselves emit the English-context signal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .arch import linear_of, mlp_of


@dataclass
class LayerKeys:
    """Captured inputs of one layer. Harmful sets are row-aligned by calibration id across languages.

    src / tgt[lang]: [n, T, d] at fixed positions, or lists of [len_i, d] for positions="all".
    safe_tmpl[lang]: harmless prompts' template-position rows [n_s, T, d] (localisation).
    safe_all: every harmless token row of every language [N, d] (the utility anchor).
    src_resid / tgt_resid: residual stream entering the MLP block, same layout (down variant only).
    safe_tmpl_borderline[lang]: which of safe_tmpl[lang]'s prompts are borderline-harmless ([n_s] bool), and
    safe_all_borderline which of safe_all's rows ([N] bool): the read-out may weigh them apart.
    answers: MLP inputs at the answer tokens of harmful calibration prompts (teacher-forced base answers and a
    fixed refusal) [N, d], only when the gated read-out is asked to stay shut on them (readout_answer_ids).
    """

    src: Tensor | list[Tensor]
    tgt: dict[str, Tensor | list[Tensor]]
    safe_tmpl: dict[str, Tensor]
    safe_all: Tensor
    src_resid: Tensor | list[Tensor] | None = None
    tgt_resid: dict[str, Tensor | list[Tensor]] | None = None
    safe_resid_tmpl: Tensor | None = None
    safe_tmpl_borderline: dict[str, Tensor] | None = None
    safe_all_borderline: Tensor | None = None
    answers: Tensor | None = None

    def first(self, n: int) -> LayerKeys:
        """The same keys restricted to the first n calibration ids (a learning curve from one capture)."""
        return replace(
            self, src=self.src[:n], tgt={lg: k[:n] for lg, k in self.tgt.items()},
            src_resid=None if self.src_resid is None else self.src_resid[:n],
            tgt_resid=None if self.tgt_resid is None else {lg: k[:n] for lg, k in self.tgt_resid.items()},
        )

    def last_positions(self, k: int) -> LayerKeys:
        """The same keys with only the last k template positions of every fixed-position group (harmful, harmless
        template rows and their residuals): a read-out fitted where the answer is decided only (a diagnostic,
        bench.readout_sweep). Every harmless token row stays a negative."""
        if isinstance(self.src, list):
            raise ValueError("last_positions needs fixed-position keys")

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, -k:]

        return replace(
            self, src=self.src[:, -k:], tgt={lg: t[:, -k:] for lg, t in self.tgt.items()},
            safe_tmpl={lg: t[:, -k:] for lg, t in self.safe_tmpl.items()}, src_resid=cut(self.src_resid),
            tgt_resid=None if self.tgt_resid is None else {lg: t[:, -k:] for lg, t in self.tgt_resid.items()},
            safe_resid_tmpl=cut(self.safe_resid_tmpl),
        )


def flat_rows(k: Tensor | list[Tensor]) -> Tensor:
    """One row per (prompt, position): [n, T, d] or a list of [len_i, d] -> [rows, d]."""
    return torch.cat(k, dim=0) if isinstance(k, list) else k.reshape(-1, k.shape[-1])


def _pooled(k: Tensor | list[Tensor]) -> Tensor:
    return torch.stack([t.mean(0) for t in k]) if isinstance(k, list) else k.mean(1)


def _aligned_targets(src_values: Tensor | list[Tensor], tgt_keys: Tensor | list[Tensor]) -> Tensor:
    """Targets row-aligned with `flat_rows(tgt_keys)`: position by position for fixed positions; for "all"
    positions (lengths differ across languages) every row of a prompt gets its English prompt's mean."""
    if isinstance(tgt_keys, list):
        means = _pooled(src_values)
        return torch.cat([means[i].expand(len(t), -1) for i, t in enumerate(tgt_keys)])
    return src_values.reshape(-1, src_values.shape[-1]) if isinstance(src_values, Tensor) else flat_rows(src_values)


def _map(k: Tensor | list[Tensor], fn) -> Tensor | list[Tensor]:
    return [fn(t) for t in k] if isinstance(k, list) else fn(k)


class NeuronActivation:
    """Pre-activations and activations of a layer's MLP neurons as functions of the MLP input x."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        self.gate = linear_of(model, layer, "gate").weight.detach().float().cpu()
        self.up = linear_of(model, layer, "up").weight.detach().float().cpu()
        self.down = linear_of(model, layer, "down").weight.detach().float().cpu()
        self.act = mlp_of(model, layer).act_fn

    def pre(self, x: Tensor, module: str, idx: Tensor | None = None) -> Tensor:
        w = self.gate if module == "gate" else self.up
        return x @ (w if idx is None else w[idx]).T

    def neurons(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        g = self.gate if idx is None else self.gate[idx]
        u = self.up if idx is None else self.up[idx]
        return self.act(x @ g.T) * (x @ u.T)

    def mlp_out(self, x: Tensor) -> Tensor:
        return self.neurons(x) @ self.down.T

    def score_features(self, x: Tensor, module: str) -> Tensor:
        """What localisation scores per neuron: the module's own output (down: the neuron activation)."""
        return self.neurons(x) if module == "down" else self.pre(x, module)


@dataclass
class EditProblem:
    """Inputs of `solve_edit` for one (layer, module): X_low [n, m], D [n, out], C_safe [m, m], W_S."""

    x_low: Tensor
    gap: Tensor
    c_safe: Tensor
    w_s: Tensor


def build_problem(
    na: NeuronActivation, keys: LayerKeys, module: str, idx: Tensor, langs: list[str],
    source_lang: str = "en", target_scale: float = 1.0,
) -> EditProblem:
    """Keys, gap and anchor of one (layer, module); `target_scale` > 1 overshoots the English target."""
    if module in ("gate", "up"):
        w_s = (na.gate if module == "gate" else na.up)[idx].T  # [d, k]
        x_low = torch.cat([flat_rows(keys.tgt[lg]) for lg in langs])
        target = torch.cat([_aligned_targets(_map(keys.src, lambda t: t @ w_s), keys.tgt[lg]) for lg in langs])
        gap = target_scale * (target - x_low @ w_s)
        safe = keys.safe_all.double()
        return EditProblem(x_low, gap, safe.T @ safe / len(safe), w_s)
    if module == "down":
        return _down_problem(na, keys, idx, langs, refusal_directions(na, keys, source_lang), target_scale)
    raise ValueError(f"unknown module {module!r}")


def refusal_directions(na: NeuronActivation, keys: LayerKeys, source_lang: str) -> Tensor:
    """Unit refusal direction per template position of the block's output: mean source-language harmful
    minus mean source-language harmless residual stream after the MLP, [T, d] (Arditi et al. 2024)."""
    if keys.src_resid is None or keys.safe_resid_tmpl is None or isinstance(keys.src, list):
        raise ValueError("the down_proj variant needs fixed-position keys and residual captures")
    harm = keys.src_resid + na.mlp_out(keys.src)
    safe = keys.safe_resid_tmpl + na.mlp_out(keys.safe_tmpl[source_lang])
    direction = harm.mean(0) - safe.mean(0)
    return direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _require_residual(keys: LayerKeys) -> None:
    """Gap attribution and down_proj edits read the residual stream: keys captured without it cannot serve."""
    if keys.tgt_resid is None or keys.src_resid is None:
        raise ValueError("keys captured without the residual stream (capture_mlp_inputs(..., with_resid=True))")


def refusal_gap_attribution(
    na: NeuronActivation, keys: LayerKeys, langs: list[str], source_lang: str, rhat: Tensor | None = None
) -> tuple[Tensor, float]:
    """How much of the source-vs-target refusal gap each neuron of the layer writes (its direct effect).

    attribution_j = mean over target prompts and template positions of
    (a_j(x_src) - a_j(x_tgt)) * (W_down[:, j] · r̂): the part of the gap along the refusal direction r̂ at the
    layer's output that neuron j's activation difference explains. Also returns the whole gap along r̂ (the
    residual stream after the block, source minus target), so the report can say what share a set covers.
    `rhat`: the refusal directions [T, d] when the caller already has them.
    """
    rhat = refusal_directions(na, keys, source_lang) if rhat is None else rhat
    _require_residual(keys)
    write = rhat @ na.down  # [T, f]: each neuron's unit write along r̂ at each position
    a_src = na.neurons(keys.src)  # [n, T, f]
    post_src = keys.src_resid + na.mlp_out(keys.src)
    attr = torch.zeros(na.down.shape[1], dtype=torch.float64)
    total = 0.0
    for lg in langs:
        attr += ((a_src - na.neurons(keys.tgt[lg])) * write).mean((0, 1)).double()
        post = keys.tgt_resid[lg] + na.mlp_out(keys.tgt[lg])
        total += float(((post_src - post) * rhat).sum(-1).mean())
    return attr / len(langs), total / len(langs)


def _down_problem(
    na: NeuronActivation, keys: LayerKeys, idx: Tensor, langs: list[str], rhat: Tensor, target_scale: float
) -> EditProblem:
    """Keys a_S(x) of the target languages; gap = the English-minus-target residual stream after the block,
    along the refusal direction, so W_down[:, S] learns to write the missing refusal signal."""
    _require_residual(keys)
    post_src = keys.src_resid + na.mlp_out(keys.src)
    x_rows, gaps = [], []
    for lg in langs:
        post = keys.tgt_resid[lg] + na.mlp_out(keys.tgt[lg])
        gap = ((post_src - post) * rhat).sum(-1, keepdim=True) * rhat
        x_rows.append(flat_rows(na.neurons(keys.tgt[lg], idx)))
        gaps.append(target_scale * gap.reshape(-1, gap.shape[-1]))
    a_safe = na.neurons(keys.safe_all, idx).double()
    w_s = na.down[:, idx].T  # [k, d]
    return EditProblem(torch.cat(x_rows), torch.cat(gaps), a_safe.T @ a_safe / len(a_safe), w_s)

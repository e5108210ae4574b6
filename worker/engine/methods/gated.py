"""Gated refusal neurons with per-language gains (beyond the paper; sparse and closed-form).

Each edited layer gets one repurposed neuron (the least used on harmless text), rebuilt from three vectors:

- gate row g: a ridge read-out of the MLP input, +1 on harmful keys of every language (template positions)
  and -1 on every harmless token and on harmless prompts' template tokens (plain and borderline anchor
  prompts), sharpened so that silu(g·x) is "on" for harmful input and about 0 otherwise.
  Its weights are `readout_gamma` (harmless) and `readout_lam` (ridge): heavier harmless weight fires on
  fewer harmless prompts and fewer harmful ones (BENCHMARKS.md §1f); `readout_borderline_weight` weighs the
  borderline anchor prompts apart from the plain ones (§1h); `readout_threshold` t keeps the gate shut where the
  read-out scores t or less (a read-out of the constant 1 stands in for the bias the MLP lacks, §1p);
- up row u: a second ridge read-out, equal to the language's *gain* on that language's harmful keys and 0 on
  harmless ones, so the neuron fires only where both read-outs agree, with an amplitude that depends on
  the language (language identity is linear in the MLP input);
- down_proj column: the layer's English harmful-minus-harmless difference of means after the block, at the
  last template token (the activation-addition vector of Arditi et al. 2024): gain 1 writes what separates an
  English harmful prompt from a harmless one where the answer starts (`gated_write: push`). With `to_source`
  (the default) each target language gets a neuron of its own, writing instead the mean English-harmful-minus-
  that-language-harmful difference (`with_to_source_writes`; more selective on validation prompts and the
  largest cut on held-out ones, BENCHMARKS.md §1l).

A language's gain is a multiplier chosen per language on validation prompts (search.py), so each language
gets the push that helps it and a language whose refusal score falls with any push gets gain 0: the edit
cannot move it on purpose. English gets gain 0 (it is the reference). `worker/engine/methods/conditional.py` is the
single-gain ancestor (one scale for all).

Why not size the write by each language's gap to English along the refusal direction (the first version):
at 40-70% depth that gap is about zero or negative on the demo model (targets project as far along r̂ as
English does; they lack the harmful-vs-harmless *separation*, not the projection), so the neuron wrote
nothing there; the full difference gives those layers a push of the right size (BENCHMARKS.md §1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..keys import LayerKeys, NeuronActivation, flat_rows, refusal_directions
from .conditional import SHARPNESS, least_used_neurons, weighted_ridge


@dataclass
class GatedFit:
    """New rows of one repurposed neuron ([1, d] each) and what the report needs."""

    indices: Tensor
    gate_rows: Tensor
    up_rows: Tensor
    down_cols: Tensor
    gains: dict[str, float]
    info: dict[str, object] = field(default_factory=dict)

    def neuron_writes(self, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
        """What each neuron writes on each row of x ([n, d] MLP inputs): act(g_i·x)·(u_i·x), in units of its down
        column ([n, k], float64)."""
        x = x.reshape(-1, x.shape[-1]).double()
        return act(x @ self.gate_rows.double().T) * (x @ self.up_rows.double().T)

    def written(self, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
        """What the neurons write on each row of x, summed over the neurons (`neuron_writes`)."""
        return self.neuron_writes(x, act).sum(-1)


@dataclass(frozen=True)
class ReadoutSettings:
    """How the gates' harmfulness read-outs are fitted: the config's `readout_*` knobs, in one place.

    The field defaults here are the plain building block (one pooled gate writing the English push); the edit's
    defaults are EditConfig's (`EditConfig.readout` fills every field), not these."""

    gamma: float = 1.0
    lam: float = 0.1
    borderline_weight: float = 1.0
    scope: Literal["pooled", "per_language"] = "pooled"
    focus_weight: float = 4.0
    answer_ids: int = 0  # > 0: the keys' answer rows are the read-outs' negatives (collect_keys captures them)
    # what the neurons write (the down columns), kept here so that readout_basis builds the whole basis:
    # "push": the English harmful-minus-harmless difference; "to_source": one neuron per language, each writing
    # the mean source-minus-that-language harmful difference (BENCHMARKS.md §1l)
    write: Literal["push", "to_source"] = "push"
    # > 0: the gates open only where the read-out scores above this (in units of its +1 harmful target), their
    # writes rescaled so a +1 input writes as before (`thresholded`; BENCHMARKS.md §1p)
    threshold: float = 0.0


@dataclass
class GatedBasis:
    """Everything of a layer's gated neuron that does not depend on the gains (fit once, reused by the search:
    only the up row changes with the gains)."""

    layer: int
    index: Tensor  # [1]
    gate_row: Tensor  # [d]
    down_col: Tensor  # [d], per unit gain
    lang_gap: dict[str, float]  # English-minus-language gap along r̂, per target language (reported)
    mean_gap: float
    up_x: Tensor  # rows of the up-row regression
    up_w: Tensor  # their weights
    up_lang: list[str]  # language of each positive row ("" for the harmless rows)
    lam: float
    info: dict[str, object]

    def fit(self, gains: dict[str, float]) -> GatedFit:
        """The up row for `gains` (language -> multiple of the down column; missing languages 0)."""
        y = torch.tensor([gains.get(lg, 0.0) if lg else 0.0 for lg in self.up_lang], dtype=torch.float64)
        up = weighted_ridge(self.up_x, y, self.up_w, self.lam).float()
        return GatedFit(self.index, self.gate_row[None].clone(), up[None], self.down_col[None].clone(),
                        dict(gains), dict(self.info))


def _lang_gaps(na: NeuronActivation, keys: LayerKeys, langs: list[str], rhat: Tensor) -> dict[str, float]:
    assert keys.src_resid is not None and keys.tgt_resid is not None
    post_src = keys.src_resid + na.mlp_out(keys.src)
    out = {}
    for lg in langs:
        post = keys.tgt_resid[lg] + na.mlp_out(keys.tgt[lg])
        out[lg] = float(((post_src - post) * rhat).sum(-1).mean())
    return out


def to_source_pushes(na: NeuronActivation, keys: LayerKeys, langs: list[str]) -> dict[str, Tensor]:
    """Per language: mean source-language harmful minus that language's harmful residual stream after the block,
    at the last template token. Gain 1 moves a language's harmful prompt, on average, to where the source
    language's harmful prompt is when the answer starts (its language identity included: the refusal may come
    in the source language)."""
    if keys.src_resid is None or keys.tgt_resid is None or isinstance(keys.src, list):
        raise ValueError("the to_source write needs fixed-position keys and residual captures")
    src = (keys.src_resid[:, -1] + na.mlp_out(keys.src[:, -1])).mean(0)
    return {lg: src - (keys.tgt_resid[lg][:, -1] + na.mlp_out(keys.tgt[lg][:, -1])).mean(0) for lg in langs}


def on_level(sharpness: float = SHARPNESS) -> float:
    """A gate's activation on input its read-out scores +1: a down column of push / on_level writes the push at
    gain 1 (one definition for every write)."""
    return float(torch.nn.functional.silu(torch.tensor(sharpness)))


def english_push(na: NeuronActivation, keys: LayerKeys, source_lang: str) -> Tensor:
    """Mean source-language harmful minus harmless residual stream after the block, at the last template token."""
    if keys.src_resid is None or keys.safe_resid_tmpl is None or isinstance(keys.src, list):
        raise ValueError("the gated neuron needs fixed-position keys and residual captures")
    harm = keys.src_resid[:, -1] + na.mlp_out(keys.src[:, -1])
    safe = keys.safe_resid_tmpl[:, -1] + na.mlp_out(keys.safe_tmpl[source_lang][:, -1])
    return harm.mean(0) - safe.mean(0)


class ReadoutRows(NamedTuple):
    """The read-out regression's rows: positives by language, negatives, and the stacked x, weights, targets."""

    by_lang: dict[str, Tensor]
    pos: Tensor
    neg_all: Tensor
    neg_tmpl: Tensor
    x: Tensor
    w: Tensor
    y: Tensor


def _borderline_rows(keys: LayerKeys) -> tuple[Tensor, Tensor]:
    """Which rows of safe_all and of the stacked safe_tmpl come from borderline-harmless anchor prompts."""
    if keys.safe_all_borderline is None or keys.safe_tmpl_borderline is None:
        none = torch.zeros(sum(t.shape[0] * t.shape[1] for t in keys.safe_tmpl.values()), dtype=torch.bool)
        return torch.zeros(len(keys.safe_all), dtype=torch.bool), none
    tmpl = torch.cat([keys.safe_tmpl_borderline[lg].repeat_interleave(t.shape[1]) for lg, t in keys.safe_tmpl.items()])
    return keys.safe_all_borderline, tmpl


def _language_rows(keys: LayerKeys, lang: str | None) -> Tensor:
    """Which rows of the stacked safe_tmpl come from `lang`'s harmless anchor prompts."""
    return torch.cat([torch.full((t.shape[0] * t.shape[1],), lg == lang) for lg, t in keys.safe_tmpl.items()])


def harmfulness_readout(keys: LayerKeys, langs: list[str], source_lang: str, gamma: float = 1.0, lam: float = 0.1,
                        borderline_weight: float = 1.0, focus_weight: float = 1.0,
                        source_as_negative: bool = False, answer_rows: Tensor | None = None,
                        threshold: float = 0.0) -> tuple[Tensor, ReadoutRows]:
    """The gate's linear read-out of the MLP input: +1 on harmful keys of the source and `langs` (template
    positions), -1 on every harmless token and harmless template token, borderline-harmless anchor rows weighing
    `borderline_weight` times a plain one. With a single language in `langs` (a read-out of that language's
    own, BENCHMARKS.md §1h) its harmless template rows weigh `focus_weight` times the others'. With
    `source_as_negative` the source's harmful keys are -1 rows (weighing as much, in all, as the positives)
    instead of +1 rows: a read-out of "harmful and in these languages" that stays shut on source-language
    harm (§1i). `answer_rows` (MLP inputs at answer tokens, teacher-forced) are -1 rows weighing as much, in
    all, as the harmless tokens: the gate then stays shut while the answer is generated and writes only where it
    is decided (§1k: the write on generated tokens is what lowers English refusal and breaks answers at high
    gains). With `threshold` t > 0 the read-out is `thresholded`. Returns it and the regression's rows (the up-row
    regression reuses them; extra rows left out)."""
    by_lang = {lg: flat_rows(keys.tgt[lg]) for lg in langs}
    if not source_as_negative:
        by_lang = {source_lang: flat_rows(keys.src), **by_lang}
    pos = torch.cat(list(by_lang.values()))
    neg_all = keys.safe_all
    neg_tmpl = torch.cat([flat_rows(t) for t in keys.safe_tmpl.values()])
    # Each language weighs the same in the positives; harmless tokens and harmless template tokens share the
    # negative weight (template tokens matter most: harmful keys are taken there). Borderline prompts (alarming
    # topic, benign intent) are the ones the gate confuses with harmful input (§1f), hence their own weight.
    pos_w = torch.cat([torch.full((len(r),), 1.0 / (len(r) * len(by_lang))) for r in by_lang.values()])
    all_b, tmpl_b = _borderline_rows(keys)
    focus = _language_rows(keys, langs[0] if len(langs) == 1 else None)
    neg_w = torch.cat([gamma / 2 / len(neg_all) * torch.where(all_b, borderline_weight, 1.0),
                       gamma / 2 / len(neg_tmpl) * torch.where(tmpl_b, borderline_weight, 1.0)
                       * torch.where(focus, focus_weight, 1.0)])
    x = torch.cat([pos, neg_all, neg_tmpl])
    w = torch.cat([pos_w, neg_w])
    y = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg_all) + len(neg_tmpl))])
    # rows the read-out is solved with but the returned rows (for the up row) stay without
    extra = []
    if source_as_negative:
        src = flat_rows(keys.src)
        extra.append((src, torch.full((len(src),), 1.0 / len(src))))
    if answer_rows is not None and len(answer_rows):
        extra.append((answer_rows, torch.full((len(answer_rows),), gamma / 2 / len(answer_rows))))
    fit_x = torch.cat([x, *(r for r, _ in extra)])
    fit_w = torch.cat([w, *(rw for _, rw in extra)])
    fit_y = torch.cat([y, -torch.ones(len(fit_x) - len(x))])
    rows = ReadoutRows(by_lang, pos, neg_all, neg_tmpl, x, w, y)
    if threshold <= 0:
        return weighted_ridge(fit_x, fit_y, fit_w, lam), rows
    # one factorisation for both: the read-out and a read-out of the constant 1 on the same rows
    both = weighted_ridge(fit_x, torch.stack([fit_y, torch.ones(len(fit_y))], 1), fit_w, lam)
    return thresholded(both[:, 0], both[:, 1], threshold), rows


def thresholded(readout: Tensor, constant: Tensor, threshold: float) -> Tensor:
    """(readout - t * constant) / (1 - t): the MLP has no bias, so the read-out of the constant 1 (fitted on the
    same rows, where the template tokens' shared component makes it nearly exact) stands in for one. An input the
    read-out scores s then scores (s - t) / (1 - t): +1 stays +1, and an input at t or below keeps the gate shut.
    Scaling the gain moves a harmless prompt's write with the harmful ones' (§1o); the threshold cuts the writes
    of inputs scored between 0 and t, harmless questions the gate half-confuses with harm, more than the
    harmful ones' (§1p)."""
    if not 0 <= threshold < 1:
        raise ValueError(f"readout threshold must be in [0, 1), got {threshold}")
    return (readout - threshold * constant) / (1 - threshold)


def gated_basis(
    na: NeuronActivation, keys: LayerKeys, layer: int, langs: list[str], source_lang: str,
    gamma: float = 1.0, lam: float = 0.1, sharpness: float = SHARPNESS, borderline_weight: float = 1.0,
    answer_rows: Tensor | None = None, threshold: float = 0.0,
) -> GatedBasis:
    """Fit the gate read-out, pick the neuron and size its down column (see the module docstring;
    `answer_rows`: see harmfulness_readout)."""
    readout, rows = harmfulness_readout(keys, langs, source_lang, gamma, lam, borderline_weight,
                                        answer_rows=answer_rows, threshold=threshold)
    by_lang, pos, neg_all, neg_tmpl, x, w, y = rows

    gaps = _lang_gaps(na, keys, langs, refusal_directions(na, keys, source_lang))
    mean_gap = sum(gaps.values()) / len(gaps)
    push = english_push(na, keys, source_lang)
    on = on_level(sharpness)
    idx = least_used_neurons(na, neg_all, 1)
    down = push / on

    score_pos = (pos.double() @ readout).float()
    score_neg = (neg_all.double() @ readout).float()
    score_tmpl = (neg_tmpl.double() @ readout).float()
    info: dict[str, object] = {
        "readout_harmful_on": float((score_pos > 0).float().mean()),
        "readout_harmless_tokens_on": float((score_neg > 0).float().mean()),
        "readout_harmless_template_on": float((score_tmpl > 0).float().mean()),
        "push_norm": float(push.norm()),
        "refusal_gap_mean": mean_gap,
        "refusal_gap_per_lang": gaps,
        "fit_residual": float(((x.double() @ readout - y) * w.sqrt()).norm() / (y * w.sqrt()).norm()),
    }
    if answer_rows is not None and len(answer_rows):
        info["readout_answer_tokens_on"] = float(((answer_rows.double() @ readout) > 0).float().mean())
    up_lang = [lg for lg, r in by_lang.items() for _ in range(len(r))] + [""] * (len(neg_all) + len(neg_tmpl))
    return GatedBasis(layer, idx, (sharpness * readout).float(), down.float(), gaps, mean_gap,
                      x, w, up_lang, lam, info)


@dataclass
class LanguageGatedBasis:
    """One gated neuron per target language at one layer (opt-in `readout_scope: per_language`, BENCHMARKS.md §1h):
    each neuron's gate is that language's own harmfulness read-out (positives: that language's harmful keys;
    negatives: every harmless anchor row, that language's own template rows `focus_weight` times heavier, and
    the source language's harmful keys), its up row the shared language read-out with that language's gain
    only, its down column the shared push. A single pooled read-out must separate harm from harmless input in
    ten languages at once; on validation prompts the per-language read-outs fired on as many harmful prompts
    and on far fewer borderline ones (§1h). With the source's harmful keys among the positives (session 12)
    they also wrote on English harmful prompts as much as the pooled neuron, and English refusal fell in
    generation (§1h run 5); as negatives they write nothing there (§1i). Same interface as GatedBasis, so the
    search, the ladder and the confirmation take either."""

    layer: int
    index: Tensor  # [k], one neuron per language of `langs`
    langs: list[str]
    gate_rows: Tensor  # [k, d]
    pooled: GatedBasis  # the up-row regression (and the shared push)
    info: dict[str, object]
    down_cols: Tensor | None = None  # [k, d] per unit gain; None: the pooled push for every neuron

    def fit(self, gains: dict[str, float]) -> GatedFit:
        """Up rows for `gains`: neuron i writes gains[langs[i]] times its down column on that language's harmful
        input."""
        y = torch.tensor([[gains.get(lg, 0.0) if row == lg else 0.0 for lg in self.langs]
                          for row in self.pooled.up_lang], dtype=torch.float64)
        up = weighted_ridge(self.pooled.up_x, y, self.pooled.up_w, self.pooled.lam).float().T
        down = (self.pooled.down_col[None].expand(len(self.langs), -1) if self.down_cols is None
                else self.down_cols).clone()
        return GatedFit(self.index, self.gate_rows.clone(), up, down, dict(gains), dict(self.info))


def language_readout(keys: LayerKeys, lang: str, source_lang: str, gamma: float = 1.0, lam: float = 0.1,
                     borderline_weight: float = 1.0, focus_weight: float = 4.0, answer_rows: Tensor | None = None,
                     threshold: float = 0.0) -> tuple[Tensor, ReadoutRows]:
    """A per-language gate's read-out: "harmful and in `lang`" (its own harmless anchor rows `focus_weight`
    times heavier, the source's harmful keys among the negatives: §1h-§1i)."""
    return harmfulness_readout(keys, [lang], source_lang, gamma, lam, borderline_weight, focus_weight,
                               source_as_negative=True, answer_rows=answer_rows, threshold=threshold)


def language_gated_basis(
    na: NeuronActivation, keys: LayerKeys, layer: int, langs: list[str], source_lang: str,
    gamma: float = 1.0, lam: float = 0.1, sharpness: float = SHARPNESS, borderline_weight: float = 1.0,
    focus_weight: float = 4.0, answer_rows: Tensor | None = None, threshold: float = 0.0,
) -> LanguageGatedBasis:
    """Fit one gate per language of `langs` (language_readout), the pooled basis for the shared down column and
    up-row regression, and pick the len(langs) least used neurons."""
    pooled = gated_basis(na, keys, layer, langs, source_lang, gamma, lam, sharpness, borderline_weight, answer_rows,
                         threshold)
    gates, on = [], {}
    for lg in langs:
        readout, rows = language_readout(keys, lg, source_lang, gamma, lam, borderline_weight, focus_weight,
                                         answer_rows, threshold)
        gates.append(sharpness * readout)
        on[lg] = {"harmful": float((rows.by_lang[lg].double() @ readout > 0).float().mean()),
                  "harmless_template": float((flat_rows(keys.safe_tmpl[lg]).double() @ readout > 0).float().mean())}
    info = {**pooled.info, "readout_per_language_on": on}
    index = least_used_neurons(na, keys.safe_all, len(langs))
    return LanguageGatedBasis(layer, index, list(langs), torch.stack(gates).float(), pooled, info)


AnyGatedBasis = GatedBasis | LanguageGatedBasis


def readout_basis(na: NeuronActivation, keys: LayerKeys, layer: int, langs: list[str], source_lang: str,
                  readout: ReadoutSettings) -> AnyGatedBasis:
    """A layer's gated basis as `readout` asks: one pooled neuron, or one neuron per language; with
    `readout.answer_ids` the keys' answer rows are the read-outs' negatives."""
    if readout.answer_ids and keys.answers is None:
        raise ValueError("readout.answer_ids needs keys with answer rows (collect_keys captures them)")
    answers = keys.answers if readout.answer_ids else None
    if readout.scope == "per_language":
        basis: AnyGatedBasis = language_gated_basis(
            na, keys, layer, langs, source_lang, readout.gamma, readout.lam,
            borderline_weight=readout.borderline_weight, focus_weight=readout.focus_weight, answer_rows=answers,
            threshold=readout.threshold)
    else:
        basis = gated_basis(na, keys, layer, langs, source_lang, readout.gamma, readout.lam,
                            borderline_weight=readout.borderline_weight, answer_rows=answers,
                            threshold=readout.threshold)
    return with_to_source_writes(na, keys, basis) if readout.write == "to_source" else basis


def with_to_source_writes(na: NeuronActivation, keys: LayerKeys, basis: AnyGatedBasis) -> LanguageGatedBasis:
    """The same gates, one neuron per language writing `to_source_pushes` (a pooled basis becomes one neuron per
    language sharing its gate): English's push lifts borderline-harmless refusal with the harmful one, the
    move to the source's harmful prompts far less (BENCHMARKS.md §1l)."""
    if isinstance(basis, GatedBasis):
        langs = [lg for lg in dict.fromkeys(basis.up_lang) if lg and lg in keys.tgt]
        index = least_used_neurons(na, keys.safe_all, len(langs))
        basis = LanguageGatedBasis(basis.layer, index, langs, basis.gate_row[None].expand(len(langs), -1).clone(),
                                   basis, dict(basis.info))
    pushes = to_source_pushes(na, keys, basis.langs)
    down = torch.stack([pushes[lg] for lg in basis.langs]) / on_level()
    info = {**basis.info, "write": "to_source",
            "to_source_norm": {lg: round(float(v.norm()), 3) for lg, v in pushes.items()}}
    return replace(basis, down_cols=down.float(), info=info)

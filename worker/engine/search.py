"""The default method: rank a small family of sparse closed-form candidates on validation prompts only, confirm
the best few by generation on validation prompts, and ship the winner.

Candidates (each one a SparseDelta; `Candidate.kind` says which family):
- gated refusal neuron at each search layer with one gain multiplier for every language ("uniform ×s"),
- the same with a multiplier per language, picked from the uniform rows by that language's own selectivity
  ("per-language"): a language no multiplier helps gets gain 0, so the edit does not push it on purpose,
- the per-language neurons of the two best layers together, and of every layer together, at half and full
  gain,
- the every-layer stack (else the two best layers) at full gain, each deeper layer fitted on keys captured with
  the shallower layers' neurons applied ("fitted in order"; opt-in `stack_fit in_order`, BENCHMARKS.md §1q),
  mended on the screen where its harmless rise passes the tolerance in some languages (`screen_mended`),
- the every-layer stack without each of its layers, and pruned: each language's neuron removed at the layer
  whose removal raised that language's selectivity most (opt-in `stack_fit pruned`, `pruned_by_layer`),
- the paper's closed form (gate_proj, soft and hard anchor) at the middle search layer.

Selectivity on the screen, per target language: the rise of the refusal probability on harmful prompts minus
any rise on plain and on borderline harmless prompts. A candidate's objective is the mean selectivity minus a
penalty on the worst language's fall and on any fall in the source language; candidates with a language that
falls, or a harmless rise above `HARMLESS_TOLERANCE`, are not eligible. Generation on validation prompts then
confirms the best `confirm` candidates against the base model with the configured judge (on
`confirm_harmless_prompts` plain and borderline validation prompts per language); a confirmed candidate must
not lower any language's refusal of harmful prompts nor raise its harmless refusal by more than the tolerance.
A gated candidate is mended instead where it can be: a language it makes worse gets gain 0, an over-refusing
one half its gain, then 0 (`confirm_candidate`; opt-in `confirm_mend neuron`: first only its neuron with the
largest harmless share), and the mended candidate is checked again.

The gain ladder (session 10, opt-in: `ladder_layers`): the first-token screen prefers small gains, but generated
answers on validation prompts showed layer 19's neuron cutting far more at 4-8 times the push (BENCHMARKS.md
§1g). So the neurons of the `ladder_layers` best layers are also generated at every gain multiplier, each language gets
the multiplier that raised its harmful refusal most with no harmless rise beyond the tolerance, and that
per-language candidate is confirmed beside the others; the winner is the best confirmed objective.

Nothing here sees an evaluation prompt: the pipeline passes validation prompts only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .delta import LayerEdit, SparseDelta, applied, make_layer_edit, neuron_rows
from .keys import LayerKeys, NeuronActivation
from .methods.gated import AnyGatedBasis, GatedFit, ReadoutSettings, readout_basis
from .progress import Reporter
from .screen import Screen

HARMLESS_TOLERANCE = 0.03  # largest rise of harmless refusal (probability on the screen, rate in confirmation)
# a language's harmful refusal probability falling more than this on the screen counts as "worse" (smaller falls
# are within the noise of a few validation prompts; the generation check then catches real ones)
FALL_TOLERANCE = 0.05
WORST_PENALTY = 2.0
# generation checks that may mend a confirmed candidate: an over-refusing language's gain is halved, then 0
FIX_ROUNDS = 2


@dataclass
class Candidate:
    name: str
    kind: str  # gated | paper
    delta: SparseDelta
    neurons: dict[str, Any]
    gains: dict[str, float] | None = None  # per language (gated candidates; several layers: the largest)
    parts: list[tuple[AnyGatedBasis, dict[str, float]]] = field(default_factory=list)  # per layer: basis, gains
    screen: dict[str, dict[str, float]] | None = None
    objective: float | None = None
    eligible: bool = False
    why_not: str | None = None
    confirm: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """One row of the report's search table."""
        s = self.screen or {}
        return {"name": self.name, "kind": self.kind, "objective": self.objective, "eligible": self.eligible,
                "why_not": self.why_not, "gains": self.gains, "screen": s, "confirm": self.confirm,
                "parameters": sum(int(e.delta.numel()) for e in self.delta.edits)}


def gated_edits(model: nn.Module, fit: GatedFit, layer: int) -> list[LayerEdit]:
    """The neuron's gate row, up row and down_proj column as three row edits."""
    out = []
    for module, rows in (("gate", fit.gate_rows), ("up", fit.up_rows), ("down", fit.down_cols)):
        old = neuron_rows(model, layer, module, fit.indices).float()
        out.append(make_layer_edit(model, layer, module, fit.indices, (rows - old).T))
    return out


def gated_candidate(model: nn.Module, name: str, parts: list[tuple[AnyGatedBasis, dict[str, float]]]) -> Candidate:
    edits: list[LayerEdit] = []
    neurons: dict[str, Any] = {}
    for basis, gains in parts:
        fit = basis.fit(gains)
        edits += gated_edits(model, fit, basis.layer)
        neurons[f"{basis.layer}.gated"] = {
            "layer": basis.layer, "module": "gated", "count": int(basis.index.numel()),
            "fraction": basis.index.numel() / basis_width(model, basis.layer),
            "neuron": int(basis.index[0]) if basis.index.numel() == 1 else basis.index.tolist(),
            "gains": {k: round(v, 4) for k, v in gains.items()}, **fit.info}
    merged: dict[str, float] = {}
    for _, g in parts:
        for k, v in g.items():
            merged[k] = max(merged.get(k, 0.0), v)
    return Candidate(name, "gated", SparseDelta(edits), neurons, gains=merged, parts=list(parts))


def basis_width(model: nn.Module, layer: int) -> int:
    return int(neuron_rows(model, layer, "gate", torch.tensor([0])).shape[0] and
               NeuronActivation(model, layer).gate.shape[0])


def selectivity(gain: dict[str, dict[str, float]], lang: str) -> float:
    harm = gain["harmful"].get(lang, 0.0)
    return harm - max(0.0, gain.get("plain", {}).get(lang, 0.0)) - max(0.0, gain.get("borderline", {}).get(lang, 0.0))


def score(c: Candidate, targets: list[str], source: str) -> None:
    """Objective and eligibility from the screen gains (see the module docstring)."""
    g = c.screen
    assert g is not None
    sel = [selectivity(g, lg) for lg in targets]
    harm = [g["harmful"][lg] for lg in targets]
    worst = min(harm)
    src_fall = -g["harmful"].get(source, 0.0)
    c.objective = sum(sel) / len(sel) - WORST_PENALTY * max(0.0, -worst) - max(0.0, src_fall)
    harmless_rise = max([v for grp in ("plain", "borderline") for v in g.get(grp, {}).values()] or [0.0])
    if worst < -FALL_TOLERANCE:
        c.eligible, c.why_not = False, f"{targets[harm.index(worst)]} falls on the screen ({worst:+.3f})"
    elif src_fall > FALL_TOLERANCE:
        c.eligible, c.why_not = False, f"{source} falls on the screen ({-src_fall:+.3f})"
    elif harmless_rise > HARMLESS_TOLERANCE:
        c.eligible, c.why_not = False, f"harmless refusal rises on the screen ({harmless_rise:+.3f})"
    elif sum(harm) <= 0 or c.objective <= 0:
        c.eligible, c.why_not = False, "no selective gain"
    else:
        c.eligible, c.why_not = True, None


def per_language_gains(uniform: list[tuple[float, dict[str, dict[str, float]]]], targets: list[str],
                       min_gain: float = 0.01) -> dict[str, float]:
    """For each language the multiplier whose uniform row was most selective for it;
    0 when none raised its harmful refusal by `min_gain` without a harmless rise above the tolerance."""
    out = {}
    for lg in targets:
        best, best_sel = 0.0, min_gain
        for mult, g in uniform:
            rise = max(g.get("plain", {}).get(lg, 0.0), g.get("borderline", {}).get(lg, 0.0))
            if rise > HARMLESS_TOLERANCE:
                continue
            s = selectivity(g, lg)
            if s > best_sel:
                best, best_sel = mult, s
        out[lg] = best
    return out


@dataclass
class SearchResult:
    winner: Candidate | None
    candidates: list[Candidate]
    notes: list[str]

    def table(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.candidates]


ConfirmFn = Callable[[SparseDelta | None], dict[str, dict[str, float]]]
"""Generation on validation prompts: group ("harmful", "plain", "borderline") -> lang -> refusal rate."""
Recapture = Callable[[int, SparseDelta], LayerKeys]
"""One layer's calibration keys captured with a delta applied (the model back to its weights on return)."""
NeuronShares = Callable[[Candidate, str], dict[int, float]]
"""For one language of a gated candidate: layer -> that language's neuron's harmless share there (its largest
write on the language's validation harmless prompts over its mean write on the language's validation harmful
prompts, with the whole candidate applied)."""


def search(
    model: nn.Module, keys: dict[int, LayerKeys], layers: list[int], screen: Screen, targets: list[str],
    source: str, multipliers: list[float], confirm: ConfirmFn | None, n_confirm: int,
    paper: Callable[[int, str], Candidate] | None, reporter: Reporter, *, readout: ReadoutSettings,
    ladder_layers: int = 0, recapture: Recapture | None = None, prune: bool = False,
    shares: NeuronShares | None = None,
) -> SearchResult:
    cands: list[Candidate] = []
    notes: list[str] = []
    per_lang: dict[int, Candidate] = {}
    steps = (len(layers) * (len(multipliers) + 1) + 6 + (1 + FIX_ROUNDS) * (recapture is not None)
             + (len(layers) + 1) * prune)
    done = 0

    # the screen of each gated edit already measured, by its layers' bases and gains: with stack_fit pruned the
    # stack without its shallowest layer can be the two-layer stack at full gain again (a minute of screen)
    seen: dict[tuple[Any, ...], dict[str, dict[str, float]]] = {}

    def screened(c: Candidate) -> Candidate:
        nonlocal done
        key = tuple((id(b), tuple(sorted(g.items()))) for b, g in c.parts) or (id(c),)  # paper: never shared
        if key not in seen:
            seen[key] = screen.gain(c.delta)
        c.screen = {group: dict(by_lang) for group, by_lang in seen[key].items()}
        score(c, targets, source)
        cands.append(c)
        done += 1
        reporter.step("search", done, steps, c.name)
        return c

    for layer in layers:
        basis = readout_basis(NeuronActivation(model, layer), keys[layer], layer, targets, source, readout)
        uniform = []
        for mult in multipliers:
            c = screened(gated_candidate(model, f"gated L{layer} uniform x{mult:g}",
                                         [(basis, {lg: mult for lg in targets})]))
            uniform.append((mult, c.screen))
        gains = per_language_gains(uniform, targets)
        if any(v > 0 for v in gains.values()):
            per_lang[layer] = screened(gated_candidate(model, f"gated L{layer} per-language", [(basis, gains)]))
    ranked_layers = sorted(per_lang, key=lambda ly: per_lang[ly].objective or 0.0, reverse=True)
    # combinations: the two best layers, and every layer (one layer's push alone stays small; a language may be
    # helped at one depth and not at another, its gain there being 0)
    groups = [sorted(ranked_layers[:2])] if len(ranked_layers) >= 2 else []
    if len(ranked_layers) >= 3:
        groups.append(sorted(ranked_layers))
    full_stack: Candidate | None = None
    for group in groups:
        for share, label in ((0.5, "half gain each"), (1.0, "full gain each")):
            parts = [(per_lang[ly].parts[0][0], {k: v * share for k, v in (per_lang[ly].gains or {}).items()})
                     for ly in group]
            name = "+".join(f"L{ly}" for ly in group)
            full_stack = screened(gated_candidate(model, f"gated {name} per-language, {label}", parts))
    if prune and full_stack is not None:
        pruned_by_layer(model, full_stack, screened, targets)  # the last group's stack at full gain
    if recapture is not None and groups:
        group = groups[-1]  # every layer (or the two best): the stack the cascade starves most (§1p)
        parts = fitted_in_order(model, group, {ly: (per_lang[ly].parts[0][0], per_lang[ly].gains or {})
                                               for ly in group}, recapture, targets, source, readout)
        name = "+".join(f"L{ly}" for ly in group)
        screen_mended(model, screened(gated_candidate(
            model, f"gated {name} per-language, full gain each, fitted in order", parts)), screened, targets)
    if paper is not None:
        mid = layers[len(layers) // 2]
        for null_space in ("soft", "hard"):
            try:
                screened(paper(mid, null_space))
            except Exception as exc:  # a paper candidate that cannot be built is reported, not fatal
                notes.append(f"paper candidate at layer {mid} ({null_space}) skipped: {exc}")
    eligible = sorted((c for c in cands if c.eligible), key=lambda c: c.objective or 0.0, reverse=True)
    if not eligible:
        notes.append("no candidate raised refusal of harmful prompts without harming a language or harmless "
                     "prompts on the validation screen: no edit is shipped")
        return SearchResult(None, cands, notes)
    if confirm is None or n_confirm <= 0:
        return SearchResult(eligible[0], cands, notes)
    return confirm_best(model, eligible, cands, notes, confirm, n_confirm, multipliers, targets, source,
                        ladder_layers, reporter, shares)


def fitted_in_order(model: nn.Module, group: list[int], chosen: dict[int, tuple[AnyGatedBasis, dict[str, float]]],
                    recapture: Recapture, targets: list[str], source: str, readout: ReadoutSettings
                    ) -> list[tuple[AnyGatedBasis, dict[str, float]]]:
    """A stacked candidate whose every layer after the shallowest is fitted on keys captured with the shallower
    layers' neurons applied (each at its chosen gains). Fitted on the base model's keys, a deeper gate reads, in
    the edit, inputs the shallower neurons have already moved towards the source language's harm, where the
    per-language gates are fitted shut: it goes quiet on harmful prompts and keeps writing on harmless ones
    (BENCHMARKS.md §1p). Refitted here, it reads what it will see. Each layer's gains stay its own per-language
    gains; everything is still closed form (one capture and one ridge fit per deeper layer)."""
    first = group[0]
    parts = [chosen[first]]
    for layer in group[1:]:
        below = gated_candidate(model, "below", parts)
        keys = recapture(layer, below.delta)
        basis = readout_basis(NeuronActivation(model, layer), keys, layer, targets, source, readout)
        parts.append((basis, chosen[layer][1]))
    return parts


def pruned_by_layer(model: nn.Module, stack: Candidate, screened: Callable[[Candidate], Candidate],
                    targets: list[str]) -> Candidate | None:
    """The stack with each language's neuron removed at the one layer whose removal raises that language's
    selectivity most on the screen (`stack_fit pruned`). Under the shallower layers' neurons a deeper gate,
    fitted on the base model's keys, can go quiet on its language's harmful prompts and keep writing on
    harmless ones (BENCHMARKS.md §1p; held out, §1v: L22's th and bn neurons wrote 6-16 times more on the
    newly refused harmless questions than on their own harmful prompts). Each stack without one of its layers
    is screened (a candidate of its own); a language whose selectivity is higher without layer L loses its
    neuron there, at most at one layer (the best such), so no language is dropped everywhere by removals that
    were each measured with the others in place. Returns the pruned stack, screened, or None (nothing to
    prune). Neurons of another language that write on a language's prompts are not attributed: the removal of
    a whole layer is measured per language, and only that language's own neuron is removed."""
    if len(stack.parts) < 2 or stack.screen is None:
        return None
    base_sel = {lg: selectivity(stack.screen, lg) for lg in targets}
    best: dict[str, tuple[float, int]] = {}  # lang -> (selectivity gained, index of the layer to drop it at)
    for i, (basis, _) in enumerate(stack.parts):
        rest = [p for j, p in enumerate(stack.parts) if j != i]
        without = screened(gated_candidate(model, f"{stack.name} without L{basis.layer}", rest))
        assert without.screen is not None
        for lg in targets:
            gained = selectivity(without.screen, lg) - base_sel[lg]
            if stack.parts[i][1].get(lg, 0.0) > 0 and gained > best.get(lg, (0.0, -1))[0]:
                best[lg] = (gained, i)
    if not best:
        return None
    parts = [(b, {lg: 0.0 if best.get(lg, (0.0, -1))[1] == i else v for lg, v in g.items()})
             for i, (b, g) in enumerate(stack.parts)]
    label = ", ".join(f"{lg} at L{stack.parts[i][0].layer}" for lg, (_, i) in sorted(best.items()))
    return screened(gated_candidate(model, f"{stack.name}, pruned ({label})", parts))


def mended(model: nn.Module, original: Candidate, scale: dict[str, float], off: dict[str, int] | None = None
           ) -> Candidate:
    """`original` with each language's gains times its scale, at every layer alike, and with each language of
    `off` (language -> layer) at gain 0 at that one layer."""
    off = off or {}
    parts = [(b, {lg: 0.0 if off.get(lg) == b.layer else v * scale.get(lg, 1.0) for lg, v in g.items()})
             for b, g in original.parts]
    label = ", ".join([f"{lg} x{s:g}" for lg, s in scale.items() if s < 1.0]
                      + [f"{lg} off at L{ly}" for lg, ly in off.items()])
    return gated_candidate(model, f"{original.name} (gain {label})", parts)


def over_tolerance(rise: dict[str, dict[str, float]], targets: list[str]) -> list[str]:
    """Target languages whose plain or borderline harmless refusal rose beyond the tolerance."""
    return [lg for lg in targets
            if max(rise.get(g, {}).get(lg, 0.0) for g in ("plain", "borderline")) > HARMLESS_TOLERANCE]


def screen_mended(model: nn.Module, c: Candidate, screened: Callable[[Candidate], Candidate],
                  targets: list[str]) -> Candidate:
    """The confirmation's mend, on the screen, for a candidate the screen rejects: each target language whose
    harmless refusal rose beyond the tolerance gets half its gain, then 0, each version screened (and ranked) as
    a candidate of its own, `FIX_ROUNDS` at most. Used for the stack fitted in order, which rose beyond the
    tolerance in two languages only (bn, jv: BENCHMARKS.md §1q) and so never reached the generation check. The
    deeper layers keep the fit made under the shallower neurons at their full gains (a refit per mend would
    cost a recapture each). Returns the last version screened."""
    original, scale = c, {lg: 1.0 for lg in targets}
    for _ in range(FIX_ROUNDS):
        over = [lg for lg in over_tolerance(c.screen or {}, targets) if (c.gains or {}).get(lg, 0.0) > 0]
        if c.eligible or not over:
            break
        for lg in over:
            scale[lg] = 0.0 if scale[lg] < 1.0 else 0.5
        c = screened(mended(model, original, scale))
    return c


def counted(confirm: ConfirmFn, reporter: Reporter, most: int) -> ConfirmFn:
    """`confirm` that reports each generation pass as the "confirm" phase (most of the search's wall time, which
    showed no progress before): passes done of at most `most` (a fix's re-check may not be needed)."""
    done = 0

    def run(delta: SparseDelta | None) -> dict[str, dict[str, float]]:
        nonlocal done
        out = confirm(delta)
        done += 1
        reporter.step("confirm", min(done, most), most)
        return out
    return run


def confirm_best(model: nn.Module, eligible: list[Candidate], cands: list[Candidate], notes: list[str],
                 confirm: ConfirmFn, n_confirm: int, multipliers: list[float], targets: list[str], source: str,
                 ladder_layers: int, reporter: Reporter | None = None, shares: NeuronShares | None = None
                 ) -> SearchResult:
    """Generation on validation prompts: the `n_confirm` best screened candidates and the gain ladder of the
    `ladder_layers` best layers (by their best eligible single-layer candidate); the best that holds up wins."""
    reporter = reporter or Reporter()
    to_confirm = eligible[:n_confirm]
    ladder: dict[int, AnyGatedBasis] = {}
    for c in eligible:
        if c.kind == "gated" and len(c.parts) == 1 and len(ladder) < ladder_layers:
            ladder.setdefault(c.parts[0][0].layer, c.parts[0][0])
    # the base, every rung of every ladder, then each candidate and its possible re-checks after mends
    rounds = fix_rounds(shares)
    most = 1 + len(ladder) * len(multipliers) + (1 + rounds) * (len(to_confirm) + len(ladder))
    confirm = counted(confirm, reporter, most)
    base = confirm(None)
    for basis in ladder.values():
        laddered = gain_ladder(model, basis, multipliers, confirm, base, targets)
        if laddered is not None:
            cands.append(laddered)
            to_confirm.append(laddered)
    winner = None
    for c in to_confirm:
        checked = confirm_candidate(model, c, confirm, base, targets, source, shares)
        if checked is not None and (winner is None or checked.confirm["objective"] > winner.confirm["objective"]):
            winner = checked
    if winner is None:
        notes.append("no candidate held up in generation on validation prompts: no edit is shipped")
    reporter.step("confirm", most, most)
    return SearchResult(winner, cands, notes)


def refusal_change(now: dict[str, dict[str, float]], base: dict[str, dict[str, float]]
                   ) -> dict[str, dict[str, float]]:
    return {g: {lg: now[g][lg] - base[g][lg] for lg in now[g]} for g in now}


def gain_ladder(model: nn.Module, basis: AnyGatedBasis, multipliers: list[float], confirm: ConfirmFn,
                base: dict[str, dict[str, float]], targets: list[str]) -> Candidate | None:
    """Per-language gains chosen by generation on validation prompts instead of by the first-token screen.

    The screen prefers small gains (a first-token rise of a few points), while generation on validation prompts
    showed the same neuron at 4-8 times the push cutting far more with little harmless rise
    (BENCHMARKS.md §1g). So each uniform gain of the layer is generated once, and each language gets the gain
    that was most selective for it in the generated answers, never one that raised its plain or borderline
    harmless refusal beyond the tolerance (0 where none raised its harmful refusal): `per_language_gains`.
    Returns that candidate, unconfirmed (None: no language helped).
    """
    ladder = []
    for mult in sorted(multipliers):
        c = gated_candidate(model, f"gated L{basis.layer} uniform x{mult:g}", [(basis, {lg: mult for lg in targets})])
        ladder.append((mult, refusal_change(confirm(c.delta), base)))
    gains = per_language_gains(ladder, targets)  # the screen's rule, on generated refusal rates
    if not any(gains.values()):
        return None
    c = gated_candidate(model, f"gated L{basis.layer} per-language by generation", [(basis, gains)])
    c.eligible, c.why_not = True, None
    c.confirm = {"ladder": {f"x{mult:g}": change for mult, change in ladder}}
    return c


def _flagged(delta_rate: dict[str, dict[str, float]], targets: list[str]) -> tuple[list[str], list[str]]:
    """Target languages whose harmful refusal fell, and those whose plain or borderline harmless refusal rose
    beyond the tolerance, in one generation check against the base."""
    worse = [lg for lg in targets if delta_rate["harmful"][lg] < 0]
    return worse, over_tolerance(delta_rate, targets)


def fix_rounds(shares: NeuronShares | None) -> int:
    """Mends a confirmed candidate may get: the neuron mend (`shares` given) takes one round more."""
    return FIX_ROUNDS + (shares is not None)


def live_layers(c: Candidate, lang: str) -> list[int]:
    """Layers where `lang`'s neuron writes (gain above 0) in a gated candidate."""
    return [b.layer for b, g in c.parts if g.get(lang, 0.0) > 0]


def confirm_candidate(model: nn.Module, c: Candidate, confirm: ConfirmFn, base: dict[str, dict[str, float]],
                      targets: list[str], source: str, shares: NeuronShares | None = None) -> Candidate | None:
    """Generation check of one candidate. A gated candidate is mended up to `fix_rounds` times, each flagged
    language on its own: one whose harmful refusal fell gets gain 0 (the push moves it the wrong way); one whose
    plain or borderline harmless refusal rose beyond the tolerance first gets half its gain (the push is too
    strong for it), then 0 if it is still flagged. A language at gain 0 that stays flagged (another language's
    neuron writes on its prompts) cannot be mended: the candidate is rejected.

    With `shares` (`confirm_mend neuron`), an over-refusing language with neurons at two or more layers first
    loses only its neuron with the largest harmless share, keeping its full push at the other layers; then half,
    then 0 as above. Halving scales a neuron's write on harmless questions with its write on harm (the share does
    not move, BENCHMARKS.md §1o), so it costs cut wherever the language's other neurons had a margin; held out,
    the flips of one language came mostly from one or two of its neurons (§1v)."""
    delta_rate = refusal_change(confirm(c.delta), base)
    worse, over = _flagged(delta_rate, targets)
    c.confirm = {**(c.confirm or {}), "refusal_change": delta_rate, "worse": worse, "over_refusing": over}
    if c.kind == "gated" and c.parts:
        original, scale, off, fixes = c, {lg: 1.0 for lg in targets}, {}, []
        for _ in range(fix_rounds(shares)):
            mend = [lg for lg in targets if (lg in worse or lg in over) and (c.gains or {}).get(lg, 0.0) > 0]
            if not mend:
                break
            share_log: dict[str, dict[int, float]] = {}
            for lg in mend:
                live = live_layers(c, lg)
                if lg in worse:
                    scale[lg] = 0.0
                    continue
                if shares is not None and lg not in off and len(live) >= 2:
                    share_log[lg] = {ly: v for ly, v in shares(c, lg).items() if ly in live}
                    if share_log[lg]:  # empty for a pooled neuron (not one per language): halved instead
                        off[lg] = max(share_log[lg], key=share_log[lg].__getitem__)
                        continue
                scale[lg] = 0.0 if scale[lg] < 1.0 else 0.5
            fixed = mended(model, original, scale, off)
            fixed.screen, fixed.objective, fixed.eligible = original.screen, original.objective, True
            delta_rate = refusal_change(confirm(fixed.delta), base)
            worse, over = _flagged(delta_rate, targets)
            fixes.append({"gains": fixed.gains, "refusal_change": delta_rate, "worse": worse, "over_refusing": over,
                          **({"off": dict(off), "shares": share_log} if shares is not None else {})})
            # one record: the search table's row shows the checks after each mend too
            fixed.confirm = original.confirm
            fixed.confirm.update(fixes=fixes, refusal_change_after_fix=delta_rate, gains_after_fix=fixed.gains)
            c = fixed
    harm = [delta_rate["harmful"][lg] for lg in targets]
    harmless_rise = max([v for g in ("plain", "borderline") for v in delta_rate.get(g, {}).values()] or [0.0])
    src = delta_rate["harmful"].get(source, 0.0)
    assert c.confirm is not None
    c.confirm["objective"] = sum(harm) / len(harm) - harmless_rise
    if min(harm) < 0 or src < 0 or harmless_rise > HARMLESS_TOLERANCE or sum(harm) <= 0:
        c.confirm["rejected"] = True
        return None
    return c


def confirm_with(generate_and_judge: Callable[[], dict[str, dict[str, float]]], model: nn.Module
                 ) -> ConfirmFn:
    def run(delta: SparseDelta | None) -> dict[str, dict[str, float]]:
        if delta is None:
            return generate_and_judge()
        with applied(model, delta):
            return generate_and_judge()
    return run

"""Stage 3, select: which layers, modules and neurons to edit. The two methods of EditConfig.method:
- paper: the paper's closed form as configured; layers="auto" picks the layer and module with the best
  first-token refusal screen on validation prompts (LayerScreen);
- search (the default): sparse closed-form candidates ranked on validation prompts, the best confirmed by
  generation (worker/engine/search.py), the winner shipped.
Each returns (layer choices, the search or sweep table, notes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..arch import num_layers
from ..capture import largest_writes
from ..config import EditConfig
from ..delta import LayerEdit, SparseDelta, applied, apply_delta, revert_delta
from ..errors import UserError
from ..evaluate import generate, generate_sets, refusal_scores, refusal_token_ids
from ..judges import make_judge
from ..keys import LayerKeys
from ..models import LoadedModel
from ..progress import Reporter
from . import StageTimer
from .capture import collect_keys
from .evaluate import configured_judge
from .fit import LayerChoice, edit_one, edits_of
from .plan import Plan, candidate_layers, candidate_modules


class LayerScreen:
    """The cheap proxy: first-token refusal log-odds on validation prompts (harmful in every language, plus
    held-out harmless prompts whose refusals must not rise)."""

    def __init__(self, lm: LoadedModel, plan: Plan, config: EditConfig, token_ids: list[int]) -> None:
        self.lm, self.config, self.token_ids = lm, config, token_ids
        ids = plan.val_ids[: config.screen_prompts]
        self.harm = {lg: [plan.harmful[i][lg] for i in ids] for lg in plan.langs}
        n_safe = min(4, config.screen_prompts)  # a smaller screen (benchmark quick mode) shrinks both sides
        self.safe = [t for lg in plan.langs for t in plan.harmless_val[lg][:n_safe]]
        self.base = self.measure()

    def measure(self) -> dict[str, float]:
        bs = self.config.batch_size
        out = {lg: float(refusal_scores(self.lm.model, self.lm.tokenizer, t, self.token_ids, bs).mean())
               for lg, t in self.harm.items() if t}
        out["harmless"] = float(refusal_scores(self.lm.model, self.lm.tokenizer, self.safe, self.token_ids,
                                               bs).mean())
        return out

    def gain(self, now: dict[str, float]) -> dict[str, float]:
        return {k: now[k] - self.base[k] for k in now}

    def objective(self, gain: dict[str, float]) -> float:
        """Mean target-language gain minus the harmless gain (refusing harmless prompts is a loss)."""
        tgt = [gain[lg] for lg in self.config.target_langs if lg in gain]
        return sum(tgt) / max(1, len(tgt)) - max(0.0, gain["harmless"])


def paper_method(lm, plan, config, rep, timer) -> tuple[list[LayerChoice], list[dict], list[str]]:
    """The paper's closed form as configured (layers given: in sequence; "auto": the layer screen)."""
    token_ids = refusal_token_ids(lm.tokenizer, validation_refusal_openings(lm, plan, config))
    layers = candidate_layers(config, num_layers(lm.model))
    if config.layers == "auto":
        choice, sweep = auto_select(lm, plan, config, rep, timer, layers, token_ids)
        return [choice], sweep, []
    return fit_in_sequence(lm, plan, config, layers, rep, timer), [], []


def fit_in_sequence(lm: LoadedModel, plan: Plan, config: EditConfig, layers: list[int], rep: Reporter,
                    timer: StageTimer, first_keys: LayerKeys | None = None) -> list[LayerChoice]:
    """Each layer's edit in turn, its keys captured with the earlier layers' edits applied (`first_keys`: the
    first layer's keys, already captured on the base model). The model is back to its base weights on return,
    also when cancelled mid-sequence."""
    modules = candidate_modules(config)
    choices: list[LayerChoice] = []
    try:
        for i, layer in enumerate(layers):
            if i == 0 and first_keys is not None:
                keys = first_keys
            else:
                with timer("capture"):
                    keys = collect_keys(lm, plan, [layer], config, rep)[layer]
            for module in modules:
                rep.step("solve", len(choices), len(layers) * len(modules))
                with timer("solve"):
                    ch = edit_one(lm, keys, layer, module, config)
                with timer("apply"):
                    apply_delta(lm.model, SparseDelta(ch.edits))
                choices.append(ch)
    finally:
        with timer("apply"):
            revert_delta(lm.model, SparseDelta(list(reversed(edits_of(choices)))))
    return choices


# layers="auto" of the search: 65%, 80% and 92% of the depth (layers 16, 19 and 22 of 24). Below about 55% a
# gated write of the English harmful-minus-harmless difference barely moved the first-token refusal screen on
# the demo model (layer 10: none, layer 13: a third of layer 16's rise), from the validation diagnostic of
# BENCHMARKS.md §1.
SEARCH_DEPTHS = (0.65, 0.8, 0.92)


def search_layers(config: EditConfig, n_layers: int) -> list[int]:
    if config.search_layers != "auto":
        return sorted({int(x) for x in config.search_layers})
    return sorted({min(n_layers - 1, max(1, round(f * n_layers))) for f in SEARCH_DEPTHS})


@dataclass
class SearchSetup:
    """What the search needs, built once: candidate layers, the validation screen, the calibration keys, the
    generation check on validation prompts and the paper's closed form as a candidate builder."""

    layers: list[int]
    screen: Any
    keys: dict[int, LayerKeys]
    confirm: Any
    paper: Any
    recapture: Any = None  # (layer, delta) -> that layer's keys with the delta applied (stack_fit in_order)
    shares: Any = None  # (candidate, lang) -> layer -> its neuron's harmless share (confirm_mend neuron)


def confirmation_sets(plan: Plan, config: EditConfig) -> dict[str, dict[str, list[str]]]:
    """The validation prompts a candidate is generated on before it ships (harmful, plain and borderline)."""
    confirm_ids = plan.val_ids[: config.confirm_prompts]
    # 4 per language by default (what §1m measured held out); more catch more over-refusal on validation
    n_harmless = config.confirm_harmless_prompts
    return {
        "harmful": {lg: [plan.harmful[i][lg] for i in confirm_ids] for lg in plan.langs},
        "plain": {lg: plan.harmless_val[lg][:n_harmless] for lg in plan.langs},
        "borderline": {lg: plan.borderline_val[lg][:n_harmless] for lg in plan.langs},
    }


def refusal_rates(sets: dict[str, dict[str, list[str]]], answers: dict[str, dict[str, list[str]]], judge: Any
                  ) -> dict[str, dict[str, float]]:
    """Share of answers the judge calls refusals, per prompt group and language (empty sets left out)."""
    out: dict[str, dict[str, float]] = {}
    for group, by_lang in sets.items():
        for lg, texts in by_lang.items():
            if texts:
                verdicts = judge.judge(texts, answers[group][lg], [lg] * len(texts))
                out.setdefault(group, {})[lg] = sum(v.refused for v in verdicts) / len(verdicts)
    return out


def search_setup(lm: LoadedModel, plan: Plan, config: EditConfig, rep: Reporter, timer: StageTimer) -> SearchSetup:
    from ..screen import Screen as FirstTokenScreen
    from ..screen import ScreenPrompts
    from ..search import Candidate, confirm_with

    layers = search_layers(config, num_layers(lm.model))
    confirm_sets = confirmation_sets(plan, config)
    judge = configured_judge(config)

    def generate_and_judge() -> dict[str, dict[str, float]]:
        # cancellation between batches; progress is one `confirm` step per pass (search.counted), not per batch
        answers = generate_sets(lm.model, lm.tokenizer, confirm_sets, config.max_new_tokens, config.batch_size,
                                Reporter(should_cancel=rep.should_cancel), "search")
        return refusal_rates(confirm_sets, answers, judge)

    with timer("search"):
        # the refusal tokens come from the base model's English answers to validation prompts
        english = confirm_sets["harmful"][config.source_lang]
        token_ids = refusal_token_ids(lm.tokenizer, refusal_openings_of(
            generate(lm.model, lm.tokenizer, english, 8, config.batch_size), config.source_lang))
        screen_ids = plan.val_ids[: config.screen_prompts]
        # every validation harmless prompt (a handful per language): over-refusal is what the screen must not miss
        prompts = ScreenPrompts(
            harmful={lg: [plan.harmful[i][lg] for i in screen_ids] for lg in plan.langs},
            plain={lg: plan.harmless_val[lg] for lg in plan.langs},
            borderline={lg: plan.borderline_val[lg] for lg in plan.langs},
        )
        screen = FirstTokenScreen(lm.model, lm.tokenizer, prompts, token_ids, layers, config.batch_size, rep)
    with timer("capture"):
        keys = collect_keys(lm, plan, layers, config, rep, with_resid=True)

    def paper_candidate(layer: int, null_space: str) -> Candidate:
        cfg = replace(config, module="gate", select="contrast", null_space=null_space)
        ch = edit_one(lm, keys[layer], layer, "gate", cfg)
        return Candidate(f"paper L{layer} gate ({null_space})", "paper", SparseDelta(ch.edits),
                         {f"{layer}.gate": ch.neurons})

    def recapture(layer: int, delta: SparseDelta) -> LayerKeys:
        # Prompt keys only: the answer-token rows are the base capture's. The shallower gates are fitted shut on
        # answer tokens (readout_answer_ids), so they should barely move those rows (assumed, not measured), and
        # regenerating the answers would cost more. Minutes on a CPU: its progress is the search phase's, named.
        def progress(phase: str, done: int, total: int, message: str | None = None) -> None:
            rep.step("search", done, total, f"layer {layer}'s keys under the shallower neurons (stack fitted in order)")

        with applied(lm.model, delta):
            got = collect_keys(lm, plan, [layer], replace(config, readout_answer_ids=0), Reporter(progress),
                               with_resid=True)[layer]
        got.answers = keys[layer].answers
        return got

    def shares(c: Candidate, lang: str) -> dict[int, float]:
        return harmless_shares(lm, plan, config, c, lang)

    return SearchSetup(layers, screen, keys, confirm_with(generate_and_judge, lm.model), paper_candidate,
                       recapture if config.stack_fit == "in_order" else None,
                       shares if config.confirm_mend == "neuron" else None)


def harmless_shares(lm: LoadedModel, plan: Plan, config: EditConfig, c: Any, lang: str) -> dict[int, float]:
    """Layer -> the harmless share of `lang`'s neuron there, with all of candidate `c` applied (so the shallower
    layers' neurons have written): its largest write over the template tokens of any of the language's
    validation harmless prompts (plain and borderline) over its mean such write on the language's validation
    harmful prompts (the screen's ids), in units of its down column. Validation prompts only (§1o's measure;
    `bench/flip_writes.py` made it on held-out ones, after the fact)."""
    harmless = plan.harmless_val[lang] + plan.borderline_val[lang]
    harmful = [plan.harmful[i][lang] for i in plan.val_ids[: config.screen_prompts]]
    parts = [b for b, g in c.parts if g.get(lang, 0.0) > 0 and lang in getattr(b, "langs", [])]
    if not parts or not harmless or not harmful:
        return {}
    neurons = {b.layer: b.index[b.langs.index(lang)].reshape(1) for b in parts}
    writes = largest_writes(lm.model, lm.tokenizer, c.delta, harmless + harmful, neurons, config.batch_size)
    out = {}
    for layer, largest in writes.items():
        on_harm = float(largest[len(harmless):, 0].mean())
        out[layer] = float(largest[: len(harmless), 0].max()) / max(on_harm, 1e-6)
    return out


def run_search(lm: LoadedModel, setup: SearchSetup, config: EditConfig, rep: Reporter,
               keys: dict[int, LayerKeys] | None = None, confirm: bool = True) -> Any:
    """The search over `setup` (optionally other `keys`, e.g. fewer calibration ids; `confirm=False`: screen
    only, no generation check and no paper candidates)."""
    from ..search import search

    return search(lm.model, keys or setup.keys, setup.layers, setup.screen, list(config.target_langs),
                  config.source_lang, list(config.search_gains), setup.confirm if confirm else None,
                  config.confirm_candidates if confirm else 0, setup.paper if confirm else None, rep,
                  readout=config.readout, ladder_layers=config.ladder_layers,
                  # a recapture takes every calibration id: not for a search over other keys (learning curve)
                  recapture=setup.recapture if confirm and keys is None else None,
                  prune=config.stack_fit == "pruned", shares=setup.shares if confirm else None)


def search_method(lm, plan, config, rep, timer) -> tuple[list[LayerChoice], list[dict], list[str]]:
    """The default: rank candidates on validation prompts, confirm by generation, ship the winner."""
    setup = search_setup(lm, plan, config, rep, timer)
    with timer("search"):
        found = run_search(lm, setup, config, rep)
    table = found.table()
    w = found.winner
    if w is None:
        return [], table, found.notes
    notes = list(found.notes) + [f"search winner: {w.name}"]
    choices = []
    by_layer: dict[int, list[LayerEdit]] = {}
    for e in w.delta.edits:
        by_layer.setdefault(e.layer, []).append(e)
    for layer, edits in by_layer.items():
        module = "gated" if w.kind == "gated" else edits[0].module
        info = w.neurons.get(f"{layer}.{module}", {})
        choices.append(LayerChoice(layer, module, edits[0], {**info, "candidate": w.name}, extra=edits[1:]))
    return choices, table, notes


# method name -> (model, plan, config, reporter, timer) -> (layer choices, search/sweep table, notes)
METHODS = {"search": search_method, "paper": paper_method}


def refusal_openings_of(answers: list[str], source: str) -> list[str]:
    """First words of the answers the offline judge calls refusals."""
    verdicts = make_judge("refusal").judge([""] * len(answers), answers, [source] * len(answers))
    return [a.split()[0] for a, v in zip(answers, verdicts, strict=True) if v.refused and a.split()]


def validation_refusal_openings(lm, plan, config) -> list[str]:
    """The model's own English refusal openings, from its answers to validation (else calibration) prompts:
    never from evaluation prompts."""
    ids = (plan.val_ids or plan.cal_ids)[: max(1, config.confirm_prompts)]
    answers = generate(lm.model, lm.tokenizer, [plan.harmful[i][config.source_lang] for i in ids], 8,
                       config.batch_size)
    return refusal_openings_of(answers, config.source_lang)


def auto_select(lm, plan, config, rep, timer, layers, token_ids):
    """layers="auto": the candidate (layer, module) whose edit scores best on the layer screen."""
    with timer("capture"):
        all_keys = collect_keys(lm, plan, layers, config, rep)
    screen = LayerScreen(lm, plan, config, token_ids)
    modules = candidate_modules(config) if config.module != "gate" else ["gate", "up"]
    return screen_candidates(lm, all_keys.__getitem__, [(ly, m) for ly in layers for m in modules], config,
                             screen, rep, timer)


def screen_candidates(lm: LoadedModel, keys_of: Callable[[int], LayerKeys], candidates: list[tuple[int, str]],
                      config: EditConfig, screen: LayerScreen, rep: Reporter | None = None,
                      timer: StageTimer | None = None) -> tuple[LayerChoice, list[dict[str, Any]]]:
    """Fit each (layer, module) candidate (`keys_of(layer)`: its keys), measure the screen's gain with its edit
    applied, and return the best objective's choice with the sweep (one row per candidate)."""
    rep, timer = rep or Reporter(), timer or StageTimer()
    best: tuple[float, LayerChoice] | None = None
    sweep = []
    n = len(candidates)
    for i, (layer, module) in enumerate(candidates):
        rep.step("localize", i, n, f"layer {layer} {module}")
        with timer("solve"):
            ch = edit_one(lm, keys_of(layer), layer, module, config)
        d = SparseDelta(ch.edits)
        with timer("apply"):
            apply_delta(lm.model, d)
        try:
            gain = screen.gain(screen.measure())
        finally:
            revert_delta(lm.model, d)
        obj = screen.objective(gain)
        sweep.append({"layer": layer, "module": module, "objective": obj, "gain": gain,
                      "neurons": ch.neurons["count"], "fit_residual": ch.neurons["fit_residual"]})
        if best is None or obj > best[0]:
            best = (obj, ch)
    rep.step("localize", n, n)
    if best is None:
        raise UserError("no candidate layer/module to choose from (check layers and layer_band)", param="layers")
    return best[1], sweep

"""edit(config) -> EditResult: load, capture, localize, solve, apply, evaluate, write artifacts.

Roles of the prompts (never mixed): calibration ids give keys and targets; validation ids rank candidate
layers/modules with the first-token refusal screen; evaluation ids are only generated on, before and
after. Harmless prompts are split the same way into the utility anchor and the held-out KL/perplexity set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import data as calib
from .arch import num_layers
from .capture import capture_mlp_inputs
from .config import EditConfig, validate_config
from .delta import LayerEdit, SparseDelta, applied, apply_delta, make_layer_edit, revert_delta
from .errors import UserError
from .evaluate import generate, kl_and_perplexity, refusal_scores, refusal_token_ids
from .judges import make_judge
from .keys import LayerKeys, NeuronActivation, build_problem, refusal_gap_attribution
from .localize import budget_count, jaccard, neuron_scores, select_neurons
from .methods import LAYER_METHODS
from .models import LoadedModel, load_model
from .progress import Reporter
from .result import EditResult, LanguageResult
from .solve import anchor_change, solve_edit
from .stages import StageTimer

DEFAULT_GAP_BUDGET = 0.05  # refusal_gap selection without a neuron_budget: top 5% of the layer
SAMPLE_ANSWERS = 3  # evaluation answers per language kept (before/after, with verdicts) for the report


@dataclass
class Plan:
    """Which prompt plays which role."""

    cal_ids: list[str]
    val_ids: list[str]
    eval_ids: list[str]
    harmful: dict[str, dict[str, str]]  # id -> lang -> text
    anchor: dict[str, list[str]]  # lang -> harmless texts (utility anchor, localisation)
    harmless_val: dict[str, list[str]]  # lang -> harmless texts for the layers="auto" screen
    harmless_eval: dict[str, list[str]]  # lang -> held-out harmless texts (KL, perplexity)
    langs: list[str]  # source first, then targets
    notes: list[str] = field(default_factory=list)
    borderline_val: dict[str, list[str]] = field(default_factory=dict)  # lang -> texts (search screen)
    borderline_eval: dict[str, list[str]] = field(default_factory=dict)  # lang -> held-out over-refusal texts
    second_test: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> lang -> harmful text


def make_plan(config: EditConfig, reporter: Reporter) -> Plan:
    cs = calib.load_calibration(config.calibration) if config.calibration else calib.demo_calibration()
    notes = list(cs.notes)
    if not cs.languages("harmless"):
        cs = calib.with_bundled_harmless(cs)
        notes = list(cs.notes)
    notes += calib.validate(cs, config.source_lang, list(config.target_langs))
    notes = list(dict.fromkeys(notes))  # the loaders and the validator may repeat a note
    langs = [config.source_lang, *config.target_langs]
    harmful = {i: {lg: p.text for lg, p in by.items()} for i, by in cs.by_id("harmful").items()}
    usable = sorted(i for i, by in harmful.items() if all(lg in by for lg in langs))
    if len(usable) < len(harmful):
        reporter.warn(f"{len(harmful) - len(usable)} harmful ids lack some language and are skipped")
    cal_ids, val_ids, eval_ids = calib.split_ids(usable, config.eval_split, config.val_split, config.seed)
    if config.max_calibration_ids:
        cal_ids = cal_ids[: config.max_calibration_ids]
    if not cal_ids or not eval_ids:
        raise UserError("too few harmful prompts to split into calibration and evaluation sets",
                        param="calibration")
    anchor: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for lg in langs:
        by_id = {p.id: p.text for p in cs.harmless(lg)}
        a_ids, v_ids, e_ids = calib.split_ids(sorted(by_id), 0.3, 0.15, config.seed)
        anchor[lg], val[lg], held[lg] = ([by_id[i] for i in g] for g in (a_ids, v_ids, e_ids))
        anchor[lg] = anchor[lg][: config.max_anchor_prompts]
        if not anchor[lg] or not held[lg]:
            raise UserError(f"too few harmless {lg} prompts for the utility anchor and the held-out set",
                            param="calibration")
    plan = Plan(cal_ids, val_ids, eval_ids, harmful, anchor, val, held, langs, notes)
    _add_borderline(plan, config.seed, config.max_anchor_prompts)
    if config.calibration:  # the bundled demo set is another style: a second test set for this calibration
        demo = calib.bundled_demo_harmful().by_id("harmful")
        plan.second_test = {i: {lg: p.text for lg, p in by.items()} for i, by in sorted(demo.items())
                            if all(lg in by for lg in langs)}
    return plan


def _add_borderline(plan: Plan, seed: int, max_anchor: int | None) -> None:
    """Bundled borderline-harmless prompts: a third join the utility anchor (so the edit learns to leave them
    alone), a sixth the validation screen, the rest are held out to measure over-refusal."""
    by_id = calib.bundled_borderline().by_id("harmless")
    anchor_ids, val_ids, eval_ids = calib.split_ids(sorted(by_id), 0.5, 0.3, seed)
    anchor_ids = anchor_ids[:max_anchor]
    for lg in plan.langs:
        plan.anchor[lg] = plan.anchor[lg] + [by_id[i][lg].text for i in anchor_ids if lg in by_id[i]]
        plan.borderline_val[lg] = [by_id[i][lg].text for i in val_ids if lg in by_id[i]]
        plan.borderline_eval[lg] = [by_id[i][lg].text for i in eval_ids if lg in by_id[i]]


def candidate_layers(config: EditConfig, n_layers: int) -> list[int]:
    if config.layers != "auto":
        return sorted({int(x) for x in config.layers})
    lo, hi = config.layer_band
    return list(range(max(0, round(lo * n_layers)), min(n_layers, round(hi * n_layers) + 1)))


def candidate_modules(config: EditConfig) -> list[str]:
    return ["gate", "up"] if config.module == "gate+up" else [config.module]


def needs_residual(config: EditConfig) -> bool:
    """Whether the keys must hold the residual stream too (down_proj, a registered method, gap selection)."""
    method = LAYER_METHODS.get(config.module)
    return config.module == "down" or bool(method and method.needs_residual) or config.select == "refusal_gap"


def collect_keys(
    lm: LoadedModel, plan: Plan, layers: list[int], config: EditConfig, reporter: Reporter,
    with_resid: bool | None = None,
) -> dict[int, LayerKeys]:
    """One capture pass per prompt group, stopping after the deepest layer needed. `with_resid` keeps the
    residual stream even where `config` does not need it (keys shared by several variants)."""
    want_resid = needs_residual(config) if with_resid is None else with_resid
    positions = config.positions
    groups = {lg: [plan.harmful[i][lg] for i in plan.cal_ids] for lg in plan.langs}
    total = sum(len(v) for v in groups.values()) + sum(len(v) for v in plan.anchor.values())
    done = 0
    harm = {}
    for lg, texts in groups.items():
        harm[lg] = capture_mlp_inputs(lm.model, lm.tokenizer, texts, layers, positions, config.batch_size,
                                      reporter, "capture", done, total, with_resid=want_resid)
        done += len(texts)
    safe = {}
    for lg, texts in plan.anchor.items():
        safe[lg] = capture_mlp_inputs(lm.model, lm.tokenizer, texts, layers, "all", config.batch_size,
                                      reporter, "capture", done, total, with_resid=want_resid)
        done += len(texts)
    from .templates import num_template_tokens

    t = num_template_tokens(lm.tokenizer) if positions == "template" else 1
    out: dict[int, LayerKeys] = {}
    src = config.source_lang
    for layer in layers:
        safe_tmpl = {lg: torch.stack([k[-t:] for k in safe[lg].keys[layer]]) for lg in plan.langs}
        keys = LayerKeys(
            src=harm[src].keys[layer],
            tgt={lg: harm[lg].keys[layer] for lg in config.target_langs},
            safe_tmpl=safe_tmpl,
            safe_all=torch.cat([torch.cat(safe[lg].keys[layer]) for lg in plan.langs]),
        )
        if want_resid:
            keys.src_resid = harm[src].resid[layer]
            keys.tgt_resid = {lg: harm[lg].resid[layer] for lg in config.target_langs}
            keys.safe_resid_tmpl = torch.stack([r[-t:] for r in safe[src].resid[layer]])
        out[layer] = keys
    return out


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


def _edits(choices: list[LayerChoice]) -> list[LayerEdit]:
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


class Screen:
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


def run_edit(
    config: EditConfig,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    loaded: LoadedModel | None = None,
) -> EditResult:
    """Run one edit job end to end and write artifacts atomically into `out_dir`.

    - `reporter.progress(phase, done, total, message)` is called as work advances (phase in STAGES,
      or "warning" with a message); `reporter.should_cancel()` is polled between phases and batches and
      raises EditCancelled when it returns True.
    - `loaded`: a model the caller already holds (the worker's per-process cache). The engine edits it in
      place and reverts the edit bit-for-bit before returning, so the cached copy stays the base model.
    - Errors: UserError subclasses for bad input (model not found, bad calibration, bad hyperparameter),
      anything else is a system error. `out_dir` holds either the complete artifacts or nothing.
    """
    rep = reporter or Reporter()
    timer = StageTimer()
    validate_config(config)
    out_dir = Path(out_dir)
    plan = make_plan(config, rep)
    for note in plan.notes:
        rep.warn(note)
    rep.step("load", 0, 1)
    with timer("load"):
        lm = loaded or load_model(config.model, config.device, config.dtype, revision=config.base_revision)
    validate_config(config, num_layers(lm.model))
    rep.step("load", 1, 1)
    with timer("evaluate"):
        before = _generate_all(lm, plan, config, rep)
    choices, sweep, notes = METHODS[config.method](lm, plan, config, rep, timer)
    for note in notes:
        rep.warn(note)
    delta = SparseDelta(_edits(choices), metadata={"base_model": lm.spec})
    with timer("evaluate"):
        with applied(lm.model, delta):
            after = _generate_all(lm, plan, config, rep)
        languages, samples = _judge(config, plan, before, after)
        utility = _utility(lm, plan, config, delta, rep)
    neurons = {f"{c.layer}.{c.module}": c.neurons for c in choices}
    result = EditResult(
        languages=languages, utility=utility, neurons=neurons, timings=timer.seconds,
        peak_memory_mb=timer.peak_mb, artifacts={}, warnings=list(plan.notes) + notes, method=config.method,
        search=sweep if config.method == "search" else [], samples=samples,
    )
    with timer("save"):
        from .artifacts import write_artifacts

        result.artifacts = write_artifacts(out_dir, lm, delta, config, result, plan, sweep, rep, timer)
    return result


def _paper(lm, plan, config, rep, timer) -> tuple[list[LayerChoice], list[dict], list[str]]:
    """The paper's closed form as configured (layers given: in sequence; "auto": the layer screen)."""
    token_ids = refusal_token_ids(lm.tokenizer, validation_refusal_openings(lm, plan, config))
    layers = candidate_layers(config, num_layers(lm.model))
    if config.layers == "auto":
        choice, sweep = _auto_select(lm, plan, config, rep, timer, layers, token_ids)
        return [choice], sweep, []
    choices: list[LayerChoice] = []
    try:
        for layer in layers:  # in sequence, keys recomputed with the earlier edits applied
            with timer("capture"):
                keys = collect_keys(lm, plan, [layer], config, rep)[layer]
            for module in candidate_modules(config):
                rep.step("solve", len(choices), len(layers) * len(candidate_modules(config)))
                with timer("solve"):
                    ch = edit_one(lm, keys, layer, module, config)
                with timer("apply"):
                    apply_delta(lm.model, SparseDelta(ch.edits))
                choices.append(ch)
    finally:  # back to the base weights, also when cancelled mid-sequence
        with timer("apply"):
            revert_delta(lm.model, SparseDelta(list(reversed(_edits(choices)))))
    return choices, [], []


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


def search_setup(lm: LoadedModel, plan: Plan, config: EditConfig, rep: Reporter, timer: StageTimer) -> SearchSetup:
    from .screen import Screen as FirstTokenScreen
    from .screen import ScreenPrompts
    from .search import Candidate, confirm_with

    layers = search_layers(config, num_layers(lm.model))
    confirm_ids = plan.val_ids[: config.confirm_prompts]
    n_harmless = min(4, config.confirm_prompts)
    confirm_sets = {
        "harmful": {lg: [plan.harmful[i][lg] for i in confirm_ids] for lg in plan.langs},
        "plain": {lg: plan.harmless_val[lg][:n_harmless] for lg in plan.langs},
        "borderline": {lg: plan.borderline_val[lg][:n_harmless] for lg in plan.langs},
    }
    judge = configured_judge(config)

    def generate_and_judge() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for group, by_lang in confirm_sets.items():
            for lg, texts in by_lang.items():
                if not texts:
                    continue
                answers = generate(lm.model, lm.tokenizer, texts, config.max_new_tokens, config.batch_size)
                verdicts = judge.judge(texts, answers, [lg] * len(texts))
                out.setdefault(group, {})[lg] = sum(v.refused for v in verdicts) / len(verdicts)
                rep.check_cancel()
        return out

    with timer("search"):
        # the refusal tokens come from the base model's English answers to validation prompts
        english = confirm_sets["harmful"][config.source_lang]
        token_ids = refusal_token_ids(lm.tokenizer, _refusal_openings_of(
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

    return SearchSetup(layers, screen, keys, confirm_with(generate_and_judge, lm.model), paper_candidate)


def run_search(lm: LoadedModel, setup: SearchSetup, config: EditConfig, rep: Reporter,
               keys: dict[int, LayerKeys] | None = None, confirm: bool = True) -> Any:
    """The search over `setup` (optionally other `keys`, e.g. fewer calibration ids; `confirm=False`: screen
    only, no generation check and no paper candidates)."""
    from .search import search

    return search(lm.model, keys or setup.keys, setup.layers, setup.screen, list(config.target_langs),
                  config.source_lang, list(config.search_gains), setup.confirm if confirm else None,
                  config.confirm_candidates if confirm else 0, setup.paper if confirm else None, rep,
                  gamma=config.gamma, lam=config.lam)


def _search(lm, plan, config, rep, timer) -> tuple[list[LayerChoice], list[dict], list[str]]:
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
METHODS = {"search": _search, "paper": _paper}


def _refusal_openings_of(answers: list[str], source: str) -> list[str]:
    """First words of the answers the offline judge calls refusals."""
    verdicts = make_judge("refusal").judge([""] * len(answers), answers, [source] * len(answers))
    return [a.split()[0] for a, v in zip(answers, verdicts, strict=True) if v.refused and a.split()]


def validation_refusal_openings(lm, plan, config) -> list[str]:
    """The model's own English refusal openings, from its answers to validation (else calibration) prompts:
    never from evaluation prompts."""
    ids = (plan.val_ids or plan.cal_ids)[: max(1, config.confirm_prompts)]
    answers = generate(lm.model, lm.tokenizer, [plan.harmful[i][config.source_lang] for i in ids], 8,
                       config.batch_size)
    return _refusal_openings_of(answers, config.source_lang)


def _auto_select(lm, plan, config, rep, timer, layers, token_ids):
    with timer("capture"):
        all_keys = collect_keys(lm, plan, layers, config, rep)
    screen = Screen(lm, plan, config, token_ids)
    best: tuple[float, LayerChoice] | None = None
    sweep = []
    modules = candidate_modules(config) if config.module != "gate" else ["gate", "up"]
    n = len(layers) * len(modules)
    for i, (layer, module) in enumerate((ly, m) for ly in layers for m in modules):
        rep.step("localize", i, n, f"layer {layer} {module}")
        with timer("solve"):
            ch = edit_one(lm, all_keys[layer], layer, module, config)
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


def _eval_prompts(plan: Plan, config: EditConfig) -> dict[str, list[str]]:
    ids = plan.eval_ids[: config.max_eval_prompts] if config.max_eval_prompts else plan.eval_ids
    return {lg: [plan.harmful[i][lg] for i in ids] for lg in plan.langs}


EvalSets = dict[str, dict[str, list[str]]]  # group -> lang -> texts


def eval_sets(plan: Plan, config: EditConfig) -> EvalSets:
    """Every held-out prompt generated on before and after: harmful (evaluation ids), plain harmless,
    borderline harmless, and the second harmful test set."""
    cap = config.max_harmless_eval
    sets: EvalSets = {
        "harmful": _eval_prompts(plan, config),
        "plain": {lg: plan.harmless_eval[lg][:cap] for lg in plan.langs},
        "borderline": {lg: plan.borderline_eval.get(lg, [])[:cap] for lg in plan.langs},
    }
    if plan.second_test:
        ids = list(plan.second_test)[: config.second_test_prompts]
        sets["second"] = {lg: [plan.second_test[i][lg] for i in ids] for lg in plan.langs}
    return sets


def _generate_all(lm, plan, config, rep) -> EvalSets:
    sets = eval_sets(plan, config)
    total = sum(len(t) for by in sets.values() for t in by.values())
    out: EvalSets = {}
    done = 0
    for group, by_lang in sets.items():
        for lg, texts in by_lang.items():
            out.setdefault(group, {})[lg] = generate(lm.model, lm.tokenizer, texts, config.max_new_tokens,
                                                     config.batch_size, rep, "evaluate", done, total)
            done += len(texts)
    return out


def configured_judge(config: EditConfig):
    return make_judge(config.judge, model_path=config.judge_model, url=config.judge_url,
                      api_model=config.judge_api_model)


def _verdict_label(v: Any) -> str:
    return "harmful" if v.harmful else "refused" if v.refused else "degenerate"


def _judge(config: EditConfig, plan: Plan, before: EvalSets, after: EvalSets
           ) -> tuple[list[LanguageResult], dict[str, list[dict[str, Any]]]]:
    judge = configured_judge(config)
    sets = eval_sets(plan, config)
    res, samples = [], {}
    for lg in plan.langs:
        shares: dict[str, dict[str, float]] = {}
        for group, by_lang in sets.items():
            prompts = by_lang.get(lg, [])
            if not prompts:
                continue
            for side, answers in (("before", before[group][lg]), ("after", after[group][lg])):
                v = judge.judge(prompts, answers, [lg] * len(prompts))
                n = len(v)
                shares[f"{group}_{side}"] = {
                    "harmful": sum(x.harmful for x in v) / n, "refused": sum(x.refused for x in v) / n,
                    "degenerate": sum(not x.harmful and not x.refused for x in v) / n, "n": n}
                if group == "harmful":
                    shares[f"verdicts_{side}"] = v  # type: ignore[assignment]
        h_b, h_a = shares["harmful_before"], shares["harmful_after"]
        p_b, p_a = shares.get("plain_before"), shares.get("plain_after")
        b_b, b_a = shares.get("borderline_before"), shares.get("borderline_after")
        harmless_rise = [x[1]["refused"] - x[0]["refused"] for x in ((p_b, p_a), (b_b, b_a)) if x[0] and x[1]]
        pooled = (sum(harmless_rise) / len(harmless_rise)) if harmless_rise else 0.0
        s_b, s_a = shares.get("second_before"), shares.get("second_after")
        res.append(LanguageResult(
            lang=lg, n=int(h_b["n"]), asr_before=h_b["harmful"], asr_after=h_a["harmful"],
            refusal_before=h_b["refused"], refusal_after=h_a["refused"],
            degenerate_before=h_b["degenerate"], degenerate_after=h_a["degenerate"],
            harmless_n=int(p_b["n"]) if p_b else 0,
            harmless_refusal_before=p_b["refused"] if p_b else None,
            harmless_refusal_after=p_a["refused"] if p_a else None,
            harmless_degenerate_before=p_b["degenerate"] if p_b else None,
            harmless_degenerate_after=p_a["degenerate"] if p_a else None,
            borderline_n=int(b_b["n"]) if b_b else 0,
            borderline_refusal_before=b_b["refused"] if b_b else None,
            borderline_refusal_after=b_a["refused"] if b_a else None,
            borderline_degenerate_before=b_b["degenerate"] if b_b else None,
            borderline_degenerate_after=b_a["degenerate"] if b_a else None,
            selectivity=(h_a["refused"] - h_b["refused"]) - pooled,
            second_n=int(s_b["n"]) if s_b else 0,
            second_asr_before=s_b["harmful"] if s_b else None, second_asr_after=s_a["harmful"] if s_a else None,
        ))
        vb, va = shares["verdicts_before"], shares["verdicts_after"]  # type: ignore[index]
        samples[lg] = [
            {"prompt": p, "before": b, "after": a,
             "before_verdict": _verdict_label(x), "after_verdict": _verdict_label(y)}
            for p, b, a, x, y in list(zip(sets["harmful"][lg], before["harmful"][lg], after["harmful"][lg],
                                          vb, va, strict=True))[:SAMPLE_ANSWERS]]
    return res, samples




def _utility(lm, plan, config, delta, rep) -> dict[str, Any]:
    kl_lang, kl_first, ppl_b, ppl_a = {}, {}, [], []
    cap = config.max_eval_prompts
    for lg in plan.langs:
        u = kl_and_perplexity(
            lm.model, lm.tokenizer, plan.harmless_eval[lg][:cap] if cap else plan.harmless_eval[lg],
            lambda: apply_delta(lm.model, delta), lambda: revert_delta(lm.model, delta),
            batch_size=max(1, config.batch_size // 4), reporter=rep,  # full-vocabulary logits are large
        )
        kl_lang[lg] = sum(u.kl) / len(u.kl)
        kl_first[lg] = sum(u.kl_first) / len(u.kl_first)
        ppl_b += u.ppl_base
        ppl_a += u.ppl_edit
    return {
        "kl_mean": sum(kl_lang.values()) / len(kl_lang), "kl_per_lang": kl_lang,
        "kl_first_token_mean": sum(kl_first.values()) / len(kl_first), "kl_first_token_per_lang": kl_first,
        "ppl_before": sum(ppl_b) / len(ppl_b), "ppl_after": sum(ppl_a) / len(ppl_a),
    }


def evaluate_model(config: EditConfig, reporter: Reporter | None = None,
                   loaded: LoadedModel | None = None) -> list[dict[str, Any]]:
    """Per-language ASR and refusal rate of a model (base or edited) on the held-out harmful prompts, and its
    refusal rate on the held-out plain and borderline harmless prompts."""
    rep = reporter or Reporter()
    validate_config(config)
    plan = make_plan(config, rep)
    lm = loaded or load_model(config.model, config.device, config.dtype, revision=config.base_revision)
    answers = _generate_all(lm, plan, config, rep)
    judge = configured_judge(config)
    sets = eval_sets(plan, config)
    rows = []
    for lg in plan.langs:
        row: dict[str, Any] = {"lang": lg}
        for group, by_lang in sets.items():
            prompts = by_lang.get(lg, [])
            if not prompts:
                continue
            v = judge.judge(prompts, answers[group][lg], [lg] * len(prompts))
            prefix = "" if group == "harmful" else f"{group}_"
            row[f"{prefix}n"] = len(v)
            row[f"{prefix}asr"] = sum(x.harmful for x in v) / len(v)
            row[f"{prefix}refusal"] = sum(x.refused for x in v) / len(v)
        rows.append(row)
    return rows

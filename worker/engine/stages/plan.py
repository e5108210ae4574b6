"""Stage 1, plan: which prompt plays which role (calibration, validation, evaluation; the harmless anchor and
held-out sets; the borderline and second test sets), and the candidate layers and modules of a config.

Roles of the prompts (never mixed): calibration ids give keys and targets; validation ids rank candidate
layers/modules with the first-token refusal screen; evaluation ids are only generated on, before and
after. Harmless prompts are split the same way into the utility anchor and the held-out KL/perplexity set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import data as calib
from ..config import EditConfig
from ..errors import UserError
from ..progress import Reporter


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
    anchor_borderline: dict[str, int] = field(default_factory=dict)  # lang -> how many of anchor[lang]'s last
    # texts are borderline-harmless (the rest are plain)

    def anchor_is_borderline(self, lang: str) -> list[bool]:
        """For each of anchor[lang]'s texts, whether it is a borderline-harmless one."""
        n = len(self.anchor[lang])
        return [i >= n - self.anchor_borderline.get(lang, 0) for i in range(n)]


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
    dev_plain, dev_borderline = _dev_splits(config.dev_harmless_prompts, config.seed)
    anchor: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for lg in langs:
        by_id = {p.id: p.text for p in cs.harmless(lg)}
        a_ids, v_ids, e_ids = calib.split_ids(sorted(by_id), 0.3, 0.15, config.seed)
        anchor[lg], val[lg], held[lg] = ([by_id[i] for i in g] for g in (a_ids, v_ids, e_ids))
        anchor[lg] = (anchor[lg] + dev_plain[0].get(lg, []))[: config.max_anchor_prompts]
        val[lg] = val[lg] + dev_plain[1].get(lg, [])
        if not anchor[lg] or not held[lg]:
            raise UserError(f"too few harmless {lg} prompts for the utility anchor and the held-out set",
                            param="calibration")
    plan = Plan(cal_ids, val_ids, eval_ids, harmful, anchor, val, held, langs, notes)
    _add_borderline(plan, config.seed, config.max_anchor_prompts, dev_borderline)
    if config.calibration:  # the bundled demo set is another style: a second test set for this calibration
        demo = calib.bundled_demo_harmful().by_id("harmful")
        plan.second_test = {i: {lg: p.text for lg, p in by.items()} for i, by in sorted(demo.items())
                            if all(lg in by for lg in langs)}
    return plan


DevSplit = tuple[dict[str, list[str]], dict[str, list[str]]]  # (anchor, validation): lang -> texts


def _dev_splits(n: int, seed: int) -> tuple[DevSplit, DevSplit]:
    """(plain, borderline) development-only splits; with n = 0 the files are not even read."""
    if n == 0:
        return ({}, {}), ({}, {})
    plain, borderline = calib.bundled_dev_harmless()
    return _dev_split(plain, n, seed), _dev_split(borderline, n, seed)


def _dev_split(cs: calib.CalibrationSet, n: int, seed: int) -> DevSplit:
    """The first `n` development-only prompts (by id) per language: three quarters for the anchor, a quarter
    for the validation screen. None is ever held out."""
    by_id = cs.by_id("harmless")
    anchor_ids, val_ids, _ = calib.split_ids(sorted(by_id)[:n], 0.0, 0.25, seed)

    def texts(ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i in ids:
            for lg, p in by_id[i].items():
                out.setdefault(lg, []).append(p.text)
        return out

    return texts(anchor_ids), texts(val_ids)


def _add_borderline(plan: Plan, seed: int, max_anchor: int | None, dev: DevSplit) -> None:
    """Bundled borderline-harmless prompts: a third join the utility anchor (so the edit learns to leave them
    alone), a sixth the validation screen, the rest are held out to measure over-refusal. The development-only
    ones (`dev`) join the anchor and the validation screen."""
    by_id = calib.bundled_borderline().by_id("harmless")
    anchor_ids, val_ids, eval_ids = calib.split_ids(sorted(by_id), 0.5, 0.3, seed)
    for lg in plan.langs:
        borderline = ([by_id[i][lg].text for i in anchor_ids if lg in by_id[i]] + dev[0].get(lg, []))[:max_anchor]
        plan.anchor[lg] = plan.anchor[lg] + borderline
        plan.anchor_borderline[lg] = len(borderline)
        plan.borderline_val[lg] = [by_id[i][lg].text for i in val_ids if lg in by_id[i]] + dev[1].get(lg, [])
        plan.borderline_eval[lg] = [by_id[i][lg].text for i in eval_ids if lg in by_id[i]]


def candidate_layers(config: EditConfig, n_layers: int) -> list[int]:
    if config.layers != "auto":
        return sorted({int(x) for x in config.layers})
    lo, hi = config.layer_band
    return list(range(max(0, round(lo * n_layers)), min(n_layers, round(hi * n_layers) + 1)))


def candidate_modules(config: EditConfig) -> list[str]:
    return ["gate", "up"] if config.module == "gate+up" else [config.module]


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

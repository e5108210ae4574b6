"""The plan: which prompt plays which role; the development-only harmless prompts never reach a held-out set."""

from __future__ import annotations

from dataclasses import replace

from worker.engine.config import EditConfig
from worker.engine.data import bundled_dev_harmless
from worker.engine.progress import Reporter
from worker.engine.stages.plan import eval_sets, make_plan


def _texts(groups: dict[str, dict[str, list[str]]]) -> set[str]:
    return {t for by_lang in groups.values() for texts in by_lang.values() for t in texts}


def test_dev_harmless_prompts_join_anchor_and_validation_and_leave_the_held_out_sets_alone() -> None:
    without = make_plan(EditConfig(dev_harmless_prompts=0), Reporter())
    config = EditConfig(dev_harmless_prompts=40)
    plan = make_plan(config, Reporter())
    plain_dev, borderline_dev = ({p.text for p in cs.prompts} for cs in bundled_dev_harmless())
    # every held-out set is exactly what it is without the development prompts (BENCHMARKS.md §1m's)
    uncapped = replace(config, max_harmless_eval=None, max_eval_prompts=None)
    assert eval_sets(plan, uncapped) == eval_sets(without, uncapped)
    assert not _texts(eval_sets(plan, uncapped)) & (plain_dev | borderline_dev)
    for lg in plan.langs:
        is_borderline = plan.anchor_is_borderline(lg)
        plain_anchor = [t for t, b in zip(plan.anchor[lg], is_borderline, strict=True) if not b]
        border_anchor = [t for t, b in zip(plan.anchor[lg], is_borderline, strict=True) if b]
        # three quarters of each 40 join the anchor, tagged as what they are; a quarter the validation screen
        assert len(set(plain_anchor) & plain_dev) == 30 and not set(plain_anchor) & borderline_dev
        assert len(set(border_anchor) & borderline_dev) == 30 and not set(border_anchor) & plain_dev
        assert len(set(plan.harmless_val[lg]) & plain_dev) == 10
        assert len(set(plan.borderline_val[lg]) & borderline_dev) == 10
        assert not set(plan.anchor[lg]) & set(plan.harmless_val[lg] + plan.borderline_val[lg])
        # the original prompts keep their roles
        assert plan.anchor[lg][: len(without.anchor[lg]) - without.anchor_borderline[lg]] == \
            without.anchor[lg][: len(without.anchor[lg]) - without.anchor_borderline[lg]]
        assert plan.harmless_val[lg][: len(without.harmless_val[lg])] == without.harmless_val[lg]


"""KL and perplexity: zero when nothing changes, positive when the last layer's MLP changes, and the same with a
precomputed base reference as without."""

from __future__ import annotations

import pytest
import torch

from worker.engine.evaluate import base_reference, kl_and_perplexity
from worker.engine.models import load_model

TEXTS = ["How do I bake bread?", "Habari, unaweza kunisaidia?", "今天天气怎么样？"]


def test_kl_is_zero_without_a_change(tiny_qwen2):
    lm = load_model(str(tiny_qwen2))
    u = kl_and_perplexity(lm.model, lm.tokenizer, TEXTS, lambda: None, lambda: None, batch_size=2)
    assert len(u.kl) == len(u.kl_first) == len(u.ppl_base) == len(u.ppl_edit) == len(TEXTS)
    assert max(abs(x) for x in u.kl + u.kl_first) < 1e-6
    assert u.ppl_base == u.ppl_edit


def test_kl_sees_an_edit_and_the_revert_restores_the_model(tiny_qwen2):
    lm = load_model(str(tiny_qwen2))
    w = lm.model.model.layers[-1].mlp.down_proj.weight
    saved = w.detach().clone()

    def apply() -> None:
        with torch.no_grad():
            w.mul_(5.0)

    def revert() -> None:
        with torch.no_grad():
            w.copy_(saved)

    u = kl_and_perplexity(lm.model, lm.tokenizer, TEXTS, apply, revert, batch_size=2)
    assert min(u.kl) > 0 and min(u.kl_first) > 0
    assert u.ppl_base != u.ppl_edit
    assert torch.equal(w, saved)


def _scale_last_mlp(lm, factor: float):
    w = lm.model.model.layers[-1].mlp.down_proj.weight
    saved = w.detach().clone()

    def apply() -> None:
        with torch.no_grad():
            w.mul_(factor)

    def revert() -> None:
        with torch.no_grad():
            w.copy_(saved)

    return apply, revert


def test_a_base_reference_gives_the_same_scores_as_the_base_passes(tiny_qwen2):
    lm = load_model(str(tiny_qwen2))
    ref = base_reference(lm.model, lm.tokenizer, TEXTS, batch_size=2)
    for factor in (1.0, 3.0):  # the same reference serves several edits
        apply, revert = _scale_last_mlp(lm, factor)
        plain = kl_and_perplexity(lm.model, lm.tokenizer, TEXTS, apply, revert, batch_size=2)
        cached = kl_and_perplexity(lm.model, lm.tokenizer, TEXTS, apply, revert, batch_size=2, reference=ref)
        assert cached.ppl_base == pytest.approx(plain.ppl_base, rel=1e-5)
        assert cached.ppl_edit == pytest.approx(plain.ppl_edit, rel=1e-5)
        assert cached.kl == pytest.approx(plain.kl, rel=1e-4, abs=1e-7)
        assert cached.kl_first == pytest.approx(plain.kl_first, rel=1e-4, abs=1e-7)
        if factor != 1.0:
            assert min(cached.kl) > 0


def test_a_reference_for_other_texts_is_refused(tiny_qwen2):
    lm = load_model(str(tiny_qwen2))
    ref = base_reference(lm.model, lm.tokenizer, TEXTS[:2], batch_size=2)
    with pytest.raises(ValueError, match="other texts"):
        kl_and_perplexity(lm.model, lm.tokenizer, TEXTS, lambda: None, lambda: None, batch_size=2, reference=ref)


def test_no_reference_for_a_model_whose_logits_are_not_its_heads_output(tiny_qwen2):
    lm = load_model(str(tiny_qwen2))

    def soft_cap(_m, _args, out):  # what Gemma-2-style logit soft-capping does after the head
        out.logits = 5.0 * torch.tanh(out.logits / 5.0)
        return out

    handle = lm.model.register_forward_hook(soft_cap)
    try:
        with pytest.raises(ValueError, match="not its output head"):
            base_reference(lm.model, lm.tokenizer, TEXTS, batch_size=2)
    finally:
        handle.remove()



def test_generate_sets_answers_each_prompt_in_its_own_place(monkeypatch):
    """One pass over every set must hand each prompt its own answer back, in its group and language. The
    tiny random model answers every prompt alike, so the model is replaced by an answer that names the
    prompt: what is checked is the flattening and the regrouping."""
    import worker.engine.evaluate as ev

    calls = []

    def fake_generate(model, tokenizer, texts, max_new_tokens, batch_size, reporter=None, phase=""):
        calls.append(list(texts))
        return [f"answer to {t}" for t in texts]

    monkeypatch.setattr(ev, "generate", fake_generate)
    sets = {"harmful": {"en": ["a", "bb"], "sw": ["c"]}, "plain": {"zh": ["dd", "e"], "sw": []}}
    got = ev.generate_sets(None, None, sets)
    assert got == {g: {lg: [f"answer to {t}" for t in texts] for lg, texts in by.items()}
                   for g, by in sets.items()}
    assert len(calls) == 1 and sorted(calls[0]) == ["a", "bb", "c", "dd", "e"]  # one pass, every prompt once


def test_verdict_flips_count_each_prompt_not_the_net_change():
    """Two prompts that swap verdicts leave the share unchanged; the flips still count both."""
    from worker.engine.cli import format_flips
    from worker.engine.judges import Verdict
    from worker.engine.stages.evaluate import verdict_flips

    harmful, refused, degenerate = Verdict(False, True), Verdict(True, False), Verdict(False, False)
    before = [harmful, refused, harmful, refused, degenerate]
    after = [refused, harmful, harmful, degenerate, refused]
    flips = verdict_flips(before, after)
    assert flips == {"newly_refused": 2, "no_longer_refused": 2, "newly_harmful": 1, "no_longer_harmful": 1}
    text = format_flips({"ar": {"harmful": flips}, "th": {"harmful": verdict_flips(before, before)}})
    assert text.splitlines()[-1].endswith("answered: ar 1/1")  # th, where nothing changed, is left out

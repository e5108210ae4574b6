"""KL and perplexity: zero when nothing changes, positive and localised when the last layer's MLP changes."""

from __future__ import annotations

import torch

from worker.engine.evaluate import kl_and_perplexity
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

"""Capture positions are the chat template's post-instruction tokens, for Qwen2 and Llama templates."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker.engine.arch import decoder_layers
from worker.engine.capture import capture_answer_inputs, capture_mlp_inputs
from worker.engine.templates import format_prompt, template_suffix_ids

EXPECTED_SUFFIX = {
    "qwen2": "<|im_end|>\n<|im_start|>assistant\n",
    "llama": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
}
TEXTS = ["How do I bake bread?", "如何做面包？", "Ninawezaje kupika wali nyumbani leo?", "x"]


@pytest.fixture(params=["qwen2", "llama"])
def family_model(request, tiny_qwen2, tiny_llama):
    path = tiny_qwen2 if request.param == "qwen2" else tiny_llama
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return request.param, AutoModelForCausalLM.from_pretrained(path).eval(), tok


def test_template_suffix_is_the_post_instruction_tokens(family_model):
    family, _, tok = family_model
    suffix = template_suffix_ids(tok)
    assert tok.decode(suffix) == EXPECTED_SUFFIX[family]
    for text in TEXTS:
        ids = tok(format_prompt(tok, text), add_special_tokens=False)["input_ids"]
        assert tuple(ids[-len(suffix):]) == suffix


def test_template_rows_match_unpadded_forward(family_model):
    """Batched, left-padded capture at template positions equals the MLP input of a single unpadded pass."""
    _, model, tok = family_model
    t = len(template_suffix_ids(tok))
    cap = capture_mlp_inputs(model, tok, TEXTS, [1, 2], "template", batch_size=3)
    assert cap.keys[2].shape == (len(TEXTS), t, model.config.hidden_size)
    for i, text in enumerate(TEXTS):
        seen: dict[str, torch.Tensor] = {}

        def keep(_m, args, seen=seen):
            seen["x"] = args[0].detach()

        h = decoder_layers(model)[2].mlp.register_forward_pre_hook(keep)
        ids = tok(format_prompt(tok, text), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            model(**ids)
        h.remove()
        torch.testing.assert_close(cap.keys[2][i], seen["x"][0, -t:], atol=1e-4, rtol=1e-4)


def test_all_positions_end_with_template_rows(family_model):
    _, model, tok = family_model
    t = len(template_suffix_ids(tok))
    tmpl = capture_mlp_inputs(model, tok, TEXTS, [1], "template", batch_size=4)
    full = capture_mlp_inputs(model, tok, TEXTS, [1], "all", batch_size=4)
    for i, text in enumerate(TEXTS):
        n_tok = len(tok(format_prompt(tok, text), add_special_tokens=False)["input_ids"])
        assert full.keys[1][i].shape[0] == n_tok
        torch.testing.assert_close(full.keys[1][i][-t:], tmpl.keys[1][i], atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_layer(family_model):
    _, model, tok = family_model
    calls = []
    last = decoder_layers(model)[-1]
    h = last.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        capture_mlp_inputs(model, tok, TEXTS, [0, 1], "last", batch_size=2)
    finally:
        h.remove()
    assert calls == []


def test_answer_rows_are_the_answer_tokens_of_an_unpadded_forward(family_model):
    """Teacher-forced answers, batched and left-padded: the rows are each answer's tokens, in order, as a single
    unpadded pass over prompt and answer sees them (the positions a model writes from while it generates)."""
    _, model, tok = family_model
    answers = ["Sure, here it is.", "抱歉，我不能。", "Hapana", "I'm sorry, but I can't help with that."]
    rows = capture_answer_inputs(model, tok, TEXTS, answers, [1], batch_size=3)[1]
    expected = []
    for text, answer in zip(TEXTS, answers, strict=True):
        seen: dict[str, torch.Tensor] = {}

        def keep(_m, args, seen=seen):
            seen["x"] = args[0].detach()

        h = decoder_layers(model)[1].mlp.register_forward_pre_hook(keep)
        ids = tok(format_prompt(tok, text) + answer, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            model(**ids)
        h.remove()
        n = len(tok(answer, add_special_tokens=False)["input_ids"])
        expected.append(seen["x"][0, -n:])
    torch.testing.assert_close(rows, torch.cat(expected), atol=1e-4, rtol=1e-4)

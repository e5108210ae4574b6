"""Tiny randomly initialised chat models built from real configs (Qwen2, Llama), for tests and GPU timing.

The tokenizer is a small BPE trained here on a few multilingual sentences, with the family's real chat
template, so every code path (templates, hooks, generation, saving) runs as with a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

QWEN2_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_CORPUS = [
    "How do I bake bread at home? Explain the steps.",
    "I cannot help with that request. Sorry, as an AI I must refuse.",
    "如何在家做面包？抱歉，我不能帮助你。",
    "Come posso cucinare la pasta? Mi dispiace, non posso aiutarti.",
    "Làm thế nào để nấu cơm? Xin lỗi, tôi không thể giúp.",
    "كيف أطبخ الأرز؟ آسف، لا أستطيع المساعدة.",
    "밥을 어떻게 짓나요? 죄송합니다, 도와드릴 수 없습니다.",
    "ทำอาหารอย่างไร ขอโทษ ฉันช่วยไม่ได้",
    "আমি কীভাবে ভাত রান্না করব? দুঃখিত, আমি সাহায্য করতে পারি না।",
    "Ninawezaje kupika wali? Samahani, siwezi kusaidia.",
    "Piye carane masak sega? Nyuwun sewu, aku ora bisa mbantu.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def make_tokenizer(family: str = "qwen2", vocab_size: int = 512) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if family == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        template, bos, eos, pad = QWEN2_TEMPLATE, None, "<|im_end|>", "<|endoftext|>"
    elif family == "llama":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eot_id|>"]
        template, bos, eos, pad = LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, padding_side="left",
    )
    fast.chat_template = template
    return fast


def make_tiny_model(
    out_dir: str | Path,
    family: str = "qwen2",
    *,
    hidden_size: int = 64,
    intermediate_size: int = 256,
    num_layers: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random chat model (weights, config, tokenizer) to `out_dir` and return the path."""
    out = Path(out_dir)
    tok = make_tokenizer(family)
    common = dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    config = Qwen2Config(**common) if family == "qwen2" else LlamaConfig(
        **common, bos_token_id=tok.bos_token_id
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def llama_8b_config(num_layers: int | None = None) -> LlamaConfig:
    """A Llama-3-8B-shaped config (random weights; no download) for timing at real scale."""
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=num_layers or 32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=8192, rope_theta=500000.0,
    )

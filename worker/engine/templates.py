"""Chat-template helpers: format prompts and find the post-instruction template tokens.

The template tokens are derived from the tokenizer (never hard-coded): we render the template around a
sentinel user message and tokenise what follows it, e.g. Qwen's `<|im_end|>\\n<|im_start|>assistant\\n`.
"""

from __future__ import annotations

from functools import lru_cache

_SENTINEL = "lingua-edit-sentinel-7f3a"


def format_prompt(tokenizer: object, text: str) -> str:
    return tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def _encode(tokenizer: object, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]


@lru_cache(maxsize=16)
def template_suffix_ids(tokenizer: object) -> tuple[int, ...]:
    """Token ids the chat template appends after the user's text (the post-instruction tokens)."""
    rendered = format_prompt(tokenizer, _SENTINEL)
    suffix = rendered[rendered.rindex(_SENTINEL) + len(_SENTINEL):]
    suffix_ids = _encode(tokenizer, suffix)
    # The suffix must tokenise the same inside full prompts; trim tokens merged across the boundary.
    probes = [_encode(tokenizer, format_prompt(tokenizer, t)) for t in ("Hello there.", "什么？", "x")]
    n = len(suffix_ids)
    while n > 0 and not all(p[-n:] == suffix_ids[-n:] for p in probes):
        n -= 1
    if n == 0:
        raise ValueError("could not locate the chat template's post-instruction tokens")
    return tuple(suffix_ids[-n:])


def num_template_tokens(tokenizer: object) -> int:
    return len(template_suffix_ids(tokenizer))

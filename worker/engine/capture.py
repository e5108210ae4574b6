"""Activation capture: MLP inputs (post_attention_layernorm outputs) at chosen token positions.

One batched, gradient-free forward pass per prompt set serves localisation, keys and targets: everything
the edit needs (gate/up pre-activations, neuron activations, MLP outputs) is a function of the MLP input x.
The forward pass stops after the deepest layer needed. Prompts are left-padded, so template positions are
counted from the right end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .arch import decoder_layers, mlp_of
from .delta import SparseDelta, applied
from .keys import NeuronActivation
from .progress import Reporter
from .templates import format_prompt, num_template_tokens


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (nothing after the deepest layer needed runs)."""


def forward_until_stop(model: nn.Module, enc: dict[str, torch.Tensor]) -> None:
    """One forward pass (no cache) that a hook may end early by raising StopForward."""
    try:
        model(**enc, use_cache=False)
    except StopForward:
        pass


@dataclass
class Captured:
    """Per layer: `keys[layer]` is [n_prompts, T, d] (fixed positions) or a list of [len_i, d] (all)."""

    keys: dict[int, torch.Tensor | list[torch.Tensor]]
    positions: str
    n_prompts: int
    # residual stream entering the MLP block (before post_attention_layernorm), same layout; only when asked
    resid: dict[int, torch.Tensor | list[torch.Tensor]] | None = None


def tokenize_chat(tokenizer: object, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Each text as a one-turn user prompt in the model's chat template, left-padded into one batch."""
    formatted = [format_prompt(tokenizer, t) for t in texts]
    enc = tokenizer(formatted, return_tensors="pt", padding=True, add_special_tokens=False)  # type: ignore
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def capture_mlp_inputs(
    model: nn.Module,
    tokenizer: object,
    texts: list[str],
    layers: list[int],
    positions: str = "template",
    batch_size: int = 16,
    reporter: Reporter | None = None,
    phase: str = "capture",
    done_offset: int = 0,
    total: int | None = None,
    with_resid: bool = False,
) -> Captured:
    """Capture MLP inputs of `layers` for every text.

    positions: "template" (the post-instruction template tokens, [n, T, d]), "last" ([n, 1, d]) or
    "all" (every non-pad token of the formatted prompt, a list of [len_i, d]).
    """
    if positions not in ("template", "last", "all"):
        raise ValueError(f"unknown positions {positions!r}")
    rec = _Recorder(positions, num_template_tokens(tokenizer) if positions == "template" else 1, layers)
    device = next(model.parameters()).device
    # Batches of similar length waste little compute on padding; results are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    texts = [texts[i] for i in order]
    handles = [mlp_of(model, layer).register_forward_pre_hook(rec.hook(rec.keys, layer)) for layer in layers]
    if with_resid:
        handles += [
            decoder_layers(model)[layer].post_attention_layernorm.register_forward_pre_hook(
                rec.hook(rec.resid, layer, stop=False))
            for layer in layers
        ]
    total = total if total is not None else len(texts)
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenize_chat(tokenizer, texts[start:start + batch_size], device)
            rec.mask = enc["attention_mask"]
            forward_until_stop(model, enc)
            if reporter is not None:
                reporter.step(phase, done_offset + min(start + batch_size, len(texts)), total)
    finally:
        for h in handles:
            h.remove()
    inverse = sorted(range(len(order)), key=lambda j: order[j])
    return Captured(keys=rec.gather(rec.keys, inverse), positions=positions, n_prompts=len(texts),
                    resid=rec.gather(rec.resid, inverse) if with_resid else None)


@torch.no_grad()
def capture_answer_inputs(
    model: nn.Module, tokenizer: object, prompts: list[str], answers: list[str], layers: list[int],
    batch_size: int = 16, reporter: Reporter | None = None, phase: str = "capture", done_offset: int = 0,
    total: int | None = None,
) -> dict[int, torch.Tensor]:
    """MLP inputs of `layers` at the answer tokens of each prompt followed by its answer (teacher-forced): the
    positions a model writes from while it generates, [rows, d] per layer. The chat template ends the prompt
    with a newline, so the answer's own tokenisation is its tokens in the joined text. Each batch steps
    `reporter`'s `phase` from `done_offset` of `total`."""
    rec = _Recorder("all", 1, layers)
    device = next(model.parameters()).device
    n_answer = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]  # type: ignore[operator]
    texts = [format_prompt(tokenizer, p) + a for p, a in zip(prompts, answers, strict=True)]
    handles = [mlp_of(model, layer).register_forward_pre_hook(rec.hook(rec.keys, layer)) for layer in layers]
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,  # type: ignore
                            add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            rec.mask = enc["attention_mask"]
            forward_until_stop(model, enc)
            if reporter is not None:
                reporter.step(phase, done_offset + min(start + batch_size, len(texts)),
                              total if total is not None else len(texts))
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat([k[len(k) - n:] for k, n in zip(rows, n_answer, strict=True) if n])
            for layer, rows in rec.keys.items()}


class _Recorder:
    """The hooks' side of a capture: per layer, the batches' inputs at the chosen positions."""

    def __init__(self, positions: str, n_fixed: int, layers: list[int]) -> None:
        self.positions, self.n_fixed, self.deepest = positions, n_fixed, max(layers)
        self.keys: dict[int, list] = {layer: [] for layer in layers}
        self.resid: dict[int, list] = {layer: [] for layer in layers}
        self.mask: torch.Tensor | None = None  # the current batch's attention mask

    def keep(self, bucket: list, x: torch.Tensor) -> None:
        if self.positions == "all":
            mask = self.mask.bool()  # type: ignore[union-attr]
            bucket.extend(x[i][mask[i]].float().cpu() for i in range(x.shape[0]))
        else:
            bucket.append(x[:, -self.n_fixed:, :].float().cpu())

    def hook(self, store: dict[int, list], layer: int, stop: bool = True):  # noqa: ANN201
        def pre_hook(_module: nn.Module, args: tuple) -> None:
            self.keep(store[layer], args[0].detach())
            if stop and layer == self.deepest:
                raise StopForward

        return pre_hook

    def gather(self, store: dict[int, list], inverse: list[int]) -> dict[int, torch.Tensor | list[torch.Tensor]]:
        if self.positions == "all":
            return {layer: [b[j] for j in inverse] for layer, b in store.items()}
        return {layer: torch.cat(b, dim=0)[inverse] for layer, b in store.items()}


def pooled(keys: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Mean over positions per prompt: [n, d]."""
    if isinstance(keys, list):
        return torch.stack([k.mean(dim=0) for k in keys])
    return keys.mean(dim=1)


def flat(keys: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """All (prompt, position) rows stacked: [n_rows, d]."""
    if isinstance(keys, list):
        return torch.cat(keys, dim=0)
    return keys.reshape(-1, keys.shape[-1])


def largest_writes(model: nn.Module, tokenizer: object, delta: SparseDelta, texts: list[str],
                   neurons: dict[int, torch.Tensor], batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Layer -> [n_texts, k]: the largest write of each of that layer's `neurons` (indices) over each text's
    post-instruction template tokens, in units of its down column, with `delta` applied (so the shallower
    layers' edited neurons have written)."""
    with applied(model, delta):
        keys = capture_mlp_inputs(model, tokenizer, texts, sorted(neurons), "template", batch_size).keys
        return {layer: NeuronActivation(model, layer).neurons(keys[layer].float(), index).amax(dim=1)
                for layer, index in neurons.items()}

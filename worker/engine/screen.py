"""The cheap proxy the search ranks candidates with: first-token refusal probability on validation prompts.

Per language it measures three prompt groups: harmful (should rise), plain harmless and borderline harmless
(must not rise). An edit at layer L changes nothing below L, so the base pass keeps the hidden states that
enter the lowest edited layer and a candidate's pass runs only the layers from there on (layers below are
swapped for a pass-through that returns the kept states). On a 24-layer model an edit at layer 18 is screened
at a quarter of a full forward pass's cost; the numbers are the same as a full pass (test_screen.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .arch import decoder_layers
from .capture import tokenize_chat
from .delta import SparseDelta, applied
from .progress import Reporter

GROUPS = ("harmful", "plain", "borderline")


@dataclass
class ScreenPrompts:
    """lang -> texts, per group; every group may be empty for a language."""

    harmful: dict[str, list[str]]
    plain: dict[str, list[str]] = field(default_factory=dict)
    borderline: dict[str, list[str]] = field(default_factory=dict)

    def flat(self) -> tuple[list[str], list[tuple[str, str]]]:
        texts, tags = [], []
        for group in GROUPS:
            for lg, items in getattr(self, group).items():
                texts += items
                tags += [(group, lg)] * len(items)
        return texts, tags


@contextmanager
def _skip_below(model: nn.Module, start: int, kept: torch.Tensor) -> Iterator[None]:
    """Layers [0, start) return at once; layer start-1 returns `kept` (the base states entering `start`)."""
    layers = decoder_layers(model)

    def passthrough(hidden_states, *args, **kwargs):
        return hidden_states

    def last(hidden_states, *args, **kwargs):
        return kept

    for i in range(start):
        layers[i].forward = last if i == start - 1 else passthrough
    try:
        yield
    finally:
        for i in range(start):
            del layers[i].forward


def _refusal_logodds(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    p_ref = torch.logsumexp(logp[:, token_ids], dim=-1)
    return p_ref - torch.log1p(-p_ref.exp().clamp(max=1 - 1e-6))


class Screen:
    """Base pass once (keeping the states entering each of `start_layers`), then cheap candidate passes."""

    def __init__(self, model: nn.Module, tokenizer: object, prompts: ScreenPrompts, token_ids: list[int],
                 start_layers: list[int], batch_size: int = 16, reporter: Reporter | None = None) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.reporter = reporter or Reporter()
        self.texts, self.tags = prompts.flat()
        self.token_ids = torch.tensor(token_ids, dtype=torch.long)
        order = sorted(range(len(self.texts)), key=lambda i: len(self.texts[i]))  # less padding per batch
        self.batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        self.starts = sorted({s for s in start_layers if s > 0})
        self.kept: dict[int, list[torch.Tensor]] = {s: [] for s in self.starts}
        self.base = self._base_pass()
        self.passes = 0

    def _encode(self, batch: list[int]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        return tokenize_chat(self.tokenizer, [self.texts[i] for i in batch], device)

    def _logits(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**enc, use_cache=False, logits_to_keep=1).logits[:, -1, :]

    @torch.no_grad()
    def _base_pass(self) -> torch.Tensor:
        layers = decoder_layers(self.model)
        scores = torch.empty(len(self.texts))
        seen: dict[int, torch.Tensor] = {}

        def keeper(start: int):
            def hook(_m: nn.Module, _args: tuple, out: object) -> None:
                seen[start] = (out[0] if isinstance(out, tuple) else out).detach()  # type: ignore[index]
            return hook

        for b, batch in enumerate(self.batches):
            handles = [layers[s - 1].register_forward_hook(keeper(s)) for s in self.starts]
            try:
                logits = self._logits(self._encode(batch))
            finally:
                for h in handles:
                    h.remove()
            for s in self.starts:
                self.kept[s].append(seen[s])
            scores[torch.tensor(batch)] = _refusal_logodds(logits, self.token_ids.to(logits.device)).cpu()
            self.reporter.step("search", b + 1, len(self.batches), "base screen")
        return scores

    @torch.no_grad()
    def scores(self, start: int) -> torch.Tensor:
        """Per-text refusal log-odds with the model as it is now, recomputed from layer `start` on (the
        caller guarantees nothing below `start` differs from the base model)."""
        self.passes += 1
        out = torch.empty(len(self.texts))
        for b, batch in enumerate(self.batches):
            enc = self._encode(batch)
            if start > 0 and start in self.kept:
                with _skip_below(self.model, start, self.kept[start][b]):
                    logits = self._logits(enc)
            else:
                logits = self._logits(enc)
            out[torch.tensor(batch)] = _refusal_logodds(logits, self.token_ids.to(logits.device)).cpu()
            self.reporter.check_cancel()
        return out

    def summarize(self, scores: torch.Tensor) -> dict[str, dict[str, float]]:
        """group -> lang -> mean refusal probability (sigmoid of the log-odds)."""
        prob = torch.sigmoid(scores)
        out: dict[str, dict[str, float]] = {}
        for (group, lg) in dict.fromkeys(self.tags):
            mask = torch.tensor([t == (group, lg) for t in self.tags])
            out.setdefault(group, {})[lg] = float(prob[mask].mean())
        return out

    def gain(self, delta: SparseDelta) -> dict[str, dict[str, float]]:
        """group -> lang -> change of mean refusal probability under `delta` (base weights restored after)."""
        start = min((e.layer for e in delta.edits), default=0)
        with applied(self.model, delta):
            now = self.summarize(self.scores(start))
        before = self.summarize(self.base)
        return {g: {lg: now[g][lg] - before[g][lg] for lg in now[g]} for g in now}

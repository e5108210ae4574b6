"""(5) Refusal-direction activation steering (Arditi et al. 2024), a training-free peer.

Direction: mean English harmful minus mean English harmless residual stream (the output of decoder layer
L) at the post-instruction template positions, averaged over those positions; calibration harmful ids and
the harmless anchor only. At inference a forward hook adds `scale * direction` to layer L's output at every
position. Layer and scale are picked on the validation slice with the engine's refusal screen.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from worker.engine import StopForward, decoder_layers, forward_until_stop, num_template_tokens, tokenize_chat

from ..context import Context
from . import Fitted


@torch.no_grad()
def layer_outputs(model: nn.Module, tokenizer: object, texts: list[str], layer: int, batch_size: int) -> torch.Tensor:
    """Decoder layer `layer`'s output at the template positions, [n, T, d] (the pass stops after it)."""
    t = num_template_tokens(tokenizer)
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []

    def hook(_m: nn.Module, _args: tuple, out: object) -> None:
        h = out[0] if isinstance(out, tuple) else out
        rows.append(h[:, -t:, :].float().cpu())
        raise StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        for start in range(0, len(texts), batch_size):
            forward_until_stop(model, tokenize_chat(tokenizer, texts[start:start + batch_size], device))
    finally:
        handle.remove()
    return torch.cat(rows)


class Steerer:
    """Adds a vector to a decoder layer's output while on."""

    def __init__(self, model: nn.Module, layer: int, vector: torch.Tensor) -> None:
        p = next(model.parameters())
        self.block = decoder_layers(model)[layer]
        self.vector = vector.to(p.device, p.dtype)
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _m: nn.Module, _args: tuple, out: object) -> object:
        if isinstance(out, tuple):
            return (out[0] + self.vector, *out[1:])
        return out + self.vector  # type: ignore[operator]

    def on(self) -> None:
        if self.handle is None:
            self.handle = self.block.register_forward_hook(self._hook)

    def off(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def fit(ctx: Context) -> Fitted:
    start = time.perf_counter()
    lm, plan, bs = ctx.lm, ctx.plan, ctx.config.batch_size
    src = ctx.config.source_lang
    harm = [plan.harmful[i][src] for i in plan.cal_ids]
    safe = plan.anchor[src]
    screen = ctx.screen()
    best: tuple[float, Steerer, dict] | None = None
    sweep = []
    for layer in sorted({ctx.depth(x) for x in ctx.settings.steer_layers}):
        direction = (layer_outputs(lm.model, lm.tokenizer, harm, layer, bs).mean((0, 1))
                     - layer_outputs(lm.model, lm.tokenizer, safe, layer, bs).mean((0, 1)))
        for scale in ctx.settings.steer_scales:
            st = Steerer(lm.model, layer, scale * direction)
            st.on()
            try:
                gain = screen.gain(screen.measure())
            finally:
                st.off()
            obj = screen.objective(gain)
            info = {"layer": layer, "scale": scale, "direction_norm": float(direction.norm())}
            sweep.append({**info, "objective": obj, "gain": gain})
            if best is None or obj > best[0]:
                best = (obj, st, info)
    if best is None:
        raise ValueError("no steering candidate (empty layers or scales)")
    _, st, info = best
    d = int(st.vector.numel())
    return Fitted(
        name="refusal-direction steering", apply=st.on, revert=st.off, fit_seconds=time.perf_counter() - start,
        chosen=info, size={"neurons": 0, "params_changed": 0, "params_added": d, "file_bytes": 4 * d},
        sweep=sweep,
    )

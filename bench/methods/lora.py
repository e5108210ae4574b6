"""(6) LoRA supervised fine-tuning (peft): the training-based peer the paper argues against.

Training set: every calibration id in every language (English included) paired with a short refusal in that
language (bench/refusals.py), plus a retain set of harmless anchor prompts paired with the base model's own
greedy answers. Loss on the answer tokens only. Adapters on every linear of the upper half of the layers
(attention and MLP), r = 8. The learning rate is picked on the validation slice with the refusal screen;
the budget (steps x batch) is fixed per mode and the wall time is reported.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from worker.engine import format_prompt, generate

from ..context import Context
from ..refusals import refusal_for
from . import Fitted

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 8
MAX_PROMPT_TOKENS = 160


def training_pairs(ctx: Context) -> tuple[list[tuple[str, str]], float]:
    """(prompt, answer) pairs and the seconds spent generating the retain answers."""
    plan = ctx.plan
    pairs = [(plan.harmful[i][lg], refusal_for(lg, k)) for k, i in enumerate(plan.cal_ids) for lg in plan.langs]
    n = ctx.settings.lora_retain_per_lang
    retain = [t for lg in plan.langs for t in plan.anchor[lg][:n]]
    start = time.perf_counter()
    answers = generate(ctx.lm.model, ctx.lm.tokenizer, retain, ctx.settings.max_new_tokens, ctx.config.batch_size)
    pairs += [(p, a) for p, a in zip(retain, answers, strict=True) if a.strip()]
    return pairs, time.perf_counter() - start


def _encode(tok: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    p = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:]
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + a, [-100] * len(p) + a


def _batch(tok: Any, items: list[tuple[list[int], list[int]]], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    pad = tok.pad_token_id
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in items], device=device)
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in items], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in items], device=device)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(ctx: Context, model: Any, encoded: list[tuple[list[int], list[int]]], lr: float, seed: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    device = next(model.parameters()).device
    with torch.enable_grad():
        for _ in range(ctx.settings.lora_steps):
            if len(order) < ctx.settings.lora_batch:
                order += rng.sample(range(len(encoded)), len(encoded))
            take, order = order[: ctx.settings.lora_batch], order[ctx.settings.lora_batch:]
            loss = model(**_batch(ctx.lm.tokenizer, [encoded[i] for i in take], device), use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return losses


def fit(ctx: Context) -> Fitted:
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    start = time.perf_counter()
    pairs, gen_seconds = training_pairs(ctx)
    encoded = [_encode(ctx.lm.tokenizer, p, a) for p, a in pairs]
    n_layers = ctx.n_layers
    cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS,
                     layers_to_transform=list(range(n_layers // 2, n_layers)), bias="none")
    peft_model = None
    screen = ctx.screen() if len(ctx.settings.lora_lrs) > 1 else None  # one candidate: nothing to pick
    sweep: list[dict[str, Any]] = []
    best: tuple[float, str] | None = None
    train_seconds = 0.0
    for k, lr in enumerate(ctx.settings.lora_lrs):
        name = f"lr{k}"
        if peft_model is None:
            peft_model = get_peft_model(ctx.lm.model, cfg, adapter_name=name)
        else:
            peft_model.add_adapter(name, cfg)
            peft_model.set_adapter(name)
        t0 = time.perf_counter()
        losses = train(ctx, peft_model, encoded, lr, ctx.config.seed + k)
        train_seconds += time.perf_counter() - t0
        row: dict[str, Any] = {"lr": lr, "loss_first": losses[0], "loss_last": losses[-1]}
        obj = 0.0
        if screen is not None:
            row["gain"] = gain = screen.gain(screen.measure())
            row["objective"] = obj = screen.objective(gain)
        sweep.append(row)
        if best is None or obj > best[0]:
            best = (obj, name)
    if peft_model is None or best is None:
        raise ValueError("no learning rate to train (empty --lora-lrs)")
    peft_model.set_adapter(best[1])
    k_best = int(best[1][2:])
    state = get_peft_model_state_dict(peft_model, adapter_name=best[1])
    n_params = sum(int(t.numel()) for t in state.values())
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        path = Path(tmp) / "adapter.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
        nbytes = path.stat().st_size
    peft_model.disable_adapter_layers()

    def cleanup() -> None:
        peft_model.unload()  # removes the LoRA layers: the shared model is the base model again

    return Fitted(
        name="LoRA SFT", apply=peft_model.enable_adapter_layers, revert=peft_model.disable_adapter_layers,
        fit_seconds=time.perf_counter() - start,
        chosen={"lr": ctx.settings.lora_lrs[k_best], "rank": RANK, "steps": ctx.settings.lora_steps,
                "batch": ctx.settings.lora_batch, "train_examples": len(encoded),
                "train_seconds": train_seconds, "retain_generation_seconds": gen_seconds,
                "layers": f"{n_layers // 2}-{n_layers - 1}"},
        size={"neurons": 0, "params_changed": 0, "params_added": n_params, "file_bytes": nbytes},
        sweep=sweep, cleanup=cleanup,
    )

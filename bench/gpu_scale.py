"""Real-scale timing without a download: a Llama-3-8B-shaped model with random weights (bf16 on the GPU),
the demo calibration prompts through the engine's capture, localise + solve, apply and revert.

python -m bench.gpu_scale [--out gpu_scale.json] [--layer 20] [--small]   (--small: a shrunken config for a
CPU smoke test of this script)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tests.tiny import llama_8b_config, make_tokenizer
from worker.engine import (
    EditConfig,
    LoadedModel,
    Reporter,
    SparseDelta,
    apply_delta,
    collect_keys,
    edit_one,
    make_plan,
    revert_delta,
    save_delta,
)

from . import measures, solve_scaling


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Any) -> tuple[Any, float]:
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t


def build(small: bool, device: torch.device, dtype: torch.dtype, tokenizer: Any = None) -> LoadedModel:
    """The Llama-3-8B-shaped random model (`small`: 4 tiny layers). `tokenizer`: a real one, whose vocabulary
    sizes the embedding (bench.gpu_default); default a tiny Llama-3-style one."""
    from transformers import AutoModelForCausalLM

    cfg = llama_8b_config(num_layers=4 if small else None)
    if small:
        cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads = 256, 896, 4, 2
        cfg.vocab_size = 1024
    tok = tokenizer if tokenizer is not None else make_tokenizer("llama")
    if tokenizer is not None:
        cfg.vocab_size = len(tok)
    cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tok, spec="llama-3-8b-shaped (random)", path="", device=device,
                       dtype=dtype)


def run(small: bool = False, layer: int | None = None) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm, t_build = _timed(lambda: build(small, device, dtype))
    model = lm.model
    n_layers = len(model.model.layers)
    layer = layer if layer is not None else round(0.62 * n_layers)
    config = EditConfig(model=lm.spec, layers=[layer], batch_size=16)
    plan = make_plan(config, Reporter())  # bundled demo set: harmful x 10 languages + harmless anchor
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "dtype": str(dtype),
        "hidden_size": model.config.hidden_size, "intermediate_size": model.config.intermediate_size,
        "layers": n_layers, "edited_layer": layer, "build_seconds": t_build,
        "params": sum(p.numel() for p in model.parameters()),
        "checkpoint_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "calibration_prompts": len(plan.cal_ids) * len(plan.langs),
        "anchor_prompts": sum(len(v) for v in plan.anchor.values()),
    }
    texts = [plan.harmful[i][lg] for i in plan.cal_ids for lg in plan.langs]
    out["capture_overhead"] = measures.capture_overhead(model, lm.tokenizer, texts, layer, 16, repeats=3)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    keys, out["collect_keys_seconds"] = _timed(lambda: collect_keys(lm, plan, [layer], config, Reporter())[layer])
    choice, out["localize_solve_seconds"] = _timed(lambda: edit_one(lm, keys, layer, "gate", config))
    out["neurons"] = choice.neurons["count"]
    out["fit_residual"] = choice.neurons["fit_residual"]
    delta = SparseDelta(choice.edits)
    _, out["apply_seconds"] = _timed(lambda: apply_delta(model, delta))
    _, out["revert_seconds"] = _timed(lambda: revert_delta(model, delta))
    with tempfile.TemporaryDirectory() as tmp:
        out["delta_bytes"] = save_delta(delta, Path(tmp) / "d.safetensors").stat().st_size
    # the conditional refusal neuron (the CPU study's best variant) needs the residual stream as well
    cond = EditConfig(model=lm.spec, layers=[layer], batch_size=16, module="conditional")
    ckeys, out["conditional_collect_keys_seconds"] = _timed(
        lambda: collect_keys(lm, plan, [layer], cond, Reporter())[layer])
    cchoice, out["conditional_fit_seconds"] = _timed(lambda: edit_one(lm, ckeys, layer, "conditional", cond))
    out["conditional_params"] = sum(e.delta.numel() for e in cchoice.edits)
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["solve_scaling_cuda"] = solve_scaling.run([896, 2048, 4096, 8192], "cuda")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_scale.json")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    res = run(args.small, args.layer)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()

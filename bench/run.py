"""Single entry point of the benchmark: python -m bench.run [--quick|--full] [--model demo] [--data CSV] [--out DIR]

Every method gets the same calibration ids, the same validation slice for its hyperparameters, the same
held-out evaluation ids, the same greedy decoding and the same offline judge. Writes results.json and PNG
plots under --out and the Markdown tables to --md (BENCHMARKS-peers.md by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from worker.engine import (
    EditConfig,
    Judge,
    Reporter,
    StageTimer,
    UserError,
    load_model,
    make_judge,
    make_plan,
    needs_residual,
    validate_config,
    validation_refusal_openings,
)

from . import measures, report, solve_scaling
from .context import FULL, QUICK, Context, Settings
from .methods import Fitted, baseline, dense, lora, nullspace, search, sparse, steering
from .methods.edit_common import edit_config

# The MultiJail CSV lives outside the repository (never copied in): --data, or this environment variable.
DATA_ENV = "LINGUA_EDIT_BENCH_DATA"
ALL_METHODS = ("baseline", "search", "sparse", "best", "dense", "hard", "steering", "lora")


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    info: dict[str, Any] = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_best(spec: str | None) -> dict[str, Any]:
    """--best: a JSON object or a path to one (EditConfig fields, e.g. {"layers": [18], "lam": 0.01})."""
    if not spec:
        return {}
    p = Path(spec)
    data = json.loads(p.read_text() if p.is_file() else spec)
    if not isinstance(data, dict):
        raise SystemExit("--best must be a JSON object of EditConfig fields")
    return data


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const=QUICK)
    mode.add_argument("--full", dest="mode", action="store_const", const=FULL)
    ap.set_defaults(mode=QUICK)
    ap.add_argument("--model", default="demo", help="'demo', a local model directory or a hub id")
    ap.add_argument("--data", default=os.environ.get(DATA_ENV), required=not os.environ.get(DATA_ENV),
                    help=f"MultiJail-style CSV/JSONL, or 'demo' for the bundled set (default: ${DATA_ENV})")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--md", default="BENCHMARKS-peers.md", help="where the Markdown tables go")
    ap.add_argument("--best", default=None, help="best dev-split settings: JSON object or file (EditConfig fields)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help=f"subset of {','.join(ALL_METHODS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-per-lang", type=int, default=None, help="override the mode's held-out prompts per language")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-solve-scaling", action="store_true")
    ap.add_argument("--gpu-scale", default=None, help="bench.gpu_scale JSON to include in the report")
    ap.add_argument("--second-judge", choices=["guard", "openai"], default=None,
                    help="score every method's answers with this judge too and report its agreement with the "
                         "offline judge")
    ap.add_argument("--judge-model", default=None, help="guard model, local path or hub id (--second-judge guard)")
    ap.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (--second-judge openai); "
                                                      "its key from LINGUA_EDIT_JUDGE_API_KEY")
    ap.add_argument("--judge-api-model", default=None, help="model name at --judge-url")
    return ap.parse_args(argv)


def build_context(args: argparse.Namespace, settings: Settings, timer: StageTimer) -> Context:
    config = EditConfig(model=args.model, calibration=None if args.data == "demo" else args.data, seed=args.seed,
                        max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                        screen_prompts=settings.screen_prompts, device=args.device)
    plan = make_plan(config, Reporter())
    n_cal = len(plan.cal_ids)
    plan.cal_ids = plan.cal_ids[: settings.cal_ids] if settings.cal_ids else plan.cal_ids
    if settings.anchor_per_lang:
        plan.anchor = {lg: t[: settings.anchor_per_lang] for lg, t in plan.anchor.items()}
    with timer("load"):
        lm = load_model(config.model, config.device, config.dtype)
    return Context(lm=lm, plan=plan, config=config, settings=settings, timer=timer, cal_ids_available=n_cal)


def build_second_judge(args: argparse.Namespace) -> Judge | None:
    if not args.second_judge:
        return None
    try:
        return make_judge(args.second_judge, model_path=args.judge_model, url=args.judge_url,
                          api_model=args.judge_api_model, device=args.device,
                          api_key=os.environ.get("LINGUA_EDIT_JUDGE_API_KEY"))
    except UserError as exc:
        raise SystemExit(f"--second-judge {args.second_judge}: {exc}") from None


def prefetch_keys(ctx: Context, best_overrides: dict[str, Any]) -> None:
    """One capture pass for the default edit's candidate layers and the best setting's first layer (a pass
    to the deeper one costs little more than one to the shallower)."""
    layers = [ctx.depth(x) for x in ctx.settings.edit_layers]
    resid = False
    if best_overrides:
        best_cfg = edit_config(ctx.config, best_overrides)
        if best_cfg.layers != "auto" and best_cfg.positions == ctx.config.positions:
            layers.append(min(int(x) for x in best_cfg.layers))  # type: ignore[union-attr]
            resid = needs_residual(best_cfg)
    ctx.prefetch(layers, ctx.config, resid=resid)


def settings_for(args: argparse.Namespace) -> Settings:
    settings = Settings.for_mode(args.mode)
    if args.eval_per_lang:
        settings.eval_per_lang = args.eval_per_lang
    if args.max_new_tokens:
        settings.max_new_tokens = args.max_new_tokens
    return settings


def check_args(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The wanted methods and the --best overrides; fails before an hour of other methods, not at their turn."""
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods: {', '.join(unknown)}")
    best_overrides = load_best(args.best)
    try:
        validate_config(edit_config(EditConfig(model=args.model), best_overrides))
    except (ValueError, TypeError, UserError) as exc:
        raise SystemExit(f"--best: {exc}") from None
    return wanted, best_overrides


def run_meta(args: argparse.Namespace, settings: Settings, ctx: Context, best_overrides: dict[str, Any],
             second: Judge | None) -> dict[str, Any]:
    """What the results were measured on: machine, command, model, data split, second judge."""
    plan = ctx.plan
    return {
        "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.run " + shlex.join(sys.argv[1:]), "model": args.model,
        "model_path": ctx.lm.path, "dtype": str(ctx.lm.dtype), "device": str(ctx.lm.device),
        "data": args.data, "settings": asdict(settings), "best_overrides": best_overrides,
        "split": {"seed": args.seed, "eval_split": ctx.config.eval_split, "val_split": ctx.config.val_split,
                  "ids": ctx.cal_ids_available + len(plan.val_ids) + len(plan.eval_ids),
                  "calibration_used": len(plan.cal_ids), "validation": len(plan.val_ids),
                  "evaluation": len(plan.eval_ids),
                  "evaluation_used": len(plan.eval_ids[: settings.eval_per_lang] if settings.eval_per_lang
                                         else plan.eval_ids),
                  "anchor_per_lang": {lg: len(t) for lg, t in plan.anchor.items()},
                  "harmless_eval_per_lang": {lg: len(t) for lg, t in ctx.harmless_eval().items()},
                  "langs": plan.langs},
        "notes": list(plan.notes),
        "second_judge": None if second is None else {"name": args.second_judge, "model": args.judge_model,
                                                     "url": args.judge_url, "api_model": args.judge_api_model},
    }


class Recorder:
    """Appends each method's row to results["methods"] and rewrites results.json after every one, so a long
    run that dies keeps what it measured."""

    def __init__(self, ctx: Context, results: dict[str, Any], out: Path) -> None:
        self.ctx, self.results, self.out = ctx, results, out

    def record(self, key: str, fitted: Fitted | None, ev: dict[str, Any] | None, error: str | None = None) -> None:
        row: dict[str, Any] = {"key": key}
        if fitted is not None:
            row.update(name=fitted.name, chosen=fitted.chosen, size=fitted.size, fit_seconds=fitted.fit_seconds,
                       sweep=fitted.sweep, same_as=fitted.same_as)
        if ev is not None:
            row["eval"] = ev
            row["summary"] = measures.summary(ev["asr"], self.ctx.config.source_lang)
        if error:
            row["error"] = error
        self.results["methods"].append(row)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def one(self, key: str, fit_fn: Any, with_kl: bool = True) -> Fitted | None:
        """Fit and evaluate one method; its failure is recorded and the run goes on."""
        log(f"{key}: fitting")
        timer = self.ctx.timer
        try:
            with timer(f"fit:{key}"):
                fitted = fit_fn()
            log(f"{key}: fitted in {fitted.fit_seconds:.0f}s ({fitted.chosen}); evaluating")
            with timer(f"eval:{key}"):
                ev = measures.evaluate(self.ctx, fitted, with_kl=with_kl)
            fitted.cleanup()
            self.record(key, fitted, ev)
            log(f"{key}: {self.results['methods'][-1]['summary']}")
            return fitted
        except Exception as exc:  # one failing peer must not lose the others' numbers
            log(f"{key}: FAILED {exc!r}")
            self.record(key, None, None, error="".join(traceback.format_exception_only(exc)).strip())
            traceback.print_exc()
            return None


def run_baseline(ctx: Context, rec: Recorder) -> None:
    """The base model's row, and what every later method shares: the refusal screen's first tokens (from the
    base model's English answers to validation prompts, never evaluation prompts), its base scores, and the
    base side of the harmless KL / perplexity."""
    plan, timer = ctx.plan, ctx.timer
    ctx.set_refusal_tokens(validation_refusal_openings(ctx.lm, plan, ctx.config))
    log("baseline: generating")
    with timer("eval:baseline"):
        base = baseline.fit()
        ev = measures.evaluate(ctx, base, with_kl=False)
    rec.record("baseline", base, ev)
    with timer("screen_base"):
        ctx.screen()
    with timer("kl_reference"):
        for lg in plan.langs:
            ctx.kl_reference(lg)


def run_methods(ctx: Context, rec: Recorder, wanted: list[str], best_overrides: dict[str, Any]
                ) -> tuple[int, str] | None:
    """Every wanted peer method in order; returns the sparse edit's (layer, module), which dense and hard reuse."""
    chosen_layer: tuple[int, str] | None = None
    if "search" in wanted:
        rec.one("search", lambda: search.fit(ctx))
    if "sparse" in wanted or any(m in wanted for m in ("best", "dense", "hard")):
        prefetch_keys(ctx, best_overrides if "best" in wanted else {})
        fitted = rec.one("sparse", lambda: sparse.fit(ctx))
        if fitted is not None:
            chosen_layer = (fitted.chosen["layer"], fitted.chosen["module"])
    if "best" in wanted:
        if best_overrides:
            rec.one("best", lambda: sparse.fit(ctx, "sparse edit (best dev-split settings)", best_overrides))
        else:
            rec.results["methods"].append({"key": "best", "name": "sparse edit (best dev-split settings)",
                                           "same_as": "sparse", "chosen": {}, "size": {}})
    if chosen_layer is not None:
        layer, module = chosen_layer
        if "dense" in wanted:
            rec.one("dense", lambda: dense.fit(ctx, layer, module))
        if "hard" in wanted:
            rec.one("hard", lambda: nullspace.fit(ctx, layer, module))
    if "steering" in wanted:
        rec.one("steering", lambda: steering.fit(ctx))
    if "lora" in wanted:
        rec.one("lora", lambda: lora.fit(ctx))
    return chosen_layer


def run_costs(args: argparse.Namespace, ctx: Context, results: dict[str, Any], chosen_layer: tuple[int, str] | None
              ) -> None:
    """Capture overhead, checkpoint size, solve time vs d, and the GPU step's numbers when given."""
    settings, plan, timer = ctx.settings, ctx.plan, ctx.timer
    layer = chosen_layer[0] if chosen_layer else ctx.depth(settings.edit_layers[0])
    src = ctx.config.source_lang
    texts = [plan.harmful[i][lg] for i in plan.cal_ids for lg in (src, plan.langs[-1])][: settings.overhead_texts]
    log("capture overhead")
    with timer("capture_overhead"):
        results["capture_overhead"] = measures.capture_overhead(ctx.lm.model, ctx.lm.tokenizer, texts, layer,
                                                                ctx.config.batch_size,
                                                                repeats=2 if settings.mode == QUICK else 3)
    results["checkpoint"] = measures.checkpoint_bytes(ctx.lm.model, ctx.lm.path)
    if not args.no_solve_scaling:
        log("solve scaling")
        with timer("solve_scaling"):
            results["solve_scaling"] = [solve_scaling.time_solve(d, repeats=1 if settings.mode == QUICK else 2)
                                        for d in settings.solve_dims]
    if args.gpu_scale and Path(args.gpu_scale).is_file():
        results["gpu_scale"] = json.loads(Path(args.gpu_scale).read_text())


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_for(args)
    wanted, best_overrides = check_args(args)
    t_start = time.perf_counter()
    timer = StageTimer()
    second = build_second_judge(args)  # before the model: a bad judge argument fails at once
    log(f"mode {settings.mode}: loading {args.model}")
    ctx = build_context(args, settings, timer)
    ctx.second_judge = second
    results: dict[str, Any] = {"meta": run_meta(args, settings, ctx, best_overrides, second), "methods": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(ctx, results, out)
    run_baseline(ctx, rec)
    chosen_layer = run_methods(ctx, rec, wanted, best_overrides)
    run_costs(args, ctx, results, chosen_layer)
    results["stages"] = {"seconds": timer.seconds, "peak_rss_mb": timer.peak_mb}
    results["total_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report.write(results, out, Path(args.md))
    log(f"done in {results['total_seconds']:.0f}s: {out / 'results.json'}, {args.md}")
    return results


def main(argv: list[str] | None = None) -> None:
    run(parse(argv))


if __name__ == "__main__":
    main()

"""Engine subcommands of `lingua-edit`: edit, eval, apply-delta, revert-delta.

`register(subparsers)` adds them to the top-level parser (app/cli.py); they import only the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .config import SUPPORTED_LANGS, EditConfig
from .errors import EngineError
from .methods import MODULE_CHOICES


def _langs(value: str) -> list[str]:
    langs = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in langs if x not in SUPPORTED_LANGS]
    if bad:
        raise argparse.ArgumentTypeError(f"unsupported language(s) {', '.join(bad)}; "
                                         f"supported: {','.join(SUPPORTED_LANGS)}")
    return langs


def _layers(value: str) -> list[int] | str:
    if value == "auto":
        return "auto"
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("--layers takes 'auto' or comma-separated integers") from exc


def _floats(value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("takes comma-separated numbers, e.g. 3,6,12") from exc


def _budget(value: str) -> float | int:
    try:
        v = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("--neuron-budget takes a fraction (<1) or a count") from exc
    return int(v) if v >= 1 else v


def add_config_flags(p: argparse.ArgumentParser) -> None:
    d = EditConfig()
    p.add_argument("--model", default=d.model, help="hub id, local directory, .gguf file, or 'demo'")
    p.add_argument("--calibration", default=None, help="JSONL or CSV calibration file (default: bundled demo)")
    p.add_argument("--source-lang", default=d.source_lang, choices=SUPPORTED_LANGS)
    p.add_argument("--target-langs", type=_langs, default=d.target_langs, help="comma-separated codes")
    p.add_argument("--eval-split", type=float, default=d.eval_split, help="share of harmful ids held out")
    p.add_argument("--val-split", type=float, default=d.val_split)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-calibration-ids", type=int, default=None, help="cap harmful calibration ids")
    p.add_argument("--max-anchor-prompts", type=int, default=None,
                   help="cap per language on harmless anchor prompts (plain and borderline each)")
    p.add_argument("--method", default=d.method, choices=["search", "paper"],
                   help="search (default): rank sparse closed-form candidates on validation prompts and ship the "
                   "winner; paper: the paper's closed form exactly as --layers/--module/... say")
    p.add_argument("--search-layers", type=_layers, default=d.search_layers,
                   help="layers the search tries: 'auto' (60%%, 75%%, 90%% of the depth) or e.g. 14,18,22")
    p.add_argument("--search-gains", type=_floats, default=d.search_gains,
                   help="gain multipliers the search tries, e.g. 3,6,12")
    p.add_argument("--confirm-candidates", type=int, default=d.confirm_candidates,
                   help="best candidates confirmed by generation on validation prompts (0: screen only)")
    p.add_argument("--confirm-prompts", type=int, default=d.confirm_prompts,
                   help="validation ids per language generated on in the confirmation")
    p.add_argument("--max-harmless-eval", type=int, default=d.max_harmless_eval,
                   help="held-out plain and borderline harmless prompts per language")
    p.add_argument("--second-test-prompts", type=int, default=d.second_test_prompts,
                   help="prompts per language of the second test set (bundled demo set; 0 to skip)")
    p.add_argument("--layers", type=_layers, default=d.layers, help="'auto' or e.g. 14 or 12,16")
    p.add_argument("--module", default=d.module, choices=list(MODULE_CHOICES),
                   help="conditional: repurpose --neuron-budget (default 1) least-used neurons as a "
                   "harmful-input-gated refusal writer (beyond the paper)")
    p.add_argument("--tau-z", type=float, default=d.tau_z)
    p.add_argument("--tau-d", type=float, default=d.tau_d)
    p.add_argument("--neuron-budget", type=_budget, default=None)
    p.add_argument("--positions", default=d.positions, choices=["template", "last", "all"])
    p.add_argument("--select", default=d.select, choices=["contrast", "refusal_gap"],
                   help="neuron selection: the spec's z/d contrast, or top neurons by refusal-gap attribution")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--lam", type=float, default=d.lam)
    p.add_argument("--null-space", default=d.null_space, choices=["soft", "hard"])
    p.add_argument("--target-scale", type=float, default=d.target_scale)
    p.add_argument("--judge", default=d.judge, choices=["refusal", "guard", "openai"])
    p.add_argument("--judge-model", default=None, help="guard model path (--judge guard)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (--judge openai)")
    p.add_argument("--judge-api-model", default=None)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-eval-prompts", type=int, default=None, help="cap held-out prompts per language")
    p.add_argument("--screen-prompts", type=int, default=d.screen_prompts)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)


def config_from_args(a: argparse.Namespace) -> EditConfig:
    fields = EditConfig.__dataclass_fields__
    return EditConfig(**{k: v for k, v in vars(a).items() if k in fields})


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("edit", help="run the sparse safety edit and write artifacts")
    add_config_flags(p)
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.set_defaults(func=cmd_edit)

    p = subparsers.add_parser("apply-delta", help="apply a delta.safetensors to a base model")
    p.add_argument("--model", required=True)
    p.add_argument("--delta", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_apply)

    p = subparsers.add_parser("revert-delta", help="remove a delta from an edited model (bit-for-bit base)")
    p.add_argument("--model", required=True, help="the edited model directory")
    p.add_argument("--delta", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_revert)

    p = subparsers.add_parser("eval", help="per-language ASR of a model on held-out harmful prompts")
    add_config_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_eval)


class _Bars:
    """tqdm bar per phase."""

    def __init__(self) -> None:
        self.bar = None
        self.phase = None

    def __call__(self, phase: str, done: int, total: int, message: str | None = None) -> None:
        from tqdm import tqdm

        if phase == "warning":
            print(f"note: {message}", file=sys.stderr)
            return
        if phase != self.phase or self.bar is None or (total and self.bar.total != total):
            if self.bar is not None:
                self.bar.close()
            self.bar, self.phase = tqdm(total=total or None, desc=phase, leave=False, file=sys.stderr), phase
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{100 * x:4.0f}"


def _se(p: float, n: int) -> str:
    return f"{100 * (p * (1 - p) / n) ** 0.5:3.0f}" if n else "  -"


def format_table(languages: list[dict[str, Any]]) -> str:
    """Per language, percentages before -> after: harmful ASR (± standard error), harmful answers that are
    degenerate, refusal of plain and of borderline harmless prompts, selectivity; then the target mean."""
    head = (f"{'lang':<5}{'n':>4} {'ASR before':>11} {'ASR after':>11} {'degen':>9} {'harmless refused':>17}"
            f" {'borderline refused':>19} {'select':>7}")
    lines = [head, "(percent; ASR ± standard error; degenerate = blank or looping answers to harmful prompts)"]
    for r in languages:
        n = r["n"]
        sel = r.get("selectivity")
        lines.append(
            f"{r['lang']:<5}{n:>4} {_pct(r['asr_before'])} ±{_se(r['asr_before'], n)} "
            f"{_pct(r['asr_after'])} ±{_se(r['asr_after'], n)} "
            f"{_pct(r.get('degenerate_before'))}→{_pct(r.get('degenerate_after'))} "
            f"{'':>7}{_pct(r.get('harmless_refusal_before'))}→{_pct(r.get('harmless_refusal_after'))} "
            f"{'':>9}{_pct(r.get('borderline_refusal_before'))}→{_pct(r.get('borderline_refusal_after'))} "
            f"{'' if sel is None else f'{100 * sel:+7.0f}'}")
    others = languages[1:]
    if others:
        b = sum(r["asr_before"] for r in others) / len(others)
        a = sum(r["asr_after"] for r in others) / len(others)
        n = sum(r["n"] for r in others)
        rel = (b - a) / b if b else 0.0
        worse = [r["lang"] for r in others if r["asr_after"] > r["asr_before"]]
        lines.append(f"{'mean*':<5}{'':>4} {_pct(b)} ±{_se(b, n)} {_pct(a)} ±{_se(a, n)}"
                     f"   (*targets; relative drop {rel:.1%}; worse: {', '.join(worse) or 'none'})")
    second = [r for r in languages if r.get("second_n")]
    if second:
        lines.append("second test set (bundled demo prompts, another style), ASR before -> after: " + ", ".join(
            f"{r['lang']} {_pct(r['second_asr_before']).strip()}->{_pct(r['second_asr_after']).strip()}"
            for r in second))
    return "\n".join(lines)


def cmd_edit(a: argparse.Namespace) -> int:
    from .pipeline import run_edit
    from .progress import Reporter

    bars = _Bars()
    try:
        res = run_edit(config_from_args(a), Path(a.out), Reporter(progress=bars))
    finally:
        bars.close()
    d = res.to_dict()
    print(format_table(d["languages"]))
    u = res.utility
    print(f"harmless KL (mean, nats/token): {u['kl_mean']:.4f}   first answer token: "
          f"{u['kl_first_token_mean']:.4f}   perplexity {u['ppl_before']:.2f} -> "
          f"{u['ppl_after']:.2f}")
    for key, n in res.neurons.items():
        extra = (f", fit residual {n['fit_residual']:.2f}" if "fit_residual" in n else "") + (
            f", harmless-key change {n['anchor_change']:.3f}" if "anchor_change" in n else "")
        print(f"edited layer.module {key}: {n['count']} neurons ({n['fraction']:.2%}){extra}")
    if res.method == "search":
        print(f"search: {len(res.search)} candidates scored on validation prompts; " + (
            next((w for w in res.warnings if w.startswith("search winner")), "no edit shipped")))
    print(f"artifacts in {Path(a.out).resolve()}: " + ", ".join(res.artifacts))
    if "report.html" in res.artifacts:
        print(f"report: {res.artifacts['report.html'].resolve()}")
    return 0


def _rewrite_with_delta(a: argparse.Namespace, action: str) -> int:
    """Load a model, apply or revert a delta (both check the rows first), save the result."""
    from .delta import apply_delta, load_delta, revert_delta
    from .models import load_model, save_model_dir

    delta = load_delta(a.delta)
    lm = load_model(a.model, device="cpu")
    (apply_delta if action == "apply" else revert_delta)(lm.model, delta)
    save_model_dir(lm.model, lm.tokenizer, Path(a.out))
    what = "edited" if action == "apply" else "base"
    print(f"{action}: {len(delta.edits)} edit(s); {what} model written to {a.out}")
    return 0


def cmd_apply(a: argparse.Namespace) -> int:
    return _rewrite_with_delta(a, "apply")


def cmd_revert(a: argparse.Namespace) -> int:
    return _rewrite_with_delta(a, "revert")


def cmd_eval(a: argparse.Namespace) -> int:
    from .pipeline import evaluate_model

    rows = evaluate_model(config_from_args(a))
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'lang':<6}{'n':>5}{'ASR':>8}{'refusal':>9}")
        for r in rows:
            print(f"{r['lang']:<6}{r['n']:>5}{r['asr']:>8.3f}{r['refusal']:>9.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Engine-only entry point (`python -m worker.engine.cli`), same subcommands as `lingua-edit`."""
    parser = argparse.ArgumentParser(prog="lingua-edit-engine")
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except EngineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

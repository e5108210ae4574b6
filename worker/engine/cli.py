"""Engine subcommands of `lingua-edit`: edit, eval, apply-delta, revert-delta.

`register(subparsers)` adds them to the top-level parser (app/cli.py); they import only the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from .config import EditConfig, accepts_auto, choices_of, config_fields, field_types
from .errors import EngineError


def _items(item: Any, choices: tuple[Any, ...] | None) -> Any:
    """A parser of comma-separated values of type `item` (one of `choices` when given)."""
    def parse(value: str) -> list[Any]:
        try:
            out = [item(x.strip()) for x in value.split(",") if x.strip()]
        except ValueError as exc:
            what = {int: "integers", float: "numbers"}.get(item, "values")
            raise argparse.ArgumentTypeError(f"takes comma-separated {what}, e.g. 3,6,12") from exc
        bad = [x for x in out if choices is not None and x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unsupported value(s) {', '.join(map(str, bad))}; "
                                             f"supported: {','.join(map(str, choices or ()))}")
        return out
    return parse


def _or_auto(parse: Any) -> Any:
    def parse_or_auto(value: str) -> Any:
        return "auto" if value == "auto" else parse(value)
    return parse_or_auto


def _budget(value: str) -> float | int:
    """A fraction (<1) stays a float, a count (>=1) becomes an int."""
    try:
        v = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("takes a fraction (<1) or a count") from exc
    return int(v) if v >= 1 else v


PARSERS: dict[str, Any] = {"neuron_budget": _budget}  # fields whose flag parses otherwise than their type says


def _flag_kwargs(name: str, tp: Any) -> dict[str, Any]:
    """argparse's type and choices for a field of type `tp`."""
    if name in PARSERS:
        return {"type": PARSERS[name]}
    members = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        typing.Union, types.UnionType) else [tp]
    auto = accepts_auto(tp)
    members = [m for m in members if not (typing.get_origin(m) is Literal and "auto" in typing.get_args(m))]
    (base,) = members  # every field is one type, optionally None or "auto"
    origin = typing.get_origin(base)
    if origin is Literal:
        return {"choices": list(typing.get_args(base))}
    if origin in (list, tuple):
        item = typing.get_args(base)[0]
        parse = _items(str if typing.get_origin(item) is Literal else item, choices_of(item))
        if origin is tuple:
            parse = _as_tuple(parse)
        return {"type": _or_auto(parse) if auto else parse}
    return {} if base is str else {"type": base}


def _as_tuple(parse: Any) -> Any:
    def parse_tuple(value: str) -> tuple[Any, ...]:
        return tuple(parse(value))
    return parse_tuple


def add_config_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                     defaults: dict[str, Any] | None = None) -> None:
    """One flag per EditConfig field (`--field-name`), its type, choices, default and help read from the
    field (worker/engine/config.py); `only`: these fields alone; `defaults`: other defaults (the demo's)."""
    d, types_, defaults = EditConfig(), field_types(), defaults or {}
    for f in config_fields():
        if only is not None and f.name not in only:
            continue
        default = defaults.get(f.name, getattr(d, f.name))
        p.add_argument("--" + f.name.replace("_", "-"), default=default, help=flag_help(f, types_[f.name]),
                       **_flag_kwargs(f.name, types_[f.name]))


def flag_help(f: Any, tp: Any) -> str:
    """The field's help with its bounds (and, for a list, how to write one), escaped for argparse."""
    meta = f.metadata
    notes = [f"{op} {meta[k]:g}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in meta]
    if any(typing.get_origin(a) in (list, tuple) for a in (tp, *typing.get_args(tp))):
        notes.insert(0, "comma-separated")
    text = meta["help"] + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")


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


FLIP_COUNTS = (  # group, its label, the two counts shown as (key, label) (good way first for harmful prompts)
    ("harmful", "harmful", ("no_longer_harmful", "no longer answered"), ("newly_harmful", "newly answered")),
    ("plain", "plain harmless", ("newly_refused", "newly refused"), ("no_longer_refused", "no longer refused")),
    ("borderline", "borderline harmless", ("newly_refused", "newly refused"),
     ("no_longer_refused", "no longer refused")),
    ("second", "second test set", ("no_longer_harmful", "no longer answered"), ("newly_harmful", "newly answered")),
)


def format_flips(flips: dict[str, Any]) -> str:
    """The prompts whose verdict changed, paired prompt by prompt, per group and language (languages where
    nothing changed left out): the table's net shares can hide flips both ways. Malformed entries (a
    hand-edited report.json) are skipped."""
    by_lang = {lg: by for lg, by in flips.items() if isinstance(by, dict)}
    lines = []
    for group, label, (a, a_label), (b, b_label) in FLIP_COUNTS:
        counts = {lg: by[group] for lg, by in by_lang.items() if isinstance(by.get(group), dict)}
        if not counts:
            continue
        moved = [f"{lg} {f.get(a, 0)}/{f.get(b, 0)}" for lg, f in counts.items() if f.get(a) or f.get(b)]
        lines.append(f"  {label}, {a_label} / {b_label}: {', '.join(moved) or 'none'}")
    return "\n".join(["verdicts that changed, per language:", *lines]) if lines else ""


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
    if res.flips:
        print(format_flips(res.flips))
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

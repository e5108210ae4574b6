"""Calibration data: the two file formats, the bundled sets, validation and the id splits.

Formats
- JSONL (`.jsonl`): one object per line, `{"id", "lang", "prompt", "kind": "harmful"|"harmless"}`.
  Translations of one prompt share an `id`. Blank lines are skipped; other keys are ignored.
- Wide CSV (`.csv`, MultiJail's layout): a header `id, en, zh, ...` with one column per supported language
  code. Other columns (`source`, `tags`, ...) are ignored; a two-letter column that is not a supported
  language is ignored with a note. Every row is harmful unless a `kind` column says otherwise (an empty
  `kind` cell means harmful).

Every error is a `CalibrationError` whose message names the file, the row (1-based line number of the
file; for inline rows, the 1-based position in the list) and the field.

Row rules (checked while parsing, and again by `validate` for sets built in code): known language code,
kind harmful/harmless, non-empty prompt text, id present, no duplicate (id, lang, kind).
Set rules (`validate`): every harmful prompt in a target language has its source-language translation
(same id); each target language is present with at least `min_harmful` such pairs; at least `min_harmful`
harmful source-language prompts; at least `min_harmless` harmless prompts in every language used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .config import SUPPORTED_LANGS
from .errors import CalibrationError, UserError

Kind = Literal["harmful", "harmless"]
KINDS: tuple[str, ...] = ("harmful", "harmless")

DEFAULT_MIN_HARMFUL = 4  # harmful ids with a source translation, per target language
DEFAULT_MIN_HARMLESS = 4  # harmless prompts per language used
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
PARAM = "calibration"

_PACKAGE = "worker.engine"  # files under its resources/ (package data, no __init__ needed)
HARMLESS_FILE = "harmless.jsonl"
HARMFUL_DEMO_FILE = "harmful_demo.jsonl"
BORDERLINE_FILE = "borderline.jsonl"
# development-only harmless prompts (plain ids hx..., borderline ids bx...): they join the read-outs' negatives and
# the validation screen, never a held-out set, so the held-out sets stay those of BENCHMARKS.md §1m
HARMLESS_DEV_FILE = "harmless_dev.jsonl"
BORDERLINE_DEV_FILE = "borderline_dev.jsonl"
_CSV_IGNORED_HINT = re.compile(r"^[a-z]{2}$")
_MAX_LISTED = 5


@dataclass
class Prompt:
    id: str
    lang: str
    text: str
    kind: Kind
    row: int | None = field(default=None, compare=False, repr=False)  # where it came from, for errors


@dataclass
class CalibrationSet:
    prompts: list[Prompt]
    source: str = "inline"
    notes: list[str] = field(default_factory=list)

    def _select(self, kind: str, lang: str) -> list[Prompt]:
        return [p for p in self.prompts if p.kind == kind and p.lang == lang]

    def harmful(self, lang: str) -> list[Prompt]:
        return self._select("harmful", lang)

    def harmless(self, lang: str) -> list[Prompt]:
        return self._select("harmless", lang)

    def languages(self, kind: str | None = None) -> list[str]:
        """Languages present (of one kind, or of any), in SUPPORTED_LANGS order."""
        present = {p.lang for p in self.prompts if kind is None or p.kind == kind}
        return _lang_order(present)

    def harmful_ids(self) -> list[str]:
        """Ids of harmful prompts, in order of first appearance."""
        return list(dict.fromkeys(p.id for p in self.prompts if p.kind == "harmful"))

    def by_id(self, kind: str) -> dict[str, dict[str, Prompt]]:
        out: dict[str, dict[str, Prompt]] = {}
        for p in self.prompts:
            if p.kind == kind:
                out.setdefault(p.id, {})[p.lang] = p
        return out

    def __len__(self) -> int:
        return len(self.prompts)


# --------------------------------------------------------------------------------------------- helpers


def _lang_order(langs: Iterable[str]) -> list[str]:
    rank = {lg: i for i, lg in enumerate(SUPPORTED_LANGS)}
    return sorted(set(langs), key=lambda lg: (rank.get(lg, len(rank)), lg))


def _where(source: str, row: int | None, fld: str) -> str:
    if row is None:
        return f"{source}: field '{fld}'"
    return f"{source}: row {row}, field '{fld}'"


def _fail(source: str, row: int | None, fld: str, problem: str) -> CalibrationError:
    return CalibrationError(f"{_where(source, row, fld)}: {problem}", param=PARAM)


def _supported() -> str:
    return ", ".join(SUPPORTED_LANGS)


def _norm_id(value: Any, source: str, row: int | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _fail(source, row, "id", f"must be a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _fail(source, row, "id", "is empty")
    return text


def _norm_lang(value: Any, source: str, row: int | None) -> str:
    if not isinstance(value, str):
        raise _fail(source, row, "lang", f"must be a string, got {type(value).__name__}")
    lang = value.strip().lower()
    if lang not in SUPPORTED_LANGS:
        raise _fail(source, row, "lang", f"unknown language code {value!r} (supported: {_supported()})")
    return lang


def _norm_kind(value: Any, source: str, row: int | None) -> Kind:
    kind = value.strip().lower() if isinstance(value, str) else value
    if kind not in KINDS:
        raise _fail(source, row, "kind", f"must be 'harmful' or 'harmless', got {value!r}")
    return kind  # type: ignore[return-value]


def _norm_text(value: Any, source: str, row: int | None, fld: str) -> str:
    if not isinstance(value, str):
        raise _fail(source, row, fld, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _fail(source, row, fld, "prompt is empty")
    return value.strip()


class _DuplicateGuard:
    def __init__(self, source: str) -> None:
        self.source = source
        self.seen: dict[tuple[str, str, str], int | None] = {}

    def add(self, p: Prompt, fld: str = "id") -> None:
        key = (p.id, p.lang, p.kind)
        if key in self.seen:
            first = self.seen[key]
            at = f" (first seen at row {first})" if first is not None else ""
            raise _fail(self.source, p.row, fld,
                        f"duplicate {p.kind} prompt id {p.id!r} in language {p.lang!r}{at}")
        self.seen[key] = p.row


# --------------------------------------------------------------------------------------------- parsing


def _prompt_from_row(raw: Any, source: str, row: int) -> Prompt:
    if not isinstance(raw, dict):
        raise _fail(source, row, "<row>", f"must be a JSON object, got {type(raw).__name__}")
    for fld in ("id", "lang", "prompt", "kind"):
        if fld not in raw:
            raise _fail(source, row, fld, "is missing (a row needs id, lang, prompt, kind)")
    return Prompt(
        id=_norm_id(raw["id"], source, row),
        lang=_norm_lang(raw["lang"], source, row),
        text=_norm_text(raw["prompt"], source, row, "prompt"),
        kind=_norm_kind(raw["kind"], source, row),
        row=row,
    )


def parse_rows(rows: Sequence[Any], source: str = "inline") -> CalibrationSet:
    """Parse rows in the JSONL row format; `row` numbers in errors are 1-based positions in `rows`."""
    return _parse_numbered(((i, r) for i, r in enumerate(rows, start=1)), source)


def _parse_numbered(numbered: Iterable[tuple[int, Any]], source: str) -> CalibrationSet:
    guard = _DuplicateGuard(source)
    prompts: list[Prompt] = []
    for row, raw in numbered:
        p = _prompt_from_row(raw, source, row)
        guard.add(p)
        prompts.append(p)
    if not prompts:
        raise _fail(source, None, "<file>", "holds no prompts")
    return CalibrationSet(prompts=prompts, source=source, notes=[])


def _jsonl_rows(text: str, source: str) -> Iterable[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(source, lineno, "<row>", f"invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:  # "[[[[..." thousands deep: a row is a flat object, never this
            raise _fail(source, lineno, "<row>", "invalid JSON (nested too deeply)") from None


def parse_jsonl(text: str, source: str = "inline.jsonl") -> CalibrationSet:
    return _parse_numbered(_jsonl_rows(text, source), source)


def _csv_header(header: list[str], source: str) -> tuple[int, dict[str, int], int | None, list[str]]:
    names = [h.strip() for h in header]
    lowered = [h.lower() for h in names]
    if "id" not in lowered:
        raise _fail(source, 1, "id", "the CSV header has no 'id' column")
    if lowered.count("id") > 1:
        raise _fail(source, 1, "id", "the CSV header has more than one 'id' column")
    lang_cols: dict[str, int] = {}
    notes: list[str] = []
    for i, name in enumerate(lowered):
        if name in SUPPORTED_LANGS:
            if name in lang_cols:
                raise _fail(source, 1, name, f"the CSV header repeats language column {name!r}")
            lang_cols[name] = i
        elif _CSV_IGNORED_HINT.match(name) and name != "id":
            notes.append(f"{source}: column {names[i]!r} ignored (not a supported language: {_supported()})")
    if not lang_cols:
        raise _fail(source, 1, "<header>",
                    f"no language column found (expected columns named by code: {_supported()})")
    kind_col = lowered.index("kind") if "kind" in lowered else None
    return lowered.index("id"), lang_cols, kind_col, notes


def parse_csv(text: str, source: str = "inline.csv") -> CalibrationSet:
    """Parse the wide layout: one row per id, one column per language."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise _fail(source, None, "<file>", "is empty (no CSV header)") from None
    except csv.Error as e:
        raise _fail(source, 1, "<header>", f"malformed CSV ({e})") from None
    id_col, lang_cols, kind_col, notes = _csv_header(header, source)
    guard = _DuplicateGuard(source)
    prompts: list[Prompt] = []
    line_end = reader.line_num
    while True:
        row = line_end + 1  # the record starts on the line after the previous one ended
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise _fail(source, row, "<row>", f"malformed CSV ({e})") from None
        line_end = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise _fail(source, row, "<row>", f"has {len(cells)} cells, the header has {len(header)}")
        pid = _norm_id(cells[id_col], source, row)
        kind_cell = cells[kind_col].strip() if kind_col is not None else ""
        kind = _norm_kind(kind_cell or "harmful", source, row)
        for lang, col in lang_cols.items():
            p = Prompt(pid, lang, _norm_text(cells[col], source, row, header[col].strip()), kind, row)
            guard.add(p, fld="id")
            prompts.append(p)
    if not prompts:
        raise _fail(source, None, "<file>", "holds no prompts (only a header)")
    return CalibrationSet(prompts=prompts, source=source, notes=notes)


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail(source, line, "<encoding>",
                    f"is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                    "save the file as UTF-8") from None


def load_calibration(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> CalibrationSet:
    """Load a `.jsonl` or `.csv` calibration file (see the module docstring for the formats)."""
    p = Path(path)
    source = str(path)
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise _fail(source, None, "<file>",
                    f"unsupported file type {p.suffix or '(none)'!r}: use .jsonl "
                    "(rows id, lang, prompt, kind) or .csv (columns id, en, zh, ...)")
    if not p.is_file():
        raise _fail(source, None, "<file>", "not found (or not a regular file)")
    size = p.stat().st_size
    if size > max_bytes:
        raise _fail(source, None, "<file>", f"is {size} bytes, more than the limit of {max_bytes} bytes")
    text = _decode(p.read_bytes(), source)
    return parse_jsonl(text, source) if suffix == ".jsonl" else parse_csv(text, source)


# --------------------------------------------------------------------------------------------- bundled sets


@cache
def _bundled_prompts(name: str) -> tuple[Prompt, ...]:
    text = resources.files(_PACKAGE).joinpath("resources", name).read_text(encoding="utf-8")
    return tuple(parse_jsonl(text, f"<bundled {name}>").prompts)


def _bundled(name: str, source: str) -> CalibrationSet:
    prompts = [Prompt(p.id, p.lang, p.text, p.kind, p.row) for p in _bundled_prompts(name)]
    return CalibrationSet(prompts=prompts, source=source, notes=[])


def bundled_harmless() -> CalibrationSet:
    """The project's own harmless prompts (ids h001...), each in all ten supported languages."""
    return _bundled(HARMLESS_FILE, "bundled harmless set")


def bundled_demo_harmful() -> CalibrationSet:
    """A small parallel harmful demo set (ids d001...), each in all ten supported languages."""
    return _bundled(HARMFUL_DEMO_FILE, "bundled harmful demo set")


def bundled_borderline() -> CalibrationSet:
    """Safe prompts that look alarming (ids b001...: homonyms, safe contexts, definitions, history, public
    figures, safety information), each in all ten supported languages: the over-refusal set."""
    return _bundled(BORDERLINE_FILE, "bundled borderline-harmless set")


def bundled_dev_harmless() -> tuple[CalibrationSet, CalibrationSet]:
    """The development-only harmless prompts, (plain, borderline), each in all ten supported languages: for the
    anchor and the validation screen only (never held out)."""
    return (_bundled(HARMLESS_DEV_FILE, "bundled development harmless set"),
            _bundled(BORDERLINE_DEV_FILE, "bundled development borderline-harmless set"))


def demo_calibration() -> CalibrationSet:
    harmful, harmless = bundled_demo_harmful(), bundled_harmless()
    note = (f"using the bundled demo calibration set: {len(harmful.harmful_ids())} harmful and "
            f"{len(harmless.by_id('harmless'))} harmless prompts, each in {len(SUPPORTED_LANGS)} languages")
    return CalibrationSet(prompts=harmful.prompts + harmless.prompts, source="bundled demo set", notes=[note])


def with_bundled_harmless(cs: CalibrationSet) -> CalibrationSet:
    """Add the bundled harmless set when `cs` holds no harmless prompt (MultiJail's layout)."""
    if any(p.kind == "harmless" for p in cs.prompts):
        return cs
    harmless = bundled_harmless()
    note = (f"{cs.source} holds no harmless prompts: added the bundled harmless set "
            f"({len(harmless.by_id('harmless'))} prompts in each of {', '.join(harmless.languages())}) "
            "as the utility anchor")
    return CalibrationSet(prompts=cs.prompts + harmless.prompts, source=cs.source, notes=[*cs.notes, note])


# --------------------------------------------------------------------------------------------- validation


def _check_args(source_lang: str, targets: list[str], min_harmful: int, min_harmless: int) -> None:
    if source_lang not in SUPPORTED_LANGS:
        raise UserError(f"unknown source language {source_lang!r} (supported: {_supported()})",
                        param="source_lang")
    if not targets:
        raise UserError("no target languages given", param="target_langs")
    for lg in targets:
        if lg not in SUPPORTED_LANGS:
            raise UserError(f"unknown target language {lg!r} (supported: {_supported()})",
                            param="target_langs")
    if source_lang in targets:
        raise UserError(f"the source language {source_lang!r} cannot also be a target language",
                        param="target_langs")
    if min_harmful < 1 or min_harmless < 1:
        raise UserError("min_harmful and min_harmless must be at least 1", param="calibration")


def _check_prompts(cs: CalibrationSet) -> None:
    guard = _DuplicateGuard(cs.source)
    for p in cs.prompts:
        _norm_lang(p.lang, cs.source, p.row)
        _norm_kind(p.kind, cs.source, p.row)
        _norm_id(p.id, cs.source, p.row)
        _norm_text(p.text, cs.source, p.row, "prompt")
        guard.add(p)


def _check_translations(cs: CalibrationSet, source_lang: str, targets: list[str]) -> None:
    have_source = {p.id for p in cs.harmful(source_lang)}
    missing = [p for p in cs.prompts
               if p.kind == "harmful" and p.lang in targets and p.id not in have_source]
    if not missing:
        return
    first = missing[0]
    more = f" ({len(missing) - 1} more harmful prompts lack it too)" if len(missing) > 1 else ""
    raise _fail(cs.source, first.row, "id",
                f"harmful prompt id {first.id!r} in {first.lang!r} has no {source_lang!r} translation "
                f"(a harmful {source_lang!r} prompt with the same id){more}")


def _check_counts(cs: CalibrationSet, source_lang: str, targets: list[str],
                  min_harmful: int, min_harmless: int) -> None:
    n_src = len(cs.harmful(source_lang))
    if n_src < min_harmful:
        raise _fail(cs.source, None, "lang",
                    f"{n_src} harmful {source_lang!r} prompts, at least {min_harmful} are needed")
    have_source = {p.id for p in cs.harmful(source_lang)}
    for lg in targets:
        n = len({p.id for p in cs.harmful(lg)} & have_source)
        if n == 0:
            raise CalibrationError(
                f"{_where(cs.source, None, 'lang')}: target language {lg!r} has no harmful prompts "
                f"(languages present: {', '.join(cs.languages('harmful')) or 'none'})", param="target_langs")
        if n < min_harmful:
            raise _fail(cs.source, None, "lang",
                        f"{n} harmful {lg!r} prompts with a {source_lang!r} translation, "
                        f"at least {min_harmful} are needed")
    for lg in [source_lang, *targets]:
        n = len(cs.harmless(lg))
        if n < min_harmless:
            hint = " (a file with no harmless prompts gets the bundled set)" if n == 0 else ""
            raise _fail(cs.source, None, "kind",
                        f"{n} harmless {lg!r} prompts, at least {min_harmless} are needed{hint}")


def validate(
    cs: CalibrationSet,
    source_lang: str = "en",
    target_langs: Sequence[str] | None = None,
    min_harmful: int = DEFAULT_MIN_HARMFUL,
    min_harmless: int = DEFAULT_MIN_HARMLESS,
) -> list[str]:
    """Check every rule; raise CalibrationError (or UserError for bad arguments); return notes."""
    targets = list(target_langs) if target_langs is not None else [
        lg for lg in SUPPORTED_LANGS if lg != source_lang]
    _check_args(source_lang, targets, min_harmful, min_harmless)
    _check_prompts(cs)
    _check_translations(cs, source_lang, targets)
    _check_counts(cs, source_lang, targets, min_harmful, min_harmless)
    notes = list(cs.notes)
    unused = [lg for lg in cs.languages("harmful") if lg != source_lang and lg not in targets]
    if unused:
        notes.append(f"{cs.source}: harmful prompts in {', '.join(unused)} are not among the target "
                     "languages and are not used for the edit")
    src_ids = {p.id for p in cs.harmful(source_lang)}
    pairs = {lg: len({p.id for p in cs.harmful(lg)} & src_ids) for lg in targets}
    notes.append(f"{cs.source}: harmful pairs with {source_lang!r} per target language: "
                 + ", ".join(f"{lg} {n}" for lg, n in pairs.items()))
    return notes


# --------------------------------------------------------------------------------------------- splits


def _natural_key(s: str) -> tuple[int, int, str]:
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


def _split_count(n: int, share: float) -> int:
    if share <= 0 or n == 0:
        return 0
    return min(n - 1, max(1, round(n * share))) if n > 1 else 0


def split_ids(
    ids: Iterable[str], eval_split: float, val_split: float, seed: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """Split ids into (calibration, validation, evaluation): deterministic and disjoint.

    `eval_split` is the share of all ids held out for evaluation (never used for calibration);
    `val_split` the share of the remaining ids kept for validation (layer selection). The order comes
    from a seeded hash of each id, so it does not depend on the input order. With a share > 0, at least
    one id goes to that split and at least one id is left for calibration.
    """
    for name, share in (("eval_split", eval_split), ("val_split", val_split)):
        if not 0.0 <= share < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {share}", param=name)
    unique = sorted(set(ids), key=_natural_key)
    ranked = sorted(unique, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_eval = _split_count(len(ranked), eval_split)
    rest = ranked[n_eval:]
    n_val = _split_count(len(rest), val_split)

    def ordered(xs: list[str]) -> list[str]:
        return sorted(xs, key=_natural_key)

    return ordered(rest[n_val:]), ordered(rest[:n_val]), ordered(ranked[:n_eval])

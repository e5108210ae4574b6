"""Calibration data: formats, validation errors (file, row, field), bundled sets, id splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.engine import data
from worker.engine.config import SUPPORTED_LANGS
from worker.engine.data import CalibrationSet, Prompt
from worker.engine.errors import CalibrationError, UserError

TARGETS = ["zh", "bn"]


def _rows(n_harm: int = 4, n_safe: int = 4, langs: tuple[str, ...] = ("en", "zh", "bn")) -> list[dict]:
    rows = []
    for i in range(n_harm):
        rows += [{"id": f"x{i}", "lang": lg, "prompt": f"harmful {i} in {lg}", "kind": "harmful"}
                 for lg in langs]
    for i in range(n_safe):
        rows += [{"id": f"s{i}", "lang": lg, "prompt": f"harmless {i} in {lg}", "kind": "harmless"}
                 for lg in langs]
    return rows


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _raises(fn, *needles: str) -> CalibrationError:
    with pytest.raises(CalibrationError) as ei:
        fn()
    for n in needles:
        assert n in str(ei.value), f"{n!r} not in {ei.value}"
    return ei.value


# ------------------------------------------------------------------------------------------ formats


def test_jsonl_roundtrip_and_helpers(tmp_path: Path) -> None:
    cs = data.load_calibration(_write_jsonl(tmp_path / "cal.jsonl", _rows()))
    assert cs.source.endswith("cal.jsonl")
    assert cs.languages() == ["en", "zh", "bn"]
    assert cs.languages("harmful") == ["en", "zh", "bn"]
    assert cs.harmful_ids() == ["x0", "x1", "x2", "x3"]
    assert [p.text for p in cs.harmful("bn")][0] == "harmful 0 in bn"
    assert len(cs.harmless("zh")) == 4
    by = cs.by_id("harmful")
    assert set(by) == {"x0", "x1", "x2", "x3"} and set(by["x0"]) == {"en", "zh", "bn"}
    assert by["x0"]["en"].row == 1
    notes = data.validate(cs, "en", TARGETS)
    assert any("zh 4, bn 4" in n for n in notes)


def test_jsonl_skips_blank_lines_and_reports_line_numbers(tmp_path: Path) -> None:
    rows = _rows()
    text = "\n\n".join(json.dumps(r) for r in rows)  # a blank line between rows
    p = tmp_path / "cal.jsonl"
    p.write_text(text, encoding="utf-8")
    cs = data.load_calibration(p)
    assert len(cs) == len(rows)
    assert cs.prompts[1].row == 3


def test_jsonl_int_ids_become_strings() -> None:
    cs = data.parse_rows([{"id": 7, "lang": "EN", "prompt": " hi ", "kind": "Harmful"}])
    assert cs.prompts[0] == Prompt("7", "en", "hi", "harmful")


def test_csv_wide_layout(tmp_path: Path) -> None:
    p = tmp_path / "mj.csv"
    p.write_text(
        'id,source,tags,en,zh,bn,ja\n'
        '1,x,"[\'a\', \'b\']",How do I pick a lock?,怎么撬锁？,কীভাবে তালা খুলব?,鍵\n'
        '2,y,[],"Multi\nline",第二,দ্বিতীয়,二\n'
        '3,z,[],third,第三,তৃতীয়,三\n',
        encoding="utf-8",
    )
    cs = data.load_calibration(p)
    assert cs.languages() == ["en", "zh", "bn"]
    assert all(pr.kind == "harmful" for pr in cs.prompts)
    assert cs.by_id("harmful")["2"]["en"].text == "Multi\nline"
    assert cs.by_id("harmful")["3"]["zh"].row == 5  # row 2 spans lines 3-4
    assert any("'ja' ignored" in n for n in cs.notes)


def test_csv_kind_column(tmp_path: Path) -> None:
    p = tmp_path / "k.csv"
    p.write_text("id,kind,en,zh\n1,,a,甲\n2,harmless,b,乙\n3,harmful,c,丙\n", encoding="utf-8")
    cs = data.load_calibration(p)
    assert [pr.kind for pr in cs.harmful("en")] == ["harmful", "harmful"]
    assert [pr.id for pr in cs.harmless("zh")] == ["2"]


def test_csv_with_bom(tmp_path: Path) -> None:
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufeffid,en,zh\n1,a,甲\n".encode())
    assert data.load_calibration(p).by_id("harmful")["1"]["zh"].text == "甲"


# ------------------------------------------------------------------------------------------ file errors


def test_unknown_extension(tmp_path: Path) -> None:
    p = tmp_path / "cal.txt"
    p.write_text("x")
    _raises(lambda: data.load_calibration(p), "cal.txt", "unsupported file type", ".jsonl", ".csv")


def test_missing_file(tmp_path: Path) -> None:
    _raises(lambda: data.load_calibration(tmp_path / "nope.jsonl"), "nope.jsonl", "not found")


def test_max_size(tmp_path: Path) -> None:
    p = _write_jsonl(tmp_path / "big.jsonl", _rows())
    e = _raises(lambda: data.load_calibration(p, max_bytes=100), "big.jsonl", "limit of 100 bytes")
    assert e.param == "calibration"


def test_encoding_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.jsonl"
    good = json.dumps({"id": "1", "lang": "en", "prompt": "ok", "kind": "harmful"}).encode()
    bad = '{"id": "2", "lang": "it", "prompt": "perché", "kind": "harmful"}'.encode("latin-1")
    p.write_bytes(good + b"\n" + bad)
    _raises(lambda: data.load_calibration(p), "latin1.jsonl", "row 2", "'<encoding>'", "UTF-8")


def test_invalid_json_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_rows()[0]) + "\n{not json\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "bad.jsonl", "row 2", "invalid JSON")


def test_row_not_object(tmp_path: Path) -> None:
    p = _write_jsonl(tmp_path / "arr.jsonl", [_rows()[0], ["a", "b"]])
    _raises(lambda: data.load_calibration(p), "arr.jsonl", "row 2", "JSON object")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    _raises(lambda: data.load_calibration(p), "empty.jsonl", "no prompts")
    c = tmp_path / "empty.csv"
    c.write_text("")
    _raises(lambda: data.load_calibration(c), "empty.csv", "no CSV header")


# ------------------------------------------------------------------------------------------ row errors


@pytest.mark.parametrize("fld", ["id", "lang", "prompt", "kind"])
def test_missing_field(tmp_path: Path, fld: str) -> None:
    rows = _rows()
    del rows[2][fld]
    p = _write_jsonl(tmp_path / "m.jsonl", rows)
    _raises(lambda: data.load_calibration(p), "m.jsonl", "row 3", f"field '{fld}'", "missing")


def test_unknown_language(tmp_path: Path) -> None:
    rows = _rows()
    rows[4]["lang"] = "ja"
    p = _write_jsonl(tmp_path / "l.jsonl", rows)
    _raises(lambda: data.load_calibration(p), "l.jsonl", "row 5", "field 'lang'", "'ja'", "supported:")


def test_bad_kind(tmp_path: Path) -> None:
    rows = _rows()
    rows[1]["kind"] = "toxic"
    p = _write_jsonl(tmp_path / "k.jsonl", rows)
    _raises(lambda: data.load_calibration(p), "k.jsonl", "row 2", "field 'kind'", "'toxic'")


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_empty_prompt(tmp_path: Path, text) -> None:
    rows = _rows()
    rows[6]["prompt"] = text
    p = _write_jsonl(tmp_path / "e.jsonl", rows)
    _raises(lambda: data.load_calibration(p), "e.jsonl", "row 7", "field 'prompt'")


def test_empty_id(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["id"] = "  "
    p = _write_jsonl(tmp_path / "i.jsonl", rows)
    _raises(lambda: data.load_calibration(p), "i.jsonl", "row 1", "field 'id'", "empty")


def test_duplicate_id_lang_kind(tmp_path: Path) -> None:
    rows = _rows()
    rows.append(dict(rows[1]))
    p = _write_jsonl(tmp_path / "d.jsonl", rows)
    n = len(rows)
    _raises(lambda: data.load_calibration(p), "d.jsonl", f"row {n}", "field 'id'", "duplicate",
            "first seen at row 2")


def test_same_id_in_both_kinds_is_fine() -> None:
    rows = _rows()
    rows.append({"id": "x0", "lang": "en", "prompt": "also harmless", "kind": "harmless"})
    data.parse_rows(rows)


def test_inline_rows_errors_name_source_and_position() -> None:
    rows = _rows()
    rows[3]["lang"] = "xx"
    _raises(lambda: data.parse_rows(rows, source="request body"), "request body", "row 4", "field 'lang'")


def test_csv_errors(tmp_path: Path) -> None:
    p = tmp_path / "noid.csv"
    p.write_text("key,en,zh\n1,a,b\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "noid.csv", "row 1", "field 'id'")
    p = tmp_path / "nolang.csv"
    p.write_text("id,source,tags\n1,a,b\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "nolang.csv", "row 1", "no language column")
    p = tmp_path / "empty_cell.csv"
    p.write_text("id,en,bn\n1,a,b\n2,c,\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "empty_cell.csv", "row 3", "field 'bn'", "empty")
    p = tmp_path / "dup.csv"
    p.write_text("id,en,bn\n1,a,b\n1,c,d\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "dup.csv", "row 3", "field 'id'", "duplicate")
    p = tmp_path / "cells.csv"
    p.write_text("id,en,bn\n1,a,b,extra\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "cells.csv", "row 2", "4 cells")
    p = tmp_path / "kind.csv"
    p.write_text("id,kind,en\n1,bad,a\n", encoding="utf-8")
    _raises(lambda: data.load_calibration(p), "kind.csv", "row 2", "field 'kind'")


# ------------------------------------------------------------------------------------------ set rules


def test_missing_source_translation(tmp_path: Path) -> None:
    rows = [r for r in _rows(6) if not (r["id"] == "x2" and r["lang"] == "en")]
    p = _write_jsonl(tmp_path / "t.jsonl", rows)
    cs = data.load_calibration(p)
    row = next(i for i, r in enumerate(rows, 1) if r["id"] == "x2" and r["lang"] == "zh")
    e = _raises(lambda: data.validate(cs, "en", TARGETS), "t.jsonl", f"row {row}", "field 'id'", "'x2'",
                "no 'en' translation", "1 more")
    assert e.param == "calibration"


def test_min_harmful_per_target(tmp_path: Path) -> None:
    drop = {("x0", "bn"), ("x1", "bn")}
    rows = [r for r in _rows(5) if not (r["kind"] == "harmful" and (r["id"], r["lang"]) in drop)]
    cs = data.load_calibration(_write_jsonl(tmp_path / "few.jsonl", rows))
    _raises(lambda: data.validate(cs, "en", TARGETS), "few.jsonl", "field 'lang'", "3 harmful 'bn'",
            "at least 4")
    data.validate(cs, "en", TARGETS, min_harmful=3)


def test_min_harmful_source() -> None:
    cs = data.parse_rows(_rows(2), source="s.jsonl")
    _raises(lambda: data.validate(cs, "en", TARGETS), "s.jsonl", "2 harmful 'en'", "at least 4")


def test_min_harmless(tmp_path: Path) -> None:
    cs = data.parse_rows(_rows(4, 2), source="h.jsonl")
    _raises(lambda: data.validate(cs, "en", TARGETS), "h.jsonl", "field 'kind'", "2 harmless 'en'")
    cs = data.parse_rows(_rows(4, 0), source="h0.jsonl")
    _raises(lambda: data.validate(cs, "en", TARGETS), "h0.jsonl", "0 harmless", "bundled")


def test_target_not_present() -> None:
    cs = data.parse_rows(_rows(), source="p.jsonl")
    e = _raises(lambda: data.validate(cs, "en", ["zh", "sw"]), "p.jsonl", "'sw'", "no harmful prompts")
    assert e.param == "target_langs"


def test_bad_arguments() -> None:
    cs = data.parse_rows(_rows())
    for kwargs, param in [
        ({"source_lang": "xx"}, "source_lang"),
        ({"target_langs": ["zh", "ja"]}, "target_langs"),
        ({"target_langs": ["en", "zh"]}, "target_langs"),
        ({"target_langs": []}, "target_langs"),
    ]:
        with pytest.raises(UserError) as ei:
            data.validate(cs, **kwargs)
        assert ei.value.param == param


def test_validate_rechecks_sets_built_in_code() -> None:
    cs = CalibrationSet([Prompt("1", "en", "a", "harmful"), Prompt("1", "en", "b", "harmful")], "code")
    _raises(lambda: data.validate(cs, "en", ["zh"]), "code", "duplicate")
    cs = CalibrationSet([Prompt("1", "xx", "a", "harmful")], "code")
    _raises(lambda: data.validate(cs, "en", ["zh"]), "code", "field 'lang'")
    cs = CalibrationSet([Prompt("1", "en", " ", "harmful")], "code")
    _raises(lambda: data.validate(cs, "en", ["zh"]), "code", "field 'prompt'")
    cs = CalibrationSet([Prompt("1", "en", "a", "other")], "code")  # type: ignore[arg-type]
    _raises(lambda: data.validate(cs, "en", ["zh"]), "code", "field 'kind'")


def test_unused_languages_noted() -> None:
    cs = data.parse_rows(_rows(langs=("en", "zh", "bn", "sw")))
    notes = data.validate(cs, "en", TARGETS)
    assert any("sw" in n and "not used" in n for n in notes)


# ------------------------------------------------------------------------------------------ bundled sets


def test_bundled_harmless() -> None:
    cs = data.bundled_harmless()
    assert cs.languages() == list(SUPPORTED_LANGS)
    assert all(p.kind == "harmless" for p in cs.prompts)
    for lg in SUPPORTED_LANGS:
        assert len(cs.harmless(lg)) >= 50
    ids = cs.by_id("harmless")
    assert all(set(v) == set(SUPPORTED_LANGS) for v in ids.values())
    for lg in SUPPORTED_LANGS:  # no accidental copy-paste of the English text into another language
        if lg != "en":
            same = [i for i, v in ids.items() if v[lg].text == v["en"].text]
            assert not same, (lg, same)


def test_bundled_dev_harmless_sets_are_new_prompts_in_every_language() -> None:
    """The development-only sets (plain and borderline) hold 40 ids each in all ten languages and share no text
    with the bundled harmless and borderline sets, whose held-out part would otherwise leak into the anchor."""
    known = {p.text.strip().lower() for cs in (data.bundled_harmless(), data.bundled_borderline()) for p in cs.prompts}
    for cs in data.bundled_dev_harmless():
        ids = cs.by_id("harmless")
        assert len(ids) == 40
        assert all(set(v) == set(SUPPORTED_LANGS) for v in ids.values())
        assert not [p.text for p in cs.prompts if p.text.strip().lower() in known]
        for lg in SUPPORTED_LANGS:
            assert len({v[lg].text for v in ids.values()}) == 40, lg  # no prompt twice in one language
            if lg != "en":
                assert not [i for i, v in ids.items() if v[lg].text == v["en"].text], lg


def test_bundled_harmful_demo() -> None:
    cs = data.bundled_demo_harmful()
    assert 30 <= len(cs.harmful_ids()) <= 50
    assert all(p.kind == "harmful" for p in cs.prompts)
    assert all(set(v) == set(SUPPORTED_LANGS) for v in cs.by_id("harmful").values())


def test_demo_calibration_validates() -> None:
    cs = data.demo_calibration()
    notes = data.validate(cs)  # default: en -> all nine others
    assert cs.notes and "bundled demo" in cs.notes[0]
    assert any("jv 36" in n or "jv" in n for n in notes)
    # a fresh copy every time: mutating one does not change the next
    cs.prompts.clear()
    assert len(data.demo_calibration()) > 0


def test_with_bundled_harmless(tmp_path: Path) -> None:
    p = tmp_path / "mj.csv"
    p.write_text("id,en,zh,bn\n" + "".join(f"{i},e{i},z{i},b{i}\n" for i in range(5)), encoding="utf-8")
    cs = data.load_calibration(p)
    with pytest.raises(CalibrationError):
        data.validate(cs, "en", TARGETS)
    full = data.with_bundled_harmless(cs)
    assert any("no harmless prompts" in n and "bundled harmless" in n for n in full.notes)
    data.validate(full, "en", TARGETS)
    assert data.with_bundled_harmless(full) is full  # already has harmless prompts: unchanged


# ------------------------------------------------------------------------------------------ splits


def test_split_ids_deterministic_disjoint() -> None:
    ids = [f"id{i}" for i in range(50)]
    cal, val, ev = data.split_ids(ids, 0.3, 0.2, seed=1)
    assert (cal, val, ev) == data.split_ids(list(reversed(ids)), 0.3, 0.2, seed=1)
    assert not (set(cal) & set(val)) and not (set(cal) & set(ev)) and not (set(val) & set(ev))
    assert set(cal) | set(val) | set(ev) == set(ids)
    assert len(ev) == 15 and len(val) == 7 and len(cal) == 28
    assert data.split_ids(ids, 0.3, 0.2, seed=2) != (cal, val, ev)


def test_split_ids_edges() -> None:
    assert data.split_ids(["a", "b"], 0.0, 0.0) == (["a", "b"], [], [])
    cal, val, ev = data.split_ids(["a", "b", "c"], 0.1, 0.1)
    assert len(ev) == 1 and len(val) == 1 and len(cal) == 1
    assert data.split_ids(["only"], 0.5, 0.5) == (["only"], [], [])
    cal, _, _ = data.split_ids(["10", "9", "1", "2"], 0.0, 0.0)
    assert cal == ["1", "2", "9", "10"]
    with pytest.raises(UserError) as ei:
        data.split_ids(["a"], 1.0, 0.0)
    assert ei.value.param == "eval_split"

"""tests/QUARANTINE.md lists every skip and xfail: a new one that is not written down there fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPPERS = {"skip", "xfail", "importorskip", "skipif", "skip_or_fail"}


def _quarantined() -> set[str]:
    """`path::function` for each function (or `path` for module level) that can skip or xfail."""
    found = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "ci.py":
            continue
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        owner: dict[ast.AST, str] = {}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    owner.setdefault(node, fn.name)
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else node if isinstance(node, ast.Attribute) else None
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in SKIPPERS and (name == "skip_or_fail" or "pytest" in ast.unparse(node)):
                found.add(f"{rel}::{owner[node]}" if node in owner else rel)
    return found


def test_every_skip_and_xfail_is_listed() -> None:
    listed = (ROOT / "tests" / "QUARANTINE.md").read_text()
    found = _quarantined()
    assert len(found) >= 10  # the scan sees the known ones (judges' xfails, service skips)
    assert sorted(q for q in found if f"`{q}`" not in listed) == []

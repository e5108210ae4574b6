"""The engine's one door: `worker.engine` exports what a library user needs, cheaply, and bench/ uses nothing else."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import worker.engine as engine

ROOT = Path(__file__).resolve().parents[2]


def test_every_export_resolves() -> None:
    missing = [name for name in engine.__all__ if getattr(engine, name, None) is None]
    assert not missing


def test_importing_the_package_or_its_config_loads_no_torch() -> None:
    code = ("import sys, worker.engine, worker.engine.config, worker.engine.methods; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_bench_imports_only_the_public_api() -> None:
    wrong = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker"):
                if node.module != "worker.engine":
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import):
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.startswith("worker")]
    assert not wrong, "bench/ must import the engine's public API (from worker.engine import ...):\n" + "\n".join(
        wrong)

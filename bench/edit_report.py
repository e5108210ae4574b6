"""Render an edit run (manifest.json + report.json of `lingua-edit edit --out DIR`) and a variant study
(`bench.variants` JSON, or its log of one JSON row per line) as the Markdown of BENCHMARKS.md.

    python -m bench.edit_report --run runs/final --variants bench/results/variants.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.variants import to_markdown
from worker.engine import run_markdown as report_markdown


def run_markdown(run_dir: Path) -> str:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    return report_markdown(report, manifest)


def load_variant_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)["rows"]
    lines = text.replace("\r", "\n").splitlines()  # progress bars share the log
    return [r for r in (json.loads(ln) for ln in lines if ln.startswith("{")) if "variant" in r]


def merge_variant_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of several runs (same data and screen): one "no edit" row first, then every variant once."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        for r in load_variant_rows(path):
            if r["variant"] not in seen:
                seen.add(r["variant"])
                rows.append(r)
    return sorted(rows, key=lambda r: r["variant"] != "no edit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="output directory of `lingua-edit edit`")
    p.add_argument("--variants", type=Path, nargs="+", help="bench.variants JSON or log files (merged)")
    a = p.parse_args()
    if a.run:
        print(run_markdown(a.run))
    if a.variants:
        from worker.engine import EditConfig

        print(to_markdown(merge_variant_rows(a.variants), EditConfig().target_langs))


if __name__ == "__main__":
    main()

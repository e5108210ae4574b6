"""What an edit did, for people: PNG charts and a self-contained report.html from report.json and
manifest.json. One module for the worker, the CLI (both through artifacts.write_artifacts) and bench/.

Pure: matplotlib (Agg) and Jinja2 only. Tolerant: a field the result does not have yet drops its chart,
column or section; nothing here fails on a missing key.

Re-render a finished run directory: python -m worker.engine.report RUN_DIR
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .charts import write_charts
from .html import render_html

REPORT_HTML = "report.html"


def write_report(out_dir: Path, report: dict[str, Any], manifest: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write charts/*.png and report.html into out_dir; returns {artifact name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = write_charts(report, out_dir)
    html = out_dir / REPORT_HTML
    html.write_text(render_html(report, manifest, charts), encoding="utf-8")
    return {REPORT_HTML: html, **charts}


def render_run_dir(run_dir: Path) -> dict[str, Path]:
    """(Re)render the report of a `lingua-edit edit --out DIR` directory from its JSON files."""
    run_dir = Path(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return write_report(run_dir, report, manifest)

"""python -m worker.engine.report RUN_DIR: (re)write report.html and charts/ of a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import render_run_dir

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m worker.engine.report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="directory with report.json (and manifest.json)")
    for name, path in render_run_dir(p.parse_args().run_dir).items():
        print(f"{name}: {path}")

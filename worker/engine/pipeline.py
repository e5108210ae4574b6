"""edit(config) -> EditResult: load, capture, localize, solve, apply, evaluate, write artifacts.

(Being written; the signature below is the contract the service codes against.)
"""

from __future__ import annotations

from pathlib import Path

from .config import EditConfig
from .models import LoadedModel
from .progress import Reporter
from .result import EditResult

PHASES = ("load", "capture", "localize", "solve", "apply", "evaluate", "save")


def run_edit(
    config: EditConfig,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    loaded: LoadedModel | None = None,
) -> EditResult:
    """Run one edit job end to end and write artifacts atomically into `out_dir`.

    - `reporter.progress(phase, done, total, message)` is called as work advances (phase in PHASES,
      or "warning" with a message); `reporter.should_cancel()` is polled between phases and batches and
      raises EditCancelled when it returns True.
    - `loaded`: a model the caller already holds (the worker's per-process cache). The engine edits it in
      place and reverts the edit bit-for-bit before returning, so the cached copy stays the base model.
    - Errors: UserError subclasses for bad input (model not found, bad calibration, bad hyperparameter),
      anything else is a system error. `out_dir` holds either the complete artifacts or nothing.
    """
    raise NotImplementedError

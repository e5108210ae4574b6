"""How the engine reports progress and learns about cancellation, without knowing who listens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import EditCancelled


class ProgressFn(Protocol):
    def __call__(self, phase: str, done: int, total: int, message: str | None = None) -> None: ...


def _no_progress(phase: str, done: int, total: int, message: str | None = None) -> None:
    return None


@dataclass
class Reporter:
    """Bundles the progress callback and the cancel check; the engine calls `step` between batches."""

    progress: ProgressFn = _no_progress
    should_cancel: Callable[[], bool] | None = None

    def step(self, phase: str, done: int, total: int, message: str | None = None) -> None:
        self.check_cancel()
        self.progress(phase, done, total, message)

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise EditCancelled("the edit was cancelled")

    def warn(self, message: str) -> None:
        self.progress("warning", 0, 0, message)

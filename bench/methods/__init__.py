"""One module per compared method. Each `fit(ctx, ...)` returns a `Fitted`: how to switch the method on and
off on the shared model (so every measure runs the same code for every method), what it chose on the
validation slice, and the size of what it changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _noop() -> None:
    return None


@dataclass
class Fitted:
    name: str  # row label in the tables
    apply: Callable[[], None] = _noop
    revert: Callable[[], None] = _noop
    fit_seconds: float = 0.0
    chosen: dict[str, Any] = field(default_factory=dict)  # hyperparameters picked on the validation slice
    size: dict[str, Any] = field(default_factory=dict)  # neurons, params_changed, file_bytes
    sweep: list[dict[str, Any]] = field(default_factory=list)  # validation scores of every candidate
    same_as: str | None = None  # identical to another row (not re-measured)
    cleanup: Callable[[], None] = _noop  # called once after all measures (e.g. remove LoRA layers)

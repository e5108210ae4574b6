"""(1) No edit."""

from __future__ import annotations

from . import Fitted


def fit() -> Fitted:
    return Fitted(name="no edit", size={"neurons": 0, "params_changed": 0, "file_bytes": 0})

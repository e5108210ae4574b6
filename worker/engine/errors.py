"""Errors the engine raises. The service maps UserError to a 4xx / `user_error` job failure."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UserError(EngineError):
    """The caller's input is wrong (unknown model, bad calibration data, bad hyperparameter)."""

    code = "invalid_request"


class CalibrationError(UserError):
    """A calibration file breaks a rule; the message names the file, row and field."""

    code = "invalid_calibration"


class UnsupportedArchitectureError(UserError):
    code = "unsupported_architecture"


class ModelNotFoundError(UserError):
    code = "model_not_found"


class EditCancelled(EngineError):
    """Raised between phases/batches when the caller's cancel check returns True."""

    code = "cancelled"

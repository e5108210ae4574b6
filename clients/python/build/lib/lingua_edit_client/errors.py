"""Exceptions raised by the clients."""

from __future__ import annotations

import httpx


class LinguaEditError(Exception):
    """Base class of every error this package raises."""


class APIError(LinguaEditError):
    """An error answer from the API: HTTP status plus the envelope's code, message and param."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.status, self.code, self.message, self.param = status, code, message, param


class ChecksumMismatchError(LinguaEditError):
    """A downloaded artifact's sha256 differs from the one the API recorded (its ETag)."""


def raise_for(r: httpx.Response) -> None:
    """APIError for a non-2xx answer (the body must be read)."""
    if r.is_success:
        return
    try:
        err = r.json()["error"]
        raise APIError(r.status_code, str(err["code"]), str(err["message"]), err.get("param"))
    except (ValueError, KeyError, TypeError):
        raise APIError(r.status_code, "http_error", r.text[:500] or r.reason_phrase) from None

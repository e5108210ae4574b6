"""One error envelope for every response: {"error": {"code", "message", "param"}}; no tracebacks leave."""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lingua_edit.api")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorEnvelope(BaseModel):
    """The body of every error answer."""

    error: ErrorBody


# Documented on every /v1 operation (the 422 replaces FastAPI's default validation-error schema).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorEnvelope, "description": "malformed request (a body that is not valid JSON or UTF-8)"},
    401: {"model": ErrorEnvelope, "description": "missing or invalid API key"},
    404: {"model": ErrorEnvelope, "description": "not found (also: another tenant's object)"},
    422: {"model": ErrorEnvelope, "description": "invalid request; `param` names the field"},
    413: {"model": ErrorEnvelope, "description": "request body larger than the server's limit"},
    503: {"model": ErrorEnvelope, "description": "a backing service (database, queue) is unavailable"},
}


def not_found(what: str, param: str | None = None) -> ApiError:
    # The same answer for "missing" and "another tenant's", so ids cannot be probed.
    return ApiError(404, "not_found", f"{what} not found", param)


def envelope(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "param": param}}, status_code=status, headers=headers
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
    507: "insufficient_storage",
}


_UNION_TAG = re.compile(r"^[a-z][a-z-]*\[.*\]$")


def _param_of(loc: tuple) -> str | None:
    # Union members add tags like "list[constrained-int]" or "literal['auto']": not field names.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and not _UNION_TAG.match(str(p))]
    return ".".join(parts) or None


def _allowed_methods(req: Request) -> str:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in req.app.router.routes:
        match, _ = route.matches({**req.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.status, exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _param_of(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid request"))
        if first.get("type") == "extra_forbidden":
            msg = "unknown field"
        message = f"{param}: {msg}" if param else msg
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return envelope(422, "invalid_request", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": _allowed_methods(req)}
        return envelope(exc.status_code, code, message, None, headers)

    @app.exception_handler(OperationalError)
    async def _database_down(req: Request, exc: OperationalError) -> JSONResponse:
        # The database is restarting or unreachable: a retryable 503, and the pool reconnects by itself.
        log.error("database unavailable on %s %s: %s", req.method, req.url.path, str(exc).splitlines()[0])
        return envelope(503, "unavailable", "the database is unavailable; try again later", None,
                        {"Retry-After": "5"})

    @app.exception_handler(OSError)
    async def _os_error(req: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("storage full on %s %s: %s", req.method, req.url.path, exc)
            return envelope(507, "insufficient_storage", "the server has no room to store this; try later")
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return envelope(500, "internal_error", "internal server error", None)

    @app.exception_handler(RecursionError)
    async def _too_deep(_req: Request, _exc: RecursionError) -> JSONResponse:
        return envelope(422, "invalid_request", "the input is nested too deeply")

    @app.exception_handler(Exception)
    async def _unhandled(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return envelope(500, "internal_error", "internal server error", None)

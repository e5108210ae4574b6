"""RequestGuard: the edge checks every request passes before any route sees it (pure ASGI, nothing buffered
but JSON bodies, which are bounded).

- Body size: 413 before reading when Content-Length is over the limit, and as soon as the streamed bytes
  pass it (chunked bodies, multipart): `max_upload_bytes` (+ multipart overhead) for dataset uploads,
  `max_request_bytes` for everything else.
- NUL bytes in the path or query string (PostgreSQL text cannot hold them): 422 naming the parameter.
- `?api_key=`: refused (400): keys travel in the Authorization header only, never in logged URLs.
- JSON bodies: NUL in any string or key, non-finite numbers (NaN, Infinity, 1e400) and nesting deeper than
  MAX_JSON_DEPTH give 422 naming the field, before pydantic (or the database) sees them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import envelope
from core.settings import Settings

MAX_JSON_DEPTH = 32
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_PATHS = ("/v1/datasets",)


class _TooLarge(Exception):
    pass


class _Invalid(ValueError):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not a valid number (numbers must be finite)", None)


def check_json_value(value: Any, path: str = "", depth: int = 0) -> None:
    """Raise _Invalid for NUL characters, non-finite floats or too deep nesting anywhere in `value`."""
    if depth > MAX_JSON_DEPTH:
        raise _Invalid(f"nested deeper than {MAX_JSON_DEPTH} levels", path or None)
    if isinstance(value, str):
        if "\x00" in value:
            raise _Invalid("must not contain NUL characters", path or None)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("must be a finite number", path or None)
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if "\x00" in k:
                raise _Invalid("keys must not contain NUL characters", path or None)
            check_json_value(v, sub, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json_value(v, f"{path}.{i}" if path else str(i), depth + 1)


def _nesting_too_deep(body: bytes) -> bool:
    """A cheap pre-scan so json.loads never recurses deeply (it would raise RecursionError)."""
    depth = 0
    in_str = escaped = False
    for b in body:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def _limit(self, scope: Scope) -> int:
        if scope["path"].rstrip("/") in UPLOAD_PATHS:
            return self.settings.max_upload_bytes + MULTIPART_OVERHEAD
        return self.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rejected = self._check_url(scope)
        if rejected is not None:
            await rejected(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body to bound (GET polling: the hot path)
            return
        limit = self._limit(scope)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await envelope(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                return
            if declared > limit:
                await _too_large(limit)(scope, receive, send)
                return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["method"] in ("POST", "PUT", "PATCH") and content_type == b"application/json":
            await self._json(scope, receive, send, limit)
            return
        await self._streamed(scope, receive, send, limit)

    def _check_url(self, scope: Scope) -> Any:
        if "\x00" in scope["path"]:
            return envelope(422, "invalid_request", "the path must not contain NUL characters", "path")
        query = scope.get("query_string", b"")
        if query:
            try:
                pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
            except (UnicodeDecodeError, ValueError):
                return envelope(400, "bad_request", "invalid query string")
            for k, v in pairs:
                if k.lower() == "api_key":
                    return envelope(
                        400,
                        "bad_request",
                        "send the API key in the Authorization header (Bearer), never in the URL",
                        "api_key",
                    )
                if "\x00" in k or "\x00" in v:
                    return envelope(422, "invalid_request", f"{k.strip(chr(0))}: must not contain NUL characters",
                                    k.replace("\x00", "") or None)
        return None

    async def _json(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Read the (bounded) body, check it, and replay it to the app."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(limit)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = _check_json_body(body)
        if problem is not None:
            await envelope(422, "invalid_request", problem.message if not problem.param
                           else f"{problem.param}: {problem.message}", problem.param)(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        size = 0
        exceeded = False
        started = False

        async def counted() -> Message:
            nonlocal size, exceeded
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app turned the aborted read into its own error: answer 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _too_large(limit)(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except _TooLarge:
            if not started:
                await _too_large(limit)(scope, receive, send)


def _check_json_body(body: bytes) -> _Invalid | None:
    if not body.strip():
        return None
    if _nesting_too_deep(body):
        return _Invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", None)
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except _Invalid as exc:
        return exc
    except ValueError:
        return None  # not JSON: FastAPI answers with its own 422
    try:
        check_json_value(value)
    except _Invalid as exc:
        return exc
    return None


def _too_large(limit: int) -> Any:
    return envelope(413, "payload_too_large", f"request body larger than {limit} bytes")


_SECRET_QUERY = re.compile(r"(?i)((?:^|[?&])(?:api_key|access_token|token|key)=)[^&\s]*")


class ScrubSecrets(logging.Filter):
    """Access-log filter: a key sent in a URL anyway (and refused) is not written to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) and "=" in a else a
                for a in record.args
            )
        return True


def install_log_scrubber() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ScrubSecrets) for f in logger.filters):
        logger.addFilter(ScrubSecrets())

"""Logging setup: plain text or one JSON object per line (`--log-format json`), with the job id on every line
logged while a job is handled (a context variable set by the worker and by the API for /v1/edits/{id}...)."""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

job_id_var: ContextVar[str | None] = ContextVar("lingua_edit_job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_suffix)s: %(message)s"
_JOB_PATH = re.compile(r"^/v1/edits/(edit_[A-Za-z0-9]+)")


class JobIdFilter(logging.Filter):
    """Adds `job_id` (None outside a job) and `job_suffix` (" [job]" or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        record.job_id = job_id
        record.job_suffix = f" [{job_id}]" if job_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),  # noqa: UP017
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "process": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Root handler on stderr in the chosen format; replaces handlers set up earlier."""
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    logging.captureWarnings(fmt == "json")  # Python warnings become log records (JSON lines) too


class JobIdMiddleware:
    """ASGI middleware: requests under /v1/edits/{id} log with that job id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        m = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if m is None:
            await self.app(scope, receive, send)
            return
        token = job_id_var.set(m.group(1))
        try:
            await self.app(scope, receive, send)
        finally:
            job_id_var.reset(token)

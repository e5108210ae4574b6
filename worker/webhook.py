"""Webhook POST on a job's terminal state, signed with HMAC-SHA256 when a secret is configured."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlparse

import httpx

log = logging.getLogger("lingua_edit.webhook")

SIGNATURE_HEADER = "X-Lingua-Edit-Signature"
TIMESTAMP_HEADER = "X-Lingua-Edit-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """hex HMAC-SHA256 over "<timestamp>.<body>" (the timestamp lets receivers reject replays)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def send(url: str, event: str, data: dict[str, Any], secret: str | None, timeout: float) -> bool:
    body = json.dumps({"type": event, "data": data}, default=str).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Lingua-Edit-Event": event, TIMESTAMP_HEADER: ts}
    if secret:
        headers[SIGNATURE_HEADER] = "sha256=" + sign(secret, ts, body)
    host = urlparse(url).netloc  # never log the full URL: its query may carry a token
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=timeout)
        if r.status_code >= 300:
            log.warning("webhook to %s answered %s", host, r.status_code)
            return False
        return True
    except httpx.HTTPError as exc:
        log.warning("webhook to %s failed: %s", host, type(exc).__name__)
        return False


def notify(ctx: Any, job_id: str) -> None:
    """POST the job object to its webhook_url, if any; never raises."""
    from app.db.models import EditJob
    from app.edits.service import to_out

    try:
        with ctx.sessions() as s:
            job = s.get(EditJob, job_id)
            if job is None or not job.webhook_url:
                return
            url, data = job.webhook_url, to_out(job).model_dump(mode="json")
        send(url, f"edit.{data['status']}", data, ctx.settings.webhook_secret, ctx.settings.webhook_timeout_s)
    except Exception:
        log.exception("webhook for %s failed", job_id)

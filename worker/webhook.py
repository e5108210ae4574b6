"""Webhook POST on a job's terminal state, signed with HMAC-SHA256 when a secret is configured.

The URL is checked again here (app.netguard): its host is resolved, every address must be public unless
`webhook_allow_private` is set, and the POST goes to the checked address (Host header and TLS SNI keep the
name), so a DNS answer that changed since submission cannot point the worker at an internal service.
Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

import httpx

from app.netguard import Target, UnsafeURLError, check_webhook_url

log = logging.getLogger("lingua_edit.webhook")

SIGNATURE_HEADER = "X-Lingua-Edit-Signature"
TIMESTAMP_HEADER = "X-Lingua-Edit-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """hex HMAC-SHA256 over "<timestamp>.<body>" (the timestamp lets receivers reject replays)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _pinned(url: str, target: Target) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL rewritten to the checked address, plus the Host header and request extensions."""
    parts = urlsplit(url)
    ip = str(target.address)
    netloc = f"[{ip}]" if ":" in ip else ip
    default = 443 if target.scheme == "https" else 80
    if parts.port is not None:
        netloc += f":{parts.port}"
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default:
        host_header += f":{target.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return pinned, {"Host": host_header}, extensions


def send(
    url: str,
    event: str,
    data: dict[str, Any],
    secret: str | None,
    timeout: float,
    allow_private: bool = False,
) -> bool:
    host = urlparse(url).netloc.rsplit("@", 1)[-1]  # never log the full URL: its query may carry a token
    try:
        target = check_webhook_url(url, allow_private)
    except UnsafeURLError as exc:
        log.warning("webhook to %s not sent: %s", host, exc)
        return False
    body = json.dumps({"type": event, "data": data}, default=str).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Lingua-Edit-Event": event, TIMESTAMP_HEADER: ts}
    if secret:
        headers[SIGNATURE_HEADER] = "sha256=" + sign(secret, ts, body)
    pinned, extra, extensions = _pinned(url, target)
    headers.update(extra)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            r = client.post(pinned, content=body, headers=headers, extensions=extensions)
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
        send(
            url,
            f"edit.{data['status']}",
            data,
            ctx.settings.webhook_secret,
            ctx.settings.webhook_timeout_s,
            allow_private=ctx.settings.webhook_allow_private,
        )
    except Exception:
        log.exception("webhook for %s failed", job_id)

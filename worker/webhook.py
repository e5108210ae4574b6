"""Standard Webhooks delivery (https://www.standardwebhooks.com), on its own Celery queue.

`notify(ctx, job_id, event)` (core.webhooks) builds the payload once and queues `deliver_webhook` on
the webhooks queue (never the GPU queue: a slow receiver cannot hold a GPU worker).
Each attempt is signed with the tenant's `whsec_`
secret by the `standardwebhooks` package (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`
over `id.timestamp.body`; the same `webhook-id` on every retry), bounded by a whole-request deadline
(connect, headers and body together: a receiver that trickles bytes is cut off) and a response-size cap,
recorded as a job event, and retried with exponential backoff for `webhook_retry_for_s`.

The URL is checked again at each attempt (core.netguard): its host is resolved, every address must be public
unless the operator allow-lists it, and the POST goes to the checked address (Host header and TLS SNI keep
the name), so a DNS answer that changed since submission cannot point the worker at an internal service.
Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

import httpx
from celery import shared_task
from standardwebhooks import Webhook

from core.db.models import EditJob
from core.jobs import repository as repo
from core.logs import job_id_var
from core.netguard import Target, UnsafeURLError, check_webhook_url
from core.queue import WEBHOOK_TASK_NAME
from core.webhook_secrets import signing_secrets
from worker.runtime import context

__all__ = ["Delivery", "deliver", "deliver_webhook", "send", "signature_headers"]

log = logging.getLogger("lingua_edit.webhook")

FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0


@dataclass
class Delivery:
    ok: bool
    status: int | None  # the receiver's HTTP status, if it answered
    error: str | None  # why the attempt failed (never the URL: its query may carry a token)
    seconds: float


class ResponseTooLargeError(Exception):
    pass


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


def signature_headers(msg_id: str, body: str, secrets: list[str], when: datetime) -> dict[str, str]:
    """webhook-id, webhook-timestamp and (with a secret) webhook-signature: one `v1,` signature per secret,
    space-separated (during a rotation both the new and the previous secret sign)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp()))}
    if secrets:
        headers["webhook-signature"] = " ".join(Webhook(s).sign(msg_id, when, body) for s in secrets)
    return headers


async def _post(
    url: str, body: bytes, headers: dict[str, str], extensions: dict[str, Any], max_bytes: int, timeout: float
) -> int:
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
        client.stream("POST", url, content=body, headers=headers, extensions=extensions) as r,
    ):
        read = 0
        async for chunk in r.aiter_raw():
            read += len(chunk)
            if read > max_bytes:
                raise ResponseTooLargeError(f"response larger than {max_bytes} bytes")
        return r.status_code


def send(
    url: str,
    msg_id: str,
    body: str,
    secrets: list[str],
    timeout: float,
    max_response_bytes: int = 64 * 1024,
    allowlist: list[str] | tuple[str, ...] = (),
) -> Delivery:
    """One signed POST, all of it (DNS, connect, headers, body) within `timeout` seconds; never raises."""
    started = time.monotonic()
    host = urlparse(url).netloc.rsplit("@", 1)[-1]  # never log the full URL: its query may carry a token

    def done(ok: bool, status: int | None, error: str | None) -> Delivery:
        if error:
            log.warning("webhook %s to %s failed: %s", msg_id, host, error)
        return Delivery(ok, status, error, round(time.monotonic() - started, 3))

    try:
        target = check_webhook_url(url, allowlist)
    except UnsafeURLError as exc:
        return done(False, None, f"refused: {exc}")
    headers = {"Content-Type": "application/json", "User-Agent": "lingua-edit-webhooks/1"}
    headers.update(signature_headers(msg_id, body, secrets, datetime.now(timezone.utc)))  # noqa: UP017
    pinned, extra, extensions = _pinned(url, target)
    headers.update(extra)
    remaining = max(0.1, timeout - (time.monotonic() - started))
    try:
        status = asyncio.run(
            asyncio.wait_for(
                _post(pinned, body.encode(), headers, extensions, max_response_bytes, remaining), remaining
            )
        )
    except (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException):
        return done(False, None, f"no complete answer within {timeout:g} s")
    except ResponseTooLargeError as exc:
        return done(False, None, str(exc))
    except httpx.HTTPError as exc:
        return done(False, None, type(exc).__name__)
    if not 200 <= status < 300:
        return done(False, status, f"answered {status}")
    return done(True, status, None)


def backoff_s(attempt: int) -> float:
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempt - 1))


def deliver(
    ctx: Any, job_id: str, msg_id: str, event: str, body: str, first_at: float, attempt: int
) -> Delivery | None:
    """One attempt: sign with the tenant's secrets, POST, record a `webhook` job event, schedule a retry."""
    settings = ctx.settings
    with ctx.sessions() as s:
        job = s.get(EditJob, job_id)
        if job is None or not job.webhook_url:
            return None  # deleted meanwhile
        url = job.webhook_url
        secrets = signing_secrets(s, job.tenant, settings.webhook_secret_grace_s, settings.webhook_secret)
    result = send(
        url, msg_id, body, secrets, settings.webhook_timeout_s, settings.webhook_max_response_bytes,
        settings.webhook_private_allowlist,
    )
    delay = backoff_s(attempt)
    retry = not result.ok and not (result.error or "").startswith("refused") and (
        time.time() + delay - first_at <= settings.webhook_retry_for_s
    )
    data = {
        "event": event, "webhook_id": msg_id, "attempt": attempt, "ok": result.ok, "status": result.status,
        "error": result.error, "seconds": result.seconds, "retry_in_s": delay if retry else None,
    }
    if result.ok:
        message = f"webhook {event} delivered (attempt {attempt}, HTTP {result.status})"
    else:
        message = f"webhook {event} attempt {attempt} failed: {result.error}" + (
            f"; retrying in {delay:g} s" if retry else "; giving up"
        )
    with ctx.sessions() as s:
        if s.get(EditJob, job_id) is not None:
            repo.add_event(s, job_id, "webhook", message, data, level="info" if result.ok else "warning")
            s.commit()
    if retry:
        ctx.celery.send_task(
            WEBHOOK_TASK_NAME,
            args=[job_id, msg_id, event, body, first_at, attempt + 1],
            queue=settings.webhook_queue,
            countdown=delay,
        )
    return result


@shared_task(name=WEBHOOK_TASK_NAME, ignore_result=True, acks_late=True)
def deliver_webhook(job_id: str, msg_id: str, event: str, body: str, first_at: float, attempt: int) -> None:
    token = job_id_var.set(job_id)
    try:
        deliver(context(), job_id, msg_id, event, body, first_at, attempt)
    finally:
        job_id_var.reset(token)

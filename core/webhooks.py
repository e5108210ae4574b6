"""Queue a job's Standard Webhooks event on the webhooks queue (delivered by worker.webhook.deliver_webhook)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from core.db.models import EditJob
from core.jobs.view import to_out
from core.queue import WEBHOOK_TASK_NAME

log = logging.getLogger("lingua_edit.webhook")

EVENTS = ("edit.running", "edit.succeeded", "edit.failed", "edit.cancelled")


def build_payload(event: str, data: dict[str, Any], when: datetime) -> str:
    return json.dumps({"type": event, "timestamp": when.isoformat(), "data": data}, default=str)


def notify(ctx: Any, job_id: str, event: str | None = None) -> None:
    """Queue the job's webhook (if it has one) for `event` (default: edit.<status>); never raises.

    The payload is built once here, so every retry of one delivery sends the same body and `webhook-id`."""
    try:
        with ctx.sessions() as s:
            job = s.get(EditJob, job_id)
            if job is None or not job.webhook_url:
                return
            data = to_out(job).model_dump(mode="json")
        event = event or f"edit.{data['status']}"
        if event not in EVENTS:
            return
        when = datetime.now(timezone.utc)  # noqa: UP017 (3.10 has no datetime.UTC)
        msg_id = f"msg_{uuid.uuid4().hex}"
        ctx.celery.send_task(
            WEBHOOK_TASK_NAME,
            args=[job_id, msg_id, event, build_payload(event, data, when), time.time(), 1],
            queue=ctx.settings.webhook_queue,
        )
    except Exception:
        log.exception("could not queue the %s webhook for %s", event, job_id)

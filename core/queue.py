"""The task queue as both sides see it: one Celery configuration (a `gpu` queue, late acks, one job at a
time, a long visibility timeout) and the task names. The API sends tasks by name (`send_task`); only the
worker (worker.celery_app) registers the task functions.

Job state lives in the database row, never in a Celery result backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from core.broker import broker_url
from core.settings import Settings

TASK_NAME = "lingua_edit.run_edit"
WEBHOOK_TASK_NAME = "lingua_edit.deliver_webhook"  # on settings.webhook_queue, never the GPU queue


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """`include`: task modules the worker imports (the API passes none: it only sends)."""
    app = Celery("lingua_edit", broker=broker_url(settings), include=list(include))
    app.conf.update(
        task_default_queue=settings.queue,
        task_routes={
            TASK_NAME: {"queue": settings.queue},
            WEBHOOK_TASK_NAME: {"queue": settings.webhook_queue},
        },
        task_acks_late=True,  # a job is acknowledged only once it has finished...
        task_reject_on_worker_lost=True,  # ...and goes back to the queue if its process dies
        worker_prefetch_multiplier=1,
        worker_concurrency=1,  # one job per GPU process
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def dispatch(ctx: Any, job_id: str) -> None:
    """Send the job's task. Idempotent on the row: the worker claims `queued` with a compare-and-set, so a
    second message for the same job (a re-dispatch, a redelivery) does nothing."""
    ctx.celery.send_task(TASK_NAME, args=[job_id], queue=ctx.settings.queue)

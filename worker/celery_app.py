"""Celery configuration: one `gpu` queue, late acks, one job at a time, a long visibility timeout.

Job state lives in the database row, never in a Celery result backend.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.broker import broker_url
from app.settings import Settings, get_settings

TASK_NAME = "lingua_edit.run_edit"
WEBHOOK_TASK_NAME = "lingua_edit.deliver_webhook"  # on settings.webhook_queue, never the GPU queue


def make_celery(settings: Settings, include_tasks: bool = False) -> Celery:
    tasks = ["worker.tasks", "worker.webhook", "worker.liveness"] if include_tasks else []
    app = Celery("lingua_edit", broker=broker_url(settings), include=tasks)
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


def __getattr__(name: str) -> Any:
    # `celery -A worker.celery_app worker` asks for `app`; built on demand so importing
    # make_celery (the API does) needs no broker configured.
    if name in ("app", "celery"):
        global _app
        if _app is None:
            _app = make_celery(get_settings(), include_tasks=True)
        return _app
    raise AttributeError(name)


_app: Celery | None = None

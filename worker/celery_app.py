"""The worker's Celery app: core.queue's configuration plus the task modules (`celery -A worker.celery_app`)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.queue import make_celery
from core.settings import Settings, get_settings

TASK_MODULES = ("worker.tasks", "worker.webhook", "worker.liveness")


def make_worker_celery(settings: Settings) -> Celery:
    return make_celery(settings, include=TASK_MODULES)


def __getattr__(name: str) -> Any:
    # `celery -A worker.celery_app worker` asks for `app`; built on demand so importing this module
    # needs no broker configured.
    if name in ("app", "celery"):
        global _app
        if _app is None:
            _app = make_worker_celery(get_settings())
        return _app
    raise AttributeError(name)


_app: Celery | None = None

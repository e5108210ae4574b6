"""The worker says it is alive: a Redis key with a TTL, refreshed by a thread in the Celery main process.

/readyz answers 503 when no such key exists (no worker, or every worker died); Celery's own pidbox ping
would need a broadcast round-trip and a reply timeout on every probe.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from app.broker import redis_client, worker_key
from app.settings import Settings, get_settings

log = logging.getLogger("lingua_edit.worker")

_stop = threading.Event()


def _beat() -> None:
    settings = get_settings()
    key = worker_key(settings, f"{socket.gethostname()}:{os.getpid()}")
    ttl = max(1, int(settings.worker_heartbeat_ttl_s))
    client = redis_client(settings.broker_url or "")
    while True:
        try:
            client.set(key, "1", ex=ttl)
        except Exception as exc:  # broker restarting: keep trying, /readyz reports it meanwhile
            log.warning("worker heartbeat failed: %s", exc)
        if _stop.wait(max(0.5, ttl / 3)):
            break
    try:
        client.delete(key)
    except Exception:
        pass


@functools.lru_cache(maxsize=4)
def _client(url: str) -> Any:
    return redis_client(url)


def _job_key(settings: Settings, job_id: str) -> str:
    return f"lingua-edit:{settings.queue}:job-alive:{job_id}"


def mark_job_alive(settings: Settings, job_id: str) -> None:
    """The job's worker is alive, said in Redis beside the database heartbeat: when the database cannot be
    written (disk full) the reaper must not re-queue a job whose worker is still trying to record its end.
    Lives for stale_after_s, so a dead worker's job is still reaped as before."""
    try:
        _client(settings.broker_url or "").set(_job_key(settings, job_id), "1", ex=max(1, int(settings.stale_after_s)))
    except Exception as exc:  # broker down: the database heartbeat alone decides, as before
        log.debug("job liveness for %s not written: %s", job_id, exc)


def job_alive(settings: Settings, job_id: str) -> bool:
    try:
        return bool(_client(settings.broker_url or "").exists(_job_key(settings, job_id)))
    except Exception:
        return False


@worker_ready.connect
def _start(**_kw: Any) -> None:
    from app.scratch import clean_orphans

    clean_orphans(get_settings().data_dir / "tmp")
    threading.Thread(target=_beat, daemon=True, name="lingua-edit-liveness").start()


@worker_shutdown.connect
def _shutdown(**_kw: Any) -> None:
    _stop.set()

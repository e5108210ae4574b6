"""The worker says it is alive: a Redis key with a TTL, refreshed by a thread in the Celery main process.

/readyz answers 503 when no such key exists (no worker, or every worker died); Celery's own pidbox ping
would need a broadcast round-trip and a reply timeout on every probe.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from core.broker import redis_client, worker_key
from core.scratch import clean_orphans
from core.settings import get_settings

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


@worker_ready.connect
def _start(**_kw: Any) -> None:
    clean_orphans(get_settings().data_dir / "tmp")
    threading.Thread(target=_beat, daemon=True, name="lingua-edit-liveness").start()


@worker_shutdown.connect
def _shutdown(**_kw: Any) -> None:
    _stop.set()

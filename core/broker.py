"""Broker URLs and the small Redis checks the API needs (readiness, queue depth)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis

from core.settings import Settings

log = logging.getLogger("lingua_edit.broker")


class BrokerNotConfiguredError(RuntimeError):
    pass


def broker_url(settings: Settings) -> str:
    if not settings.broker_url:
        raise BrokerNotConfiguredError(
            "no broker configured: set LINGUA_EDIT_BROKER_URL (redis://...) or use `lingua-edit serve`, "
            "which starts an embedded Redis"
        )
    return settings.broker_url


def redis_client(url: str) -> redis.Redis:
    # Celery spells unix sockets redis+socket:///path; redis-py spells them unix:///path.
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://") :]
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def ping(settings: Settings) -> bool:
    try:
        return bool(redis_client(broker_url(settings)).ping())
    except (redis.RedisError, BrokerNotConfiguredError, OSError):
        return False


def queue_depth(settings: Settings) -> int | None:
    try:
        return int(redis_client(broker_url(settings)).llen(settings.queue))
    except (redis.RedisError, BrokerNotConfiguredError, OSError):
        return None


# kombu's Redis transport keeps priorities 3/6/9 in sibling lists named queue + "\x06\x16" + priority.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def pending_task_payloads(settings: Settings) -> list[bytes] | None:
    """Raw task messages waiting in the queue or delivered but not yet acknowledged (kombu's `unacked`
    hash); None when the broker cannot be read. Task messages carry the job id in `argsrepr`."""
    try:
        client = redis_client(broker_url(settings))
        payloads: list[bytes] = []
        for suffix in _PRIORITY_SUFFIXES:
            payloads += client.lrange(settings.queue + suffix, 0, -1)
        payloads += list(client.hvals("unacked"))
        return payloads
    except (redis.RedisError, BrokerNotConfiguredError, OSError):
        return None


def worker_key(settings: Settings, worker: str) -> str:
    return f"lingua-edit:{settings.queue}:worker:{worker}"


def live_workers(settings: Settings) -> list[str] | None:
    """Workers that announced themselves within worker_heartbeat_ttl_s (see worker.liveness)."""
    try:
        client = redis_client(broker_url(settings))
        prefix = worker_key(settings, "")
        return [k.decode()[len(prefix) :] for k in client.scan_iter(match=prefix + "*", count=100)]
    except (redis.RedisError, BrokerNotConfiguredError, OSError):
        return None


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

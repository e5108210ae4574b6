"""Broker URLs and the small Redis checks the API needs (readiness, queue depth)."""

from __future__ import annotations

import redis

from app.settings import Settings


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

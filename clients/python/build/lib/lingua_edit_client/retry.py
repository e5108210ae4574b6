"""httpx transports that retry what is safe to retry: connection failures, 429 and 503 (honouring
`Retry-After`), with exponential backoff and jitter. Other 4xx and 5xx answers are returned at once.

Requests are re-sent unchanged; the clients give every job submission an `Idempotency-Key`, so a retried
POST cannot create a second job.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all (1 = no retries)
    backoff_s: float = 0.5  # first wait; doubles each time
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0  # a longer Retry-After is not waited for: the answer is returned

    def wait_s(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before try `attempt + 1`, or None to stop."""
        if attempt >= self.attempts:
            return None
        if response is not None:
            after = retry_after_s(response)
            if after is not None:
                return after if after <= self.max_retry_after_s else None
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class RetryTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport | None = None, policy: RetryPolicy | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.policy = policy or RetryPolicy()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                wait = self.policy.wait_s(attempt, None)
                if wait is None:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                wait = self.policy.wait_s(attempt, response)
                if wait is None:
                    return response
                response.close()
            time.sleep(wait)

    def close(self) -> None:
        self.inner.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, policy: RetryPolicy | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.policy = policy or RetryPolicy()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                wait = self.policy.wait_s(attempt, None)
                if wait is None:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                wait = self.policy.wait_s(attempt, response)
                if wait is None:
                    return response
                await response.aclose()
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self.inner.aclose()

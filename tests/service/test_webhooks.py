"""Standard Webhooks delivery on its own queue and worker: per-tenant secrets (create, rotate, both signatures
during the grace period), verification with the `standardwebhooks` library, one job event per attempt, retries
with backoff for a bounded time, and a whole-request deadline and response cap that a trickling or flooding
receiver cannot get around."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.service.conftest import Stack, WorkerProcess, fast_job, make_stack
from tests.service.webhook_server import WebhookSink
from worker.webhook import send

pytestmark = pytest.mark.service


class SlowReceiver:
    """A raw TCP receiver that reads the request, then answers one byte every `interval` seconds
    (a valid but endless-looking HTTP response), or floods `flood` bytes of body at once."""

    def __init__(self, interval: float = 1.0, flood: int = 0) -> None:
        self.interval, self.flood = interval, flood
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.requests = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests += 1
                if self.flood:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.flood + b"x" * self.flood)
                    return
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = json.dumps({"type": "edit.succeeded", "data": {"id": "edit_x"}})


def test_trickling_receiver_is_cut_at_the_deadline() -> None:
    slow = SlowReceiver(interval=1.0)  # the whole answer would take about 40 s
    try:
        started = time.monotonic()
        result = send(slow.url, "msg_t", BODY, [SECRET], timeout=2, allowlist=["127.0.0.1/32"])
        elapsed = time.monotonic() - started
        assert not result.ok and result.error == "no complete answer within 2 s"
        assert elapsed < 6, elapsed  # the deadline covers the request, not each read
        assert slow.requests == 1
    finally:
        slow.close()


def test_oversized_answer_is_cut_at_the_cap() -> None:
    flood = SlowReceiver(flood=2_000_000)
    try:
        result = send(flood.url, "msg_f", BODY, [SECRET], timeout=5, max_response_bytes=1024,
                      allowlist=["127.0.0.1/32"])
        assert not result.ok and result.error == "response larger than 1024 bytes"
    finally:
        flood.close()


@pytest.fixture(scope="module")
def hook_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, redis_url: str, tiny_model: Path
) -> Iterator[tuple[Stack, WorkerProcess]]:
    """Its own queues, no GPU worker (jobs stay queued; cancelling one fires edit.cancelled at once), and
    one webhook worker with a single delivery slot and retries for 8 s (attempts at 0 s and 5 s)."""
    stack = make_stack(
        tmp_path_factory.mktemp("hooks"),
        pg_database,
        redis_url,
        tiny_model,
        tenants=(f"hooks-{secrets.token_hex(3)}", f"hooks-{secrets.token_hex(3)}"),
        LINGUA_EDIT_QUEUE=f"gpu-hooks-{secrets.token_hex(4)}",
        LINGUA_EDIT_WEBHOOK_QUEUE=f"webhooks-hooks-{secrets.token_hex(4)}",
    )
    env = {**stack.env, "LINGUA_EDIT_WEBHOOK_RETRY_FOR_S": "8", "LINGUA_EDIT_WEBHOOK_TIMEOUT_S": "2"}
    worker = WorkerProcess(env, stack.tmp / "webhooks.log", ("--webhooks", "--concurrency", "1"))
    worker.wait_ready()
    yield stack, worker
    worker.stop()
    stack.ctx.engine.dispose()


def _cancel_queued(stack: Stack, url: str) -> str:
    job = stack.submit(fast_job(webhook_url=url))
    r = stack.client.post(f"/v1/edits/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    return job["id"]


def _webhook_events(stack: Stack, job_id: str) -> list[dict]:
    events = stack.client.get(f"/v1/edits/{job_id}/events", params={"limit": 100}).json()["data"]
    return [e for e in events if e["type"] == "webhook"]


def _wait(pred, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise TimeoutError


def test_tenant_secret_create_rotate_and_verify(hook_stack: tuple[Stack, WorkerProcess]) -> None:
    stack, worker = hook_stack
    assert stack.client.get("/v1/webhook-secret").json()["exists"] is False
    created = stack.client.post("/v1/webhook-secret")
    assert created.status_code == 201 and created.json()["secret"].startswith("whsec_")
    first = created.json()["secret"]
    info = stack.client.get("/v1/webhook-secret").json()
    assert info["exists"] is True and "secret" not in info  # shown once, never again
    assert stack.other.get("/v1/webhook-secret").json()["exists"] is False  # per tenant

    sink = WebhookSink()
    try:
        job_id = _cancel_queued(stack, sink.url)
        headers, body = _wait(lambda: sink.received and sink.received[0], 20)
        h = {k.lower(): v for k, v in headers.items()}
        payload = Webhook(first).verify(body, h)
        assert payload["type"] == "edit.cancelled" and payload["data"]["id"] == job_id
        assert h["webhook-id"].startswith("msg_") and abs(int(h["webhook-timestamp"]) - time.time()) < 60
        with pytest.raises(Exception):  # noqa: B017 (the operator's fallback secret is not acme's)
            Webhook(SECRET).verify(body, h)
        ok = _wait(lambda: [e for e in _webhook_events(stack, job_id) if e["data"]["ok"]], 10)
        assert ok[0]["data"]["attempt"] == 1 and ok[0]["data"]["webhook_id"] == h["webhook-id"]

        # rotation: during the grace period both the new and the previous secret sign
        second = stack.client.post("/v1/webhook-secret").json()["secret"]
        assert second != first
        sink.received.clear()
        _cancel_queued(stack, sink.url)
        headers, body = _wait(lambda: sink.received and sink.received[0], 20)
        h = {k.lower(): v for k, v in headers.items()}
        assert len(h["webhook-signature"].split(" ")) == 2
        assert Webhook(second).verify(body, h)["type"] == "edit.cancelled"
        assert Webhook(first).verify(body, h)["type"] == "edit.cancelled"
    finally:
        sink.close()
    assert first not in worker.log.read_text() and second not in worker.log.read_text()


def test_slow_receiver_does_not_hold_the_delivery_worker(hook_stack: tuple[Stack, WorkerProcess]) -> None:
    stack, _ = hook_stack
    slow, sink = SlowReceiver(interval=3.0), WebhookSink()
    try:
        slow_job_id = _cancel_queued(stack, slow.url)
        t0 = time.monotonic()
        fast_job_id = _cancel_queued(stack, sink.url)
        # one delivery slot: the second webhook waits for the first attempt, cut at the 2 s deadline
        _wait(lambda: sink.received, 15)
        assert time.monotonic() - t0 < 10
        assert json.loads(sink.received[0][1])["data"]["id"] == fast_job_id

        # the slow receiver: attempt 1 at the deadline, retried after 5 s with the same id, then given up
        attempts = _wait(lambda: (ev := _webhook_events(stack, slow_job_id)) and len(ev) >= 2 and ev, 30)
        first, second = attempts[0]["data"], attempts[1]["data"]
        assert (first["attempt"], first["ok"], first["retry_in_s"]) == (1, False, 5)
        assert first["error"] == "no complete answer within 2 s" and first["seconds"] < 3
        assert second["attempt"] == 2 and second["webhook_id"] == first["webhook_id"]
        assert second["retry_in_s"] is None and "giving up" in attempts[1]["message"]
        assert slow.requests == 2
    finally:
        slow.close()
        sink.close()

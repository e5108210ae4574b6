"""lingua_edit_client's retries against a real local HTTP server: connection failures, 429 and 503 are retried
(honouring Retry-After), other 4xx/5xx are not; unknown fields and statuses parse."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from lingua_edit_client import APIError, Client, Edit, RetryPolicy

JOB = {"id": "edit_1", "status": "queued", "model": "tiny", "progress": {"phase": None, "done": 0, "total": 0}}


class Script:
    """Answers GET /v1/edits/edit_1 with the next (status, headers) in the script, then 200 + JOB."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.hits: list[float] = []
        self.idempotency_keys: list[str | None] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            script.hits.append(time.monotonic())
            script.idempotency_keys.append(self.headers.get("Idempotency-Key"))
            status, headers = script.answers.pop(0) if script.answers else (200, {})
            body = json.dumps(JOB if status < 300 else {"error": {"code": "x", "message": "m", "param": None}})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def do_GET(self) -> None:  # noqa: N802
            self._answer()

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer()

        def log_message(self, *args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()


FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


def test_503_and_429_are_retried_honouring_retry_after(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "1"}), (429, {"Retry-After": "0"})]
    with Client(url, "k", retry=FAST) as c:
        job = c.get_edit("edit_1")
    assert job.id == "edit_1" and len(script.hits) == 3
    assert script.hits[1] - script.hits[0] >= 0.9  # waited the Retry-After second


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 500])
def test_other_errors_are_not_retried(server: tuple[str, Script], status: int) -> None:
    url, script = server
    script.answers = [(status, {"Retry-After": "0"})]
    with Client(url, "k", retry=FAST) as c, pytest.raises(APIError) as e:
        c.get_edit("edit_1")
    assert e.value.status == status and len(script.hits) == 1


def test_gives_up_after_the_attempts(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {})] * 10
    with Client(url, "k", retry=FAST) as c, pytest.raises(APIError) as e:
        c.get_edit("edit_1")
    assert e.value.status == 503 and len(script.hits) == 4


def test_a_long_retry_after_is_not_waited_for(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(429, {"Retry-After": "3600"})]
    with Client(url, "k", retry=RetryPolicy(max_retry_after_s=5)) as c, pytest.raises(APIError) as e:
        c.get_edit("edit_1")
    assert e.value.status == 429 and len(script.hits) == 1


def test_create_retries_keep_one_idempotency_key(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "0"})]
    with Client(url, "k", retry=FAST) as c:
        c.create_edit("tiny")
    assert len(script.idempotency_keys) == 2 and script.idempotency_keys[0] == script.idempotency_keys[1]
    assert script.idempotency_keys[0]


def test_connection_refused_is_retried_then_raised() -> None:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", "k", retry=FAST) as c, pytest.raises(httpx.ConnectError):
        c.get_edit("edit_1")
    assert time.monotonic() - started >= 0.01


def test_models_tolerate_unknown_fields_and_statuses() -> None:
    job = Edit.model_validate({**JOB, "status": "paused", "new_field": {"x": 1}, "artifacts": [
        {"name": "model/x", "kind": "adapter", "size": 1, "sha256": "0" * 64, "shiny": True}]})
    assert job.status == "paused" and not job.is_terminal and job.model_extra == {"new_field": {"x": 1}}
    assert job.artifacts[0].kind == "adapter"


def test_wait_progress_bar_lines() -> None:
    import io

    from lingua_edit_client.cli import ProgressBar

    out = io.StringIO()  # not a terminal: one line per state or phase change
    bar = ProgressBar(out, width=10)
    for status, phase, done, total in [("queued", None, 0, 0), ("running", "load", 0, 1), ("running", "load", 1, 1),
                                       ("running", "evaluate", 2, 8), ("running", "evaluate", 4, 8),
                                       ("succeeded", "save", 3, 3)]:
        bar.job(Edit.model_validate({**JOB, "status": status,
                                     "progress": {"phase": phase, "done": done, "total": total}}))
    lines = out.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["queued", "running", "running", "succeeded"]
    assert "load" in lines[1] and "[##........]" in lines[2] and "2/8" in lines[2] and "[##########]" in lines[-1]

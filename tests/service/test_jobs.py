"""End to end on PostgreSQL + Redis + a real Celery worker process, on a tiny random model."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from tests.service.conftest import Stack, WorkerProcess, fast_job, slow_job
from tests.service.webhook_server import WebhookSink

pytestmark = pytest.mark.service


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_submit_run_download(pg_stack: Stack, pg_worker: WorkerProcess) -> None:
    sink = WebhookSink()
    try:
        job = pg_stack.submit(fast_job(webhook_url=sink.url))
        done = pg_stack.wait_terminal(job["id"])
        assert done["status"] == "succeeded", (done["error"], pg_worker.log.read_text()[-4000:])
        assert done["started_at"] and done["finished_at"] and done["attempts"] == 1
        assert [r["language"] for r in done["results"]] == ["en", "zh", "sw"]
        for r in done["results"]:
            assert r["n"] >= 1 and 0 <= r["asr_before"] <= 1 and 0 <= r["asr_after"] <= 1
        assert done["neurons"] and done["timings"] and done["utility"] is not None

        kinds = {a["kind"] for a in done["artifacts"]}
        assert {"model", "delta", "manifest", "report"} <= kinds
        tar = next(a for a in done["artifacts"] if a["name"] == "model.tar")  # the model as one tar stream
        assert tar["kind"] == "model" and tar["content_type"] == "application/x-tar"
        listed = pg_stack.client.get(f"/v1/edits/{job['id']}/artifacts").json()["data"]
        assert listed == done["artifacts"]
        for a in listed:
            r = pg_stack.client.get(f"/v1/edits/{job['id']}/artifacts/{a['name']}")
            assert r.status_code == 200, a
            assert _sha(r.content) == a["sha256"] and len(r.content) == a["size"]
            assert r.headers["etag"] == f'"{a["sha256"]}"' and int(r.headers["content-length"]) == a["size"]
        delta = next(a for a in listed if a["kind"] == "delta")
        url = f"/v1/edits/{job['id']}/artifacts/{delta['name']}"
        full = pg_stack.client.get(url).content
        # resumable download: two ranges glued together give the file
        r1 = pg_stack.client.get(url, headers={"Range": "bytes=0-99"})
        assert r1.status_code == 206 and r1.headers["content-range"] == f"bytes 0-99/{delta['size']}"
        assert r1.headers["content-length"] == "100"
        r2 = pg_stack.client.get(url, headers={"Range": "bytes=100-", "If-Range": f'"{delta["sha256"]}"'})
        assert r2.status_code == 206 and r1.content + r2.content == full
        tail = pg_stack.client.get(url, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == full[-10:]
        bad = pg_stack.client.get(url, headers={"Range": f"bytes={delta['size']}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{delta['size']}"
        assert bad.json()["error"]["code"] == "range_not_satisfiable"
        assert pg_stack.client.get(url, headers={"If-None-Match": f'"{delta["sha256"]}"'}).status_code == 304
        # names never reach the filesystem
        for evil in ("../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "model/../../x", "%2e%2e/report.json"):
            r = pg_stack.client.get(f"/v1/edits/{job['id']}/artifacts/{evil}")
            assert r.status_code == 404, evil
        assert pg_stack.other.get(url).status_code == 404
        assert pg_stack.other.get(url, headers={"Range": "bytes=0-9"}).status_code == 404

        events = pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
        types = [e["type"] for e in events]
        assert types[0] == "queued" and "started" in types and types[-1] == "finished"
        assert {e["data"]["phase"] for e in events if e["type"] == "phase"} >= {"load", "evaluate", "save"}
        page = pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 2}).json()
        assert page["has_more"] and len(page["data"]) == 2
        nxt = pg_stack.client.get(
            f"/v1/edits/{job['id']}/events", params={"limit": 2, "after": page["data"][-1]["id"]}
        ).json()
        assert nxt["data"][0]["id"] > page["data"][-1]["id"]

        deadline = time.monotonic() + 10
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.1)
        headers, body = sink.received[0]
        assert json.loads(body)["type"] == "edit.succeeded" and json.loads(body)["data"]["id"] == job["id"]
        ts = headers["X-Lingua-Edit-Timestamp"]
        expect = hmac.new(b"whsec-test", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Lingua-Edit-Signature"] == f"sha256={expect}"
    finally:
        sink.close()

    m = pg_stack.client.get("/metrics", headers={"Authorization": "Bearer metrics-test"}).text
    assert 'lingua_edit_jobs{status="succeeded"}' in m and "lingua_edit_phase_duration_seconds_count" in m


def test_cancel_while_running(pg_stack: Stack, pg_worker: WorkerProcess) -> None:
    job = pg_stack.submit(slow_job())
    pg_stack.wait(
        job["id"], lambda j: j["status"] == "running" and j["progress"]["phase"] not in (None, "load")
    )
    r = pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
    done = pg_stack.wait_terminal(job["id"], timeout=60)
    assert done["status"] == "cancelled" and done["artifacts"] == []
    types = [
        e["type"]
        for e in pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
    ]
    assert "cancelling" in types and types[-1] == "cancelled"
    assert pg_stack.client.post(f"/v1/edits/{job['id']}/cancel").status_code == 409


def test_user_error_is_reported_as_such(pg_stack: Stack, pg_worker: WorkerProcess) -> None:
    # the webhook endpoint is down: logged by the worker, never fatal to the job
    job = pg_stack.submit(fast_job(model="no-such-org/no-such-model", webhook_url="http://127.0.0.1:9/hook"))
    done = pg_stack.wait_terminal(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "user" and done["error"]["code"] == "model_not_found"
    assert done["error"]["param"] == "model" and "Traceback" not in done["error"]["message"]

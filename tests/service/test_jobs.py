"""End to end on PostgreSQL + Redis + a real Celery worker process, on a tiny random model."""

from __future__ import annotations

import hashlib
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.service.conftest import TEST_WEBHOOK_SECRET, Stack, WorkerProcess, fast_job, slow_job
from tests.service.webhook_server import WebhookSink

pytestmark = pytest.mark.service


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_submit_run_download(pg_stack: Stack, pg_worker: WorkerProcess, pg_webhook_worker: WorkerProcess) -> None:
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
        names = {a["name"] for a in done["artifacts"]}
        # the model is stored once, in Hugging Face layout, with a model card
        assert {"model/README.md", "model/config.json", "model/model.safetensors"} <= names
        assert "model.tar" not in names
        report = {a["name"]: a for a in done["artifacts"] if a["kind"] == "report"}  # the job report for people
        assert report["report.html"]["content_type"].startswith("text/html")
        assert report["charts/asr.png"]["content_type"] == "image/png"
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
        # a Range this server cannot parse is ignored (RFC 9110 §14.2): the whole file with 200, not 416/400
        for ignored in ("items=0-1", "bytes=abc", "bytes=5-2"):
            r = pg_stack.client.get(url, headers={"Range": ignored})
            assert r.status_code == 200 and r.content == full, (ignored, r.status_code)
        # If-None-Match: "*" and weak tags compare weakly -> 304; another tag -> the file
        for tag in ("*", f'W/"{delta["sha256"]}"', f'"nope", W/"{delta["sha256"]}"'):
            r = pg_stack.client.get(url, headers={"If-None-Match": tag})
            assert r.status_code == 304 and r.content == b"", tag
        assert pg_stack.client.get(url, headers={"If-None-Match": '"nope"'}).status_code == 200
        # If-Range with a stale (or weak) tag: the whole file
        stale = pg_stack.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert stale.status_code == 200 and stale.content == full
        # several ranges: multipart/byteranges
        multi = pg_stack.client.get(url, headers={"Range": "bytes=0-4,10-14"})
        assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
        assert full[0:5] in multi.content and full[10:15] in multi.content
        # HEAD: the headers of a GET, no body
        head = pg_stack.client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(delta["size"]) and head.headers["etag"] == f'"{delta["sha256"]}"'
        head_range = pg_stack.client.head(url, headers={"Range": "bytes=0-9"})
        assert head_range.status_code == 206 and head_range.headers["content-length"] == "10"
        assert pg_stack.other.head(url).status_code == 404
        # names never reach the filesystem
        for evil in ("../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "model/../../x", "%2e%2e/report.json"):
            r = pg_stack.client.get(f"/v1/edits/{job['id']}/artifacts/{evil}")
            assert r.status_code == 404, evil
        assert pg_stack.other.get(url).status_code == 404
        assert pg_stack.other.get(url, headers={"Range": "bytes=0-9"}).status_code == 404

        events = pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
        types = [e["type"] for e in events if e["type"] != "webhook"]  # deliveries interleave
        assert types[0] == "queued" and "started" in types and types[-1] == "finished"
        assert {e["data"]["phase"] for e in events if e["type"] == "phase"} >= {"load", "evaluate", "save"}
        page = pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 2}).json()
        assert page["has_more"] and len(page["data"]) == 2
        nxt = pg_stack.client.get(
            f"/v1/edits/{job['id']}/events", params={"limit": 2, "after": page["data"][-1]["id"]}
        ).json()
        assert nxt["data"][0]["id"] > page["data"][-1]["id"]

        deadline = time.monotonic() + 20
        while len(sink.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        wh = Webhook(TEST_WEBHOOK_SECRET)  # the operator's fallback secret (acme has none of its own)
        got = {}
        for headers, body in sink.received:
            payload = wh.verify(body, {k.lower(): v for k, v in headers.items()})
            got[payload["type"]] = payload
        assert set(got) == {"edit.running", "edit.succeeded"}, got.keys()
        assert got["edit.succeeded"]["data"]["id"] == job["id"]
        assert got["edit.succeeded"]["data"]["status"] == "succeeded"
        with pytest.raises(WebhookVerificationError):  # a tampered body does not verify
            wh.verify(sink.received[0][1] + b" ", {k.lower(): v for k, v in sink.received[0][0].items()})
        hooks = [
            e for e in pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
            if e["type"] == "webhook"
        ]
        assert {e["data"]["event"] for e in hooks if e["data"]["ok"]} == {"edit.running", "edit.succeeded"}
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


def test_default_method_reports_over_refusal_per_language(pg_stack: Stack, pg_worker: WorkerProcess) -> None:
    """No method given: the search runs; every language row carries harmless and borderline refusal,
    degenerate answers and selectivity beside the ASR, in the API and in report.json."""
    body = fast_job()
    body["hyperparameters"] = {"max_new_tokens": 3, "max_eval_prompts": 2, "max_harmless_eval": 2,
                               "search_layers": [1, 2], "search_gains": [3.0], "screen_prompts": 2,
                               "confirm_prompts": 2, "confirm_harmless_prompts": 2,
                               "batch_size": 8}
    job = pg_stack.submit(body)
    done = pg_stack.wait_terminal(job["id"])
    assert done["status"] == "succeeded", (done["error"], pg_worker.log.read_text()[-4000:])
    assert done["hyperparameters"].get("method", "search") == "search"
    for r in done["results"]:
        assert r["harmless_n"] == 2 and r["borderline_n"] == 2
        for key in ("harmless_refusal_before", "harmless_refusal_after", "borderline_refusal_before",
                    "borderline_refusal_after", "degenerate_before", "degenerate_after", "selectivity",
                    "asr_se_before"):
            assert r[key] is not None, key
        # the paired flips agree with the net shares they come with (n prompts per group)
        harmful, plain = r["flips"]["harmful"], r["flips"]["plain"]
        assert harmful["no_longer_harmful"] - harmful["newly_harmful"] == round((r["asr_before"] - r["asr_after"])
                                                                                * r["n"])
        assert plain["newly_refused"] - plain["no_longer_refused"] == round(
            (r["harmless_refusal_after"] - r["harmless_refusal_before"]) * r["harmless_n"])
    report = pg_stack.client.get(f"/v1/edits/{job['id']}/artifacts/report.json").json()
    assert {r["language"]: r["flips"] for r in done["results"]} == {
        lg: by for lg, by in report["flips"].items() if lg in {r["language"] for r in done["results"]}}
    assert [row["name"] for row in report["search"]][:1] == ["gated L1 uniform x3"]
    assert {r["lang"]: r["harmless_refusal_before"] for r in report["languages"]} == {
        r["language"]: r["harmless_refusal_before"] for r in done["results"]}

"""API behaviour against real PostgreSQL and Redis: validation, auth, tenancy, idempotency, pagination,
cancel while queued, datasets, health and metrics. No worker consumes these jobs' queue."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.service.conftest import Stack, fast_job

pytestmark = pytest.mark.service


def _rows(langs: tuple[str, ...] = ("en", "zh", "sw"), n: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        for lg in langs:
            rows.append({"id": f"h{i}", "lang": lg, "prompt": f"harmful {i} in {lg}", "kind": "harmful"})
            rows.append({"id": f"s{i}", "lang": lg, "prompt": f"harmless {i} in {lg}", "kind": "harmless"})
    return rows


def test_health_ready_metrics(pg_stack: Stack) -> None:
    c = pg_stack.client
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")  # no worker consumes this stack's queue: not ready, and it says why
    assert r.status_code == 503 and r.json()["database"] == "ok" and r.json()["broker"] == "ok"
    assert r.json()["workers"] == 0 and r.json()["error"]["code"] == "unavailable"
    c.get("/v1/edits")
    assert c.get("/metrics").status_code == 401  # a tenant's API key is not the metrics token
    m = c.get("/metrics", headers={"Authorization": "Bearer metrics-test"}).text
    assert 'lingua_edit_jobs{status="queued"}' in m
    assert "lingua_edit_queue_depth" in m
    assert "lingua_edit_http_request_duration_seconds_bucket" in m and 'route="/v1/edits"' in m
    assert "openapi" in c.get("/openapi.json").json()


def test_auth_required_and_envelope(pg_stack: Stack) -> None:
    from fastapi.testclient import TestClient

    anon = TestClient(pg_stack.app, raise_server_exceptions=False)
    r = anon.get("/v1/edits")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = anon.get("/v1/edits", headers={"Authorization": "Bearer le_nope"})
    assert r.status_code == 401
    r = pg_stack.client.get("/v1/nothing-here")
    assert r.status_code == 404 and set(r.json()["error"]) == {"code", "message", "param"}
    r = pg_stack.client.delete("/v1/edits")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = pg_stack.client.post("/v1/edits", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (fast_job(model="no-such-model"), "model"),
        (fast_job(model="/etc"), "model"),
        (fast_job(target_languages=["xx"]), "target_languages.0"),
        (fast_job(target_languages=["en"]), None),
        (fast_job(hyperparameters={"rank": 0}), "hyperparameters.rank"),
        (fast_job(hyperparameters={"lam": 0}), "hyperparameters.lam"),
        (fast_job(hyperparameters={"module": "attn"}), "hyperparameters.module"),
        (fast_job(hyperparameters={"layers": []}), "hyperparameters.layers"),
        (fast_job(hyperparameters={"bogus": 1}), "hyperparameters.bogus"),
        (fast_job(eval_split=1.5), "eval_split"),
        (fast_job(webhook_url="ftp://x"), "webhook_url"),
        (fast_job(metadata={"k": "v" * 600}), "metadata"),
        (fast_job(unknown_field=1), "unknown_field"),
        (
            fast_job(calibration_rows=[{"id": 1, "lang": "en", "prompt": "x", "kind": "evil"}]),
            "calibration_rows",
        ),
        (fast_job(calibration_rows=_rows(("en", "zh"))), "target_languages"),
    ],
)
def test_validation_names_the_field(pg_stack: Stack, body: dict, param: str | None) -> None:
    before = pg_stack.client.get("/v1/edits", params={"limit": 100}).json()["data"]
    r = pg_stack.client.post("/v1/edits", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    after = pg_stack.client.get("/v1/edits", params={"limit": 100}).json()["data"]
    assert len(after) == len(before)  # nothing stored or queued


def test_create_get_cancel_queued(pg_stack: Stack) -> None:
    r = pg_stack.client.post("/v1/edits", json=fast_job())
    assert r.status_code == 202
    job = r.json()
    assert r.headers["Location"] == f"/v1/edits/{job['id']}"
    assert job["status"] == "queued" and job["target_languages"] == ["zh", "sw"]
    assert job["hyperparameters"]["layers"] == [1, 2] and job["hyperparameters"]["module"] == "gate"
    assert job["metadata"] == {"team": "safety"} and job["error"] is None
    r = pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    r = pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    events = pg_stack.client.get(f"/v1/edits/{job['id']}/events").json()
    assert [e["type"] for e in events["data"]] == ["queued", "cancelled"]


def test_idempotency(pg_stack: Stack) -> None:
    key = secrets.token_hex(8)
    a = pg_stack.submit(fast_job(), **{"Idempotency-Key": key})
    b = pg_stack.submit(fast_job(), **{"Idempotency-Key": key})
    assert a["id"] == b["id"]
    r = pg_stack.client.post(
        "/v1/edits", json=fast_job(target_languages=["zh"]), headers={"Idempotency-Key": key}
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "Idempotency-Key"
    # keys are per tenant
    c = pg_stack.other.post("/v1/edits", json=fast_job(), headers={"Idempotency-Key": key})
    assert c.status_code == 202 and c.json()["id"] != a["id"]
    for j in (a["id"],):
        pg_stack.client.post(f"/v1/edits/{j}/cancel")
    pg_stack.other.post(f"/v1/edits/{c.json()['id']}/cancel")


def test_pagination_and_filters(pg_stack: Stack) -> None:
    tag = secrets.token_hex(4)
    ids = [pg_stack.submit(fast_job(metadata={"batch": tag, "i": str(i)}))["id"] for i in range(5)]
    pg_stack.client.post(f"/v1/edits/{ids[0]}/cancel")
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2, "metadata[batch]": tag}
        if after:
            params["after"] = after
        page = pg_stack.client.get("/v1/edits", params=params).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == list(reversed(ids))  # newest first, no duplicates, nothing missing
    one = pg_stack.client.get("/v1/edits", params={"metadata[batch]": tag, "metadata[i]": "3"}).json()
    assert [j["id"] for j in one["data"]] == [ids[3]]
    cancelled = pg_stack.client.get(
        "/v1/edits", params={"metadata[batch]": tag, "status": "cancelled"}
    ).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert pg_stack.client.get("/v1/edits", params={"status": "bogus"}).status_code == 422
    assert pg_stack.client.get("/v1/edits", params={"limit": 1000}).json()["error"]["param"] == "limit"
    assert pg_stack.client.get("/v1/edits", params={"after": "edit_missing"}).status_code == 422
    assert pg_stack.other.get("/v1/edits", params={"metadata[batch]": tag}).json()["data"] == []
    for j in ids[1:]:
        pg_stack.client.post(f"/v1/edits/{j}/cancel")


def test_datasets_upload_validate_and_isolation(pg_stack: Stack) -> None:
    jsonl = "\n".join(json.dumps(r) for r in _rows()).encode()
    r = pg_stack.client.post("/v1/datasets", files={"file": ("../../etc/passwd.jsonl", jsonl)})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["rows"] == 30 and ds["languages"] == ["en", "zh", "sw"] and len(ds["sha256"]) == 64
    assert ds["filename"] == "../../etc/passwd.jsonl"  # shown back, never used as a path
    stored = list((pg_stack.settings.resolved_storage_dir() / "datasets").rglob("*"))
    assert all(".." not in p.name and "passwd" not in p.name for p in stored)
    assert pg_stack.client.get(f"/v1/datasets/{ds['id']}").json()["id"] == ds["id"]
    assert pg_stack.other.get(f"/v1/datasets/{ds['id']}").status_code == 404
    # another tenant cannot use it in a job
    r = pg_stack.other.post("/v1/edits", json=fast_job(dataset_id=ds["id"]))
    assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
    # languages missing from the dataset are caught before queueing
    r = pg_stack.client.post("/v1/edits", json=fast_job(dataset_id=ds["id"], target_languages=["it"]))
    assert r.status_code == 422 and r.json()["error"]["param"] == "target_languages"
    job = pg_stack.submit(fast_job(dataset_id=ds["id"]))
    assert job["dataset_id"] == ds["id"]
    pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")

    bad = b'{"id": 1, "lang": "en", "prompt": "x", "kind": "harmful"}\n{"id": 2, "lang": "qq"}\n'
    r = pg_stack.client.post("/v1/datasets", files={"file": ("bad.jsonl", bad)})
    assert r.status_code == 422 and "row 2" in r.json()["error"]["message"]
    assert str(pg_stack.settings.data_dir) not in r.json()["error"]["message"]
    r = pg_stack.client.post("/v1/datasets", files={"file": ("x.exe", b"MZ")})
    assert r.status_code == 422 and r.json()["error"]["param"] == "file"
    r = pg_stack.client.post("/v1/datasets", files={"file": ("big.jsonl", b"x" * 300_000)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    csv = "id,en,zh\n1,how to a,如何甲\n2,how to b,如何乙\n".encode()
    r = pg_stack.client.post("/v1/datasets", files={"file": ("multijail.csv", csv)})
    assert r.status_code == 201 and r.json()["format"] == "csv" and r.json()["rows"] == 4


def test_inline_rows_become_a_dataset(pg_stack: Stack) -> None:
    job = pg_stack.submit(fast_job(calibration_rows=_rows()))
    assert job["dataset_id"].startswith("ds_")
    assert pg_stack.client.get(f"/v1/datasets/{job['dataset_id']}").json()["rows"] == 30
    pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")


def test_tenant_isolation_on_job_endpoints(pg_stack: Stack) -> None:
    job = pg_stack.submit(fast_job())
    jid = job["id"]
    o = pg_stack.other
    for method, path in [
        ("GET", f"/v1/edits/{jid}"),
        ("GET", f"/v1/edits/{jid}/events"),
        ("GET", f"/v1/edits/{jid}/artifacts"),
        ("GET", f"/v1/edits/{jid}/artifacts/report.json"),
        ("POST", f"/v1/edits/{jid}/cancel"),
    ]:
        r = o.request(method, path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert jid not in [j["id"] for j in o.get("/v1/edits", params={"limit": 100}).json()["data"]]
    assert pg_stack.client.get(f"/v1/edits/{jid}").json()["status"] == "queued"  # the cancel did nothing
    pg_stack.client.post(f"/v1/edits/{jid}/cancel")


def test_models_listing(pg_stack: Stack) -> None:
    data = pg_stack.client.get("/v1/models").json()["data"]
    ids = {m["id"]: m["source"] for m in data}
    assert ids["demo"] == "demo" and ids["tiny"] == "registered"


def test_unhandled_errors_use_the_envelope_without_traceback(pg_stack: Stack) -> None:
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    pg_stack.app.add_api_route("/v1/_test_boom", boom)
    r = pg_stack.client.get("/v1/_test_boom")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal server error", "param": None}}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_polling_read_gives_up_when_the_database_hangs(pg_stack: Stack) -> None:
    """The polling read runs on the event loop, so a database that hangs (a lock nobody releases) must not
    hold it: the API's statements are bounded and the client gets the 503 envelope, not a hung request."""
    import threading
    import time

    import psycopg

    job = pg_stack.submit(fast_job())
    url = pg_stack.settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(url) as conn:
            conn.execute("LOCK TABLE edit_jobs IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)  # the code before the bound answered only once this lock went (after 30 s)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        start = time.monotonic()
        r = pg_stack.client.get(f"/v1/edits/{job['id']}")
        elapsed = time.monotonic() - start
    finally:
        release.set()
        holder.join()
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert elapsed < 15
    assert pg_stack.client.get(f"/v1/edits/{job['id']}").status_code == 200  # and it recovers at once

"""Hostile input at the API edge (issue 10, findings 3-7): every case answers 4xx with the error envelope
naming the field, never 5xx, and leaves nothing behind. Real PostgreSQL + Redis; no worker."""

from __future__ import annotations

import json
import logging
import secrets
import threading

import pytest
from sqlalchemy import create_engine, text

from tests.service.conftest import Stack, fast_job

pytestmark = pytest.mark.service


def _rows(n: int = 5) -> list[dict]:
    return [
        {"id": f"{k[0]}{i}", "lang": lg, "prompt": f"{k} {i} in {lg}", "kind": k}
        for i in range(n)
        for lg in ("en", "zh", "sw")
        for k in ("harmful", "harmless")
    ]


def _err(r, status: int) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) == {"code", "message", "param"}, body
    return body["error"]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/edits/edit_%00abc", "path"),
        ("/v1/edits/edit_x%00/events", "path"),
        ("/v1/datasets/ds_%00", "path"),
        ("/v1/edits?after=edit_%00", "after"),
        ("/v1/edits?metadata%5Bte%00am%5D=x", "metadata[team]"),
        ("/v1/edits?metadata%5Bteam%5D=a%00b", "metadata[team]"),
        ("/v1/edits/edit_x/events?after=1%00", "after"),
    ],
)
def test_nul_in_path_and_query_is_422(pg_stack: Stack, path: str, param: str) -> None:
    err = _err(pg_stack.client.get(path), 422)
    assert err["param"] == param and "NUL" in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (fast_job(metadata={"te\x00am": "x"}), "metadata"),
        (fast_job(metadata={"team": "a\x00b"}), "metadata.team"),
        (fast_job(webhook_url="https://example.com/\x00hook"), "webhook_url"),
        (fast_job(model="tiny\x00"), "model"),
        (fast_job(calibration_rows=[{"id": "1", "lang": "en", "prompt": "a\x00", "kind": "harmful"}]),
         "calibration_rows.0.prompt"),
    ],
)
def test_nul_in_json_body_is_422(pg_stack: Stack, body: dict, param: str) -> None:
    err = _err(pg_stack.client.post("/v1/edits", json=body), 422)
    assert err["param"] == param


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"model": "tiny", "hyperparameters": {"gamma": 1e400}}', "hyperparameters.gamma"),
        ('{"model": "tiny", "hyperparameters": {"gamma": NaN}}', None),
        ('{"model": "tiny", "hyperparameters": {"tau_z": -Infinity}}', None),
        ('{"model": "tiny", "eval_split": 1e999}', "eval_split"),
    ],
)
def test_non_finite_numbers_are_422(pg_stack: Stack, raw: str, param: str | None) -> None:
    r = pg_stack.client.post("/v1/edits", content=raw, headers={"Content-Type": "application/json"})
    err = _err(r, 422)
    assert err["param"] == param and "finite" in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (fast_job(hyperparameters={"rank": True}), "hyperparameters.rank"),
        (fast_job(hyperparameters={"rank": "4"}), "hyperparameters.rank"),
        (fast_job(hyperparameters={"seed": 1.0}), "hyperparameters.seed"),
        (fast_job(eval_split="0.3"), "eval_split"),
        (fast_job(hyperparameters={"layers": []}), "hyperparameters.layers"),
    ],
)
def test_strict_types(pg_stack: Stack, body: dict, param: str) -> None:
    assert _err(pg_stack.client.post("/v1/edits", json=body), 422)["param"] == param


def test_events_cursor_out_of_range_is_422(pg_stack: Stack) -> None:
    job = pg_stack.submit(fast_job())
    for after in ("9223372036854775808", "99999999999999999999999", "-1", "1e3"):
        r = pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"after": after})
        assert _err(r, 422)["param"] == "after"
    pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")


def test_deep_nesting(pg_stack: Stack) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    r = pg_stack.client.post(
        "/v1/edits", content='{"model": "tiny", "metadata": ' + deep + "}",
        headers={"Content-Type": "application/json"},
    )
    assert _err(r, 422)["code"] == "invalid_request"
    deep_file = ("[" * 50_000 + "]" * 50_000 + "\n").encode()
    r = pg_stack.client.post("/v1/datasets", files={"file": ("deep.jsonl", deep_file)})
    err = _err(r, 422)
    assert err["param"] == "file" and "nested" in err["message"]


def test_body_limits(pg_stack: Stack) -> None:
    limit = pg_stack.settings.max_request_bytes
    big = b'{"model": "tiny", "metadata": {"a": "' + b"x" * (limit + 10) + b'"}}'
    r = pg_stack.client.post("/v1/edits", content=big, headers={"Content-Type": "application/json"})
    assert _err(r, 413)["code"] == "payload_too_large"

    def chunks():  # noqa: ANN202 - no Content-Length: counted while streamed
        yield b'{"model": "tiny", "metadata": {"a": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    r = pg_stack.client.post("/v1/edits", content=chunks(), headers={"Content-Type": "application/json"})
    assert _err(r, 413)["code"] == "payload_too_large"
    # multipart: refused from Content-Length before FastAPI spools the parts
    r = pg_stack.client.post("/v1/datasets", files={"file": ("big.jsonl", b"x" * 400_000)})
    assert _err(r, 413)["code"] == "payload_too_large"

    def parts():  # noqa: ANN202
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n"
        for _ in range(10):
            yield b"y" * 65536
        yield b"\r\n--b--\r\n"

    r = pg_stack.client.post(
        "/v1/datasets", content=parts(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert _err(r, 413)["code"] == "payload_too_large"


def test_prompt_length_limit(pg_stack: Stack) -> None:
    rows = _rows()
    rows[3]["prompt"] = "x" * (pg_stack.settings.max_prompt_chars + 1)
    err = _err(pg_stack.client.post("/v1/edits", json=fast_job(calibration_rows=rows)), 422)
    assert err["param"] == "calibration_rows.3.prompt"
    jsonl = "\n".join(json.dumps(r) for r in rows).encode()
    err = _err(pg_stack.client.post("/v1/datasets", files={"file": ("long.jsonl", jsonl)}), 422)
    assert err["param"] == "file" and "longer than" in err["message"]


def test_invalid_multipart_is_400_or_422(pg_stack: Stack) -> None:
    r = pg_stack.client.post(
        "/v1/datasets", content=b"--nope\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code in (400, 422) and "error" in r.json()
    r = pg_stack.client.post("/v1/datasets", files={"file": ("empty.jsonl", b"")})
    assert _err(r, 422)["param"] == "file"


@pytest.mark.parametrize("model", ["models/tiny", "tests/service", "nobody/nothing-here", "/etc", "../tiny",
                                   "a/b/c", "tiny/", "~/x", "C:\\x"])
def test_unknown_models_get_one_answer(pg_stack: Stack, model: str) -> None:
    from core.resolve import UNKNOWN_MODEL

    pg_stack.settings.allow_hub_models = False
    try:
        err = _err(pg_stack.client.post("/v1/edits", json=fast_job(model=model)), 422)
    finally:
        pg_stack.settings.allow_hub_models = True
    assert err == {"code": "model_not_found", "message": UNKNOWN_MODEL, "param": "model"}


def test_api_key_in_query_is_refused_and_not_logged(pg_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from app.guard import ScrubSecrets

    anon = TestClient(pg_stack.app, raise_server_exceptions=False)
    err = _err(anon.get("/v1/edits", params={"api_key": "le_secret"}), 400)
    assert err["param"] == "api_key" and "Authorization" in err["message"]
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", "/v1/edits?limit=2&api_key=le_secret", "1.1", 400), None,
    )
    ScrubSecrets().filter(record)
    assert "le_secret" not in record.getMessage() and "limit=2" in record.getMessage()


def test_keys_list_and_revoke(pg_stack: Stack) -> None:
    from fastapi.testclient import TestClient

    from core.apikeys import create_key

    with pg_stack.ctx.sessions() as s:
        key = create_key(s, "acme")
        s.commit()
    mine = TestClient(pg_stack.app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)
    listed = mine.get("/v1/keys").json()["data"]
    assert all(set(k) == {"id", "object", "prefix", "created_at", "revoked_at"} for k in listed)
    new = next(k for k in listed if key.startswith(k["prefix"]))
    # another tenant neither sees nor revokes it
    assert new["id"] not in [k["id"] for k in pg_stack.other.get("/v1/keys").json()["data"]]
    assert _err(pg_stack.other.delete(f"/v1/keys/{new['id']}"), 404)["param"] == "key_id"
    assert mine.get("/v1/edits").status_code == 200
    r = pg_stack.client.delete(f"/v1/keys/{new['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert _err(mine.get("/v1/edits"), 401)["code"] == "unauthorized"  # at once, no cache
    assert pg_stack.client.get("/v1/edits").status_code == 200  # the other keys still work


def test_metrics_need_the_token(pg_stack: Stack) -> None:
    from fastapi.testclient import TestClient

    anon = TestClient(pg_stack.app, raise_server_exceptions=False)
    assert _err(anon.get("/metrics"), 401)["code"] == "unauthorized"
    assert _err(pg_stack.client.get("/metrics"), 401)["code"] == "unauthorized"
    token = pg_stack.settings.metrics_token
    pg_stack.settings.metrics_token = None
    try:
        assert anon.get("/metrics").status_code == 404
    finally:
        pg_stack.settings.metrics_token = token


def test_tenant_queue_limit_is_429(pg_stack: Stack) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from core.apikeys import create_key
    from core.db.models import EditJob

    tenant = f"quota-{secrets.token_hex(3)}"
    with pg_stack.ctx.sessions() as s:
        key = create_key(s, tenant)
        s.commit()
    c = TestClient(pg_stack.app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)
    # Two queued rows without task messages: a worker on this queue (other test modules start one) cannot
    # turn them into running jobs while the test counts.
    ids = [f"edit_{secrets.token_hex(12)}" for _ in range(2)]
    with pg_stack.ctx.sessions() as s:
        s.add_all(EditJob(id=i, tenant=tenant, status="queued", model="tiny", config={}, request_hash="x")
                  for i in ids)
        s.commit()
    pg_stack.settings.tenant_max_queued_jobs = 2
    try:
        r = c.post("/v1/edits", json=fast_job())
        assert _err(r, 429)["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
        with pg_stack.ctx.sessions() as s:  # the limit is per tenant: a fresh tenant is not affected
            other_key = create_key(s, f"quota-{secrets.token_hex(3)}")
            s.commit()
        other = TestClient(pg_stack.app, headers={"Authorization": f"Bearer {other_key}"})
        fresh = other.post("/v1/edits", json=fast_job())
        assert fresh.status_code == 202
        other.post(f"/v1/edits/{fresh.json()['id']}/cancel")
        c.post(f"/v1/edits/{ids[0]}/cancel")
        assert c.post("/v1/edits", json=fast_job()).status_code == 202
    finally:
        pg_stack.settings.tenant_max_queued_jobs = 50
        with pg_stack.ctx.sessions() as s:  # leave nothing queued for other modules' reapers to dispatch
            s.execute(update(EditJob).where(EditJob.tenant == tenant).values(status="cancelled"))
            s.commit()


def test_retry_after_503_with_the_same_key_succeeds(pg_stack: Stack) -> None:
    ctx, key = pg_stack.ctx, secrets.token_hex(8)
    good = ctx.settings.broker_url
    ctx.settings.broker_url, ctx._celery = "redis://127.0.0.1:1/0", None
    try:
        r = pg_stack.client.post("/v1/edits", json=fast_job(), headers={"Idempotency-Key": key})
        assert _err(r, 503)["code"] == "unavailable"
    finally:
        ctx.settings.broker_url, ctx._celery = good, None
    r = pg_stack.client.post("/v1/edits", json=fast_job(), headers={"Idempotency-Key": key})
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    again = pg_stack.client.post("/v1/edits", json=fast_job(), headers={"Idempotency-Key": key})
    assert again.json()["id"] == r.json()["id"]
    pg_stack.client.post(f"/v1/edits/{r.json()['id']}/cancel")


def _dataset_files(stack: Stack) -> set[str]:
    root = stack.settings.resolved_storage_dir() / "datasets"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_idempotent_create_race_leaves_no_orphan_files(pg_stack: Stack) -> None:
    from fastapi.testclient import TestClient

    key = secrets.token_hex(8)
    body = fast_job(calibration_rows=_rows())
    headers = dict(pg_stack.client.headers) | {"Idempotency-Key": key}
    before = _dataset_files(pg_stack)
    results: list[int] = []

    def post() -> None:
        c = TestClient(pg_stack.app, headers=headers, raise_server_exceptions=False)
        results.append(c.post("/v1/edits", json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [202] * 12
    job = pg_stack.client.post("/v1/edits", json=body, headers={"Idempotency-Key": key}).json()
    assert _dataset_files(pg_stack) - before == {job["dataset_id"]}  # exactly one file set: the job's
    pg_stack.client.post(f"/v1/edits/{job['id']}/cancel")


def test_dataset_is_committed_before_201(pg_stack: Stack) -> None:
    engine = create_engine(pg_stack.settings.database_url)
    jsonl = "\n".join(json.dumps(r) for r in _rows()).encode()
    try:
        for _ in range(10):
            ds = pg_stack.client.post("/v1/datasets", files={"file": ("a.jsonl", jsonl)}).json()
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM datasets WHERE id = :i"), {"i": ds["id"]}).scalar() == 1
    finally:
        engine.dispose()

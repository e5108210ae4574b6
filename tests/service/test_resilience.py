"""Worker-side rules of issue 10 with a real worker: readiness follows the worker, model names never become
paths, the manifest keeps server paths to itself, lost task messages are re-dispatched, and a duplicate
delivery runs the job once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.queue import dispatch
from core.reaper import reap
from core.resolve import UNKNOWN_MODEL
from tests.service.conftest import Stack, fast_job, make_stack

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, redis_url: str, tiny_model: Path
) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("resilience"), pg_database, redis_url, tiny_model,
        LINGUA_EDIT_REDISPATCH_AFTER_S="1", LINGUA_EDIT_WORKER_HEARTBEAT_TTL_S="2",
    )
    yield s
    s.ctx.engine.dispose()


def _events(stack: Stack, job_id: str) -> list[str]:
    data = stack.client.get(f"/v1/edits/{job_id}/events", params={"limit": 100}).json()["data"]
    return [e["type"] for e in data]


def test_lost_message_is_redispatched_and_duplicates_run_once(stack: Stack) -> None:
    lost = stack.submit(fast_job())
    duplicated = stack.submit(fast_job())
    # Redis restarted without persistence: the queue is gone, the rows still say queued.
    redis.Redis.from_url(stack.settings.broker_url).delete(stack.settings.queue)
    for _ in range(3):  # duplicate deliveries of one job's task
        dispatch(stack.ctx, duplicated["id"])
    time.sleep(stack.settings.redispatch_after_s + 0.2)
    actions = reap(stack.ctx)
    assert (lost["id"], "redispatched") in actions
    assert duplicated["id"] not in [a[0] for a in actions]  # its messages are still queued
    assert reap(stack.ctx) == []  # dispatched again once, not every run

    worker = stack.start_worker()
    try:
        ready = stack.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] >= 1
        for job in (lost, duplicated):
            done = stack.wait_terminal(job["id"], timeout=240)
            assert done["status"] == "succeeded", (done["error"], worker.log.read_text()[-3000:])
            assert done["attempts"] == 1 and _events(stack, job["id"]).count("started") == 1
            assert _events(stack, job["id"]).count("finished") == 1
        names = [a["name"] for a in stack.client.get(f"/v1/edits/{duplicated['id']}/artifacts").json()["data"]]
        assert len(names) == len(set(names))

        manifest = stack.client.get(f"/v1/edits/{lost['id']}/artifacts/manifest.json").json()
        text = json.dumps(manifest)
        assert manifest["base_model"]["spec"] == manifest["base_model"]["path"] == "tiny"
        assert stack.settings.model_registry["tiny"] not in text and str(stack.settings.data_dir) not in text
        assert "calibration" not in manifest["config"]

        # one answer for every model the worker cannot use, and no path is ever loaded
        failed = [stack.submit(fast_job(model=m)) for m in ("tests/service", "nobody/no-such-model")]
        for job in failed:
            done = stack.wait_terminal(job["id"], timeout=60)
            assert done["status"] == "failed" and done["error"]["code"] == "model_not_found"
            assert done["error"]["message"] == UNKNOWN_MODEL
    finally:
        worker.kill()
    deadline = time.monotonic() + stack.settings.worker_heartbeat_ttl_s + 3
    while stack.client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    r = stack.client.get("/readyz")
    assert r.status_code == 503 and r.json()["workers"] == 0
    reap(stack.ctx)  # removes scratch directories of the killed worker, if it left any
    assert not list((stack.settings.data_dir / "tmp").glob("job-*"))


def test_tenant_running_limit_leaves_the_job_queued(stack: Stack) -> None:
    from sqlalchemy import update

    from core.db.models import EditJob
    from worker.model_cache import ModelCache
    from worker.tasks import JobRunner

    first, second = stack.submit(fast_job()), stack.submit(fast_job())
    with stack.ctx.sessions() as s:  # the tenant already has a job running elsewhere
        s.execute(update(EditJob).where(EditJob.id == first["id"]).values(status="running"))
        s.commit()
    stack.settings.tenant_max_running_jobs = 1
    try:
        assert JobRunner(stack.ctx, ModelCache(0), second["id"]).claim() is None
        assert stack.client.get(f"/v1/edits/{second['id']}").json()["status"] == "queued"
    finally:
        stack.settings.tenant_max_running_jobs = 2
        with stack.ctx.sessions() as s:
            s.execute(update(EditJob).where(EditJob.id == first["id"]).values(status="cancelled"))
            s.commit()
        stack.client.post(f"/v1/edits/{second['id']}/cancel")

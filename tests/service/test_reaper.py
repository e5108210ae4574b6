"""A worker killed with SIGKILL mid-job: the reaper re-queues the job once, then fails it; never stuck."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.reaper import reap
from tests.service.conftest import make_stack, slow_job

pytestmark = pytest.mark.service


def _running(j: dict) -> bool:
    return j["status"] == "running"


def test_killed_worker_is_requeued_once_then_failed(
    tmp_path: Path, pg_database: str, redis_url: str, tiny_model: Path
) -> None:
    # Its own queue, so the session's shared worker cannot pick this job up.
    stack = make_stack(tmp_path, pg_database, redis_url, tiny_model, LINGUA_EDIT_STALE_AFTER_S="2")
    stale = stack.settings.stale_after_s
    job = stack.submit(slow_job())
    worker = stack.start_worker("doomed-1")
    try:
        stack.wait(job["id"], _running, timeout=60)
    finally:
        worker.kill()
    assert stack.client.get(f"/v1/edits/{job['id']}").json()["status"] == "running"
    assert reap(stack.ctx) == []  # heartbeat still fresh: nothing to do yet
    time.sleep(stale + 0.5)
    assert (job["id"], "requeued") in reap(stack.ctx)
    j = stack.client.get(f"/v1/edits/{job['id']}").json()
    assert j["status"] == "queued" and j["attempts"] == 1

    worker = stack.start_worker("doomed-2")  # picks up the re-queued task: second and last attempt
    try:
        stack.wait(job["id"], lambda j: _running(j) and j["attempts"] == 2, timeout=60)
    finally:
        worker.kill()
    time.sleep(stale + 0.5)
    assert (job["id"], "failed") in reap(stack.ctx)
    j = stack.client.get(f"/v1/edits/{job['id']}").json()
    assert j["status"] == "failed" and j["finished_at"]
    assert j["error"]["code"] == "worker_lost" and j["error"]["type"] == "system"
    types = [
        e["type"]
        for e in stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
    ]
    assert types.count("started") == 2 and "requeued" in types and types[-1] == "error"
    stack.ctx.engine.dispose()

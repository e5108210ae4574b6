"""Operations: the compose worker healthcheck (a Celery remote-control ping) run as written against a real
worker, JSON logs with the job id on the job's lines, and `db downgrade` refusing to run without a revision."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.service.conftest import ROOT, Stack, WorkerProcess, fast_job, make_stack

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def ops_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, redis_url: str, tiny_model: Path
) -> Stack:
    stack = make_stack(
        tmp_path_factory.mktemp("ops"),
        pg_database,
        redis_url,
        tiny_model,
        LINGUA_EDIT_QUEUE=f"gpu-ops-{secrets.token_hex(4)}",
    )
    yield stack
    stack.ctx.engine.dispose()


def test_healthcheck_and_json_logs(ops_stack: Stack) -> None:
    node = f"ops{secrets.token_hex(3)}"
    worker = WorkerProcess(ops_stack.env, ops_stack.tmp / "json-worker.log", ("--log-format", "json", "--name",
                                                                             f"{node}@%h"))
    try:
        worker.wait_ready()
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        test = compose["x-celery-health"]["test"]
        assert test[0] == "CMD-SHELL" and "inspect ping" in test[1]
        command = test[1].replace("$$", "$")  # compose's escaping
        env = {**os.environ, **ops_stack.env, "WORKER_NODE": node, "HOSTNAME": os.uname().nodename,
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        ok = subprocess.run(["sh", "-c", command], env=env, cwd=ROOT, capture_output=True, timeout=60)
        assert ok.returncode == 0, ok.stderr.decode()[-2000:]
        wrong = subprocess.run(["sh", "-c", command], env={**env, "WORKER_NODE": "nobody"}, cwd=ROOT,
                               capture_output=True, timeout=60)
        assert wrong.returncode != 0  # a worker that does not answer is unhealthy

        job = ops_stack.submit(fast_job())
        assert ops_stack.wait_terminal(job["id"])["status"] == "succeeded"
    finally:
        worker.stop()
    records = []
    for line in worker.log.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    mine = [r for r in records if r["job_id"] == job["id"]]
    messages = [r["message"] for r in mine]
    assert any(m.startswith("running on model tiny") for m in messages) and "job finished" in messages
    # every line logged between the job's first and last line carries its id
    first, last = records.index(mine[0]), records.index(mine[-1])
    assert all(r["job_id"] == job["id"] for r in records[first : last + 1] if r["logger"].startswith("lingua_edit"))


def test_db_downgrade_needs_a_revision(tmp_path: Path) -> None:
    env = {**os.environ, "LINGUA_EDIT_DATA_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "app.cli", "db", "downgrade"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "revision" in r.stderr


def test_webhooks_rotate_secret_cli(ops_stack: Stack) -> None:
    from core.db.models import WebhookSecret

    tenant = f"cli-{secrets.token_hex(3)}"
    env = {**os.environ, **ops_stack.env}
    cmd = [sys.executable, "-m", "app.cli", "webhooks", "rotate-secret", "--tenant", tenant]
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    a, b = first.stdout.strip(), second.stdout.strip()
    assert a.startswith("whsec_") and b.startswith("whsec_") and a != b
    assert a not in first.stderr and b not in second.stderr  # printed once, never logged
    with ops_stack.ctx.sessions() as s:
        row = s.get(WebhookSecret, tenant)
        assert row is not None and (row.secret, row.previous_secret) == (b, a) and row.rotated_at

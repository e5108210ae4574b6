"""Service-test fixtures: a real PostgreSQL database per run, a real Redis, real Celery worker processes.

Each run gets its own PostgreSQL database, Redis database index and queue name, so concurrent runs on one
machine do not steal each other's tasks.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.ci import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("LINGUA_EDIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("LINGUA_EDIT_TEST_REDIS", "redis://127.0.0.1:6379")


def _pg_sqlalchemy_url(dbname: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def create_pg_database() -> tuple[str, Callable[[], None]]:
    name = f"le_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return _pg_sqlalchemy_url(name), drop


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    try:
        url, drop = create_pg_database()
    except psycopg.OperationalError as exc:
        skip_or_fail(f"PostgreSQL not reachable: {exc}")
    yield url
    drop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    db = secrets.randbelow(15) + 1
    url = f"{REDIS_BASE}/{db}"
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        skip_or_fail(f"Redis not reachable: {exc}")
    return url


TINY_SOURCE = "lingua-edit-tests/tiny-qwen2"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", family="qwen2")
    # where a registered model came from: the model card's base_model (TINY_SOURCE is not a real repo)
    (path / "lingua_edit_source.json").write_text(json.dumps({"source": TINY_SOURCE}))
    return path


class WorkerProcess:
    """`lingua-edit worker` as a real subprocess in its own process group (so a test can kill -9 it)."""

    def __init__(self, env: dict[str, str], log: Path, extra: tuple[str, ...] = ()) -> None:
        self.log = log
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--log-level", "INFO", *extra],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: parent and the child running the job, like an OOM kill."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._fh.close()


@dataclass
class Stack:
    """One configured service: settings, the in-process API client and the worker's environment."""

    env: dict[str, str]
    settings: Any
    app: Any
    client: Any  # TestClient, tenant "acme"
    other: Any  # TestClient, tenant "globex"
    tmp: Path

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def start_worker(self, name: str = "worker", webhooks: bool = False) -> WorkerProcess:
        """A GPU-queue worker, or (webhooks=True) a webhook-delivery worker on the webhooks queue."""
        extra = ("--webhooks",) if webhooks else ()
        w = WorkerProcess(self.env, self.tmp / f"{name}-{secrets.token_hex(3)}.log", extra)
        w.wait_ready()
        return w

    def submit(self, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = self.client.post("/v1/edits", json=body, headers=headers)
        assert r.status_code == 202, r.text
        return r.json()

    def wait(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/edits/{job_id}").json()
            if until(job):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} stuck: {json.dumps(job)[:2000]}")

    def wait_terminal(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout)


TEST_WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLWxpbmd1YS1lZGl0LXdlYmhvb2tz"  # fallback secret
JSON_SETTINGS = (
    "LINGUA_EDIT_MODEL_REGISTRY",
    "LINGUA_EDIT_WEBHOOK_PRIVATE_ALLOWLIST",
    "LINGUA_EDIT_DESTINATION_ROOTS",
)


def make_stack(
    tmp: Path,
    database_url: str,
    broker_url: str,
    tiny_model: Path,
    tenants: tuple[str, str] = ("acme", "globex"),
    **extra: str,
) -> Stack:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.apikeys import create_key
    from core.db.migrate import upgrade
    from core.settings import Settings

    env = {
        "LINGUA_EDIT_DATABASE_URL": database_url,
        "LINGUA_EDIT_BROKER_URL": broker_url,
        "LINGUA_EDIT_DATA_DIR": str(tmp / "data"),
        "LINGUA_EDIT_QUEUE": f"gpu-test-{secrets.token_hex(4)}",
        "LINGUA_EDIT_MODEL_REGISTRY": json.dumps({"tiny": str(tiny_model)}),
        "LINGUA_EDIT_HEARTBEAT_INTERVAL_S": "0.5",
        "LINGUA_EDIT_STALE_AFTER_S": "30",
        "LINGUA_EDIT_REAPER_INTERVAL_S": "0",  # tests call the reaper themselves
        "LINGUA_EDIT_WEBHOOK_QUEUE": f"webhooks-test-{secrets.token_hex(4)}",
        "LINGUA_EDIT_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        # the tests' webhook receiver listens on 127.0.0.1; test_webhook_guard empties this where it checks
        "LINGUA_EDIT_WEBHOOK_PRIVATE_ALLOWLIST": json.dumps(["127.0.0.0/8"]),
        "LINGUA_EDIT_WEBHOOK_TIMEOUT_S": "3",
        "LINGUA_EDIT_DESTINATION_ROOTS": json.dumps([str(tmp / "destinations")]),
        "LINGUA_EDIT_MAX_UPLOAD_BYTES": "200000",
        "LINGUA_EDIT_DEVICE": "cpu",
        "LINGUA_EDIT_METRICS_TOKEN": "metrics-test",
        "HF_HUB_OFFLINE": "1",  # an unknown hub id fails at once instead of retrying the network
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
    settings = Settings(
        **{
            k.removeprefix("LINGUA_EDIT_").lower(): v
            for k, v in env.items()
            if k.startswith("LINGUA_EDIT_") and k not in JSON_SETTINGS
        },
        **{k.removeprefix("LINGUA_EDIT_").lower(): json.loads(env[k]) for k in JSON_SETTINGS if k in env},
    )
    upgrade(database_url)
    app = create_app(settings)
    with app.state.ctx.sessions() as s:
        key_a, key_b = create_key(s, tenants[0]), create_key(s, tenants[1])
        s.commit()
    client = TestClient(app, headers={"Authorization": f"Bearer {key_a}"}, raise_server_exceptions=False)
    other = TestClient(app, headers={"Authorization": f"Bearer {key_b}"}, raise_server_exceptions=False)
    return Stack(env=env, settings=settings, app=app, client=client, other=other, tmp=tmp)


@pytest.fixture(scope="session")
def pg_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, redis_url: str, tiny_model: Path
) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("pg"), pg_database, redis_url, tiny_model)
    yield stack
    stack.ctx.engine.dispose()


@pytest.fixture(scope="session")
def pg_worker(pg_stack: Stack) -> Iterator[WorkerProcess]:
    w = pg_stack.start_worker()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def pg_webhook_worker(pg_stack: Stack) -> Iterator[WorkerProcess]:
    w = pg_stack.start_worker("webhooks", webhooks=True)
    yield w
    w.stop()


def fast_job(**over: Any) -> dict[str, Any]:
    """A job on the tiny model that finishes in seconds."""
    body: dict[str, Any] = {
        "model": "tiny",
        "target_languages": ["zh", "sw"],
        "hyperparameters": {
            "method": "paper",  # a real, non-empty delta on the tiny model; test_jobs also runs the default
            "layers": [1, 2],
            "max_new_tokens": 4,
            "max_eval_prompts": 2,
            "rank": 4,
            "batch_size": 8,
        },
        "metadata": {"team": "safety"},
    }
    body.update(over)
    return body


def slow_job(**over: Any) -> dict[str, Any]:
    """A tiny-model job kept busy for many seconds by long generations, one prompt per batch."""
    body = fast_job(**over)
    body["hyperparameters"] = {
        **body["hyperparameters"],
        "max_new_tokens": 64,
        "batch_size": 1,
        "max_eval_prompts": 50,
    }
    return body

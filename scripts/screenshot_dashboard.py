"""Screenshot a job's dashboard page in headless Chromium (how docs/dashboard-demo.png is made).

Either point it at a running server (the key from LINGUA_EDIT_API_KEY, never a flag, so it is not in `ps`):

    LINGUA_EDIT_API_KEY=le_... python scripts/screenshot_dashboard.py --base http://127.0.0.1:8000 \\
        --job edit_... --out docs/dashboard-demo.png

or at the data directory of `lingua-edit demo`: it starts `lingua-edit serve --no-worker` on it, creates a key
for the demo's tenant and takes the newest finished job:

    python scripts/screenshot_dashboard.py --data-dir ./lingua-edit-demo --out docs/dashboard-demo.png

Needs Debian's chromium (or LINGUA_EDIT_CHROMIUM) and the dev extra (playwright).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_data_dir(data_dir: Path, tenant: str) -> Iterator[tuple[str, str]]:
    """`lingua-edit serve --no-worker` on an existing data directory; yields (base URL, a new key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINGUA_EDIT_")}
    env["LINGUA_EDIT_DATA_DIR"] = str(data_dir.resolve())
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port), "--log-level", "WARNING"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("lingua-edit serve did not start")
            time.sleep(0.2)
        key = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", tenant], cwd=ROOT,
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
        yield base, key
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def newest_finished_job(base: str, key: str) -> str:
    jobs = httpx.get(f"{base}/v1/edits", params={"status": "succeeded", "limit": 1},
                     headers={"Authorization": f"Bearer {key}"}).raise_for_status().json()["data"]
    if not jobs:
        raise SystemExit("no finished job for this key")
    return jobs[0]["id"]


def screenshot(base: str, key: str, job_id: str, out: Path, width: int = 1280) -> None:
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("LINGUA_EDIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(f"{base}/dashboard/jobs/{job_id}")
        page.fill("#api-key", key)
        page.click("#use-key")
        page.wait_for_selector("#status.status-succeeded, #status.status-failed", timeout=30_000)
        page.wait_for_selector('#charts[data-loaded="true"], #error-box:not([hidden])', timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('#charts img')].every(i => i.complete)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    print(f"{out}: {job_id}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="URL of a running lingua-edit API")
    p.add_argument("--job", help="job id (default: the key's newest finished job)")
    p.add_argument("--data-dir", type=Path, help="a `lingua-edit demo` data directory to serve instead")
    p.add_argument("--tenant", default="demo", help="tenant of the key created with --data-dir")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard-demo.png")
    a = p.parse_args()
    if a.data_dir:
        with serve_data_dir(a.data_dir, a.tenant) as (base, key):
            screenshot(base, key, a.job or newest_finished_job(base, key), a.out)
        return
    key = os.environ.get("LINGUA_EDIT_API_KEY")
    if not a.base or not key:
        p.error("give --data-dir, or --base with the key in LINGUA_EDIT_API_KEY")
    screenshot(a.base, key, a.job or newest_finished_job(a.base, key), a.out)


if __name__ == "__main__":
    main()

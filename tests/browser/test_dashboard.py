"""The dashboard in a real headless Chromium against a real `lingua-edit serve`: a finished job's page shows
its charts (PNG that decodes and is not blank) and per-language table, a running job's progress advances,
a failed job shows its error, and another tenant's key sees none of them."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser.conftest import Served
from tests.service.conftest import fast_job, slow_job
from worker.engine.config import SUPPORTED_LANGS

pytestmark = pytest.mark.browser

TERMINAL = ("succeeded", "failed", "cancelled")


def _wait(c: Any, job_id: str, until: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/edits/{job_id}").json()
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def _long_job() -> dict[str, Any]:
    """Busy for minutes on the tiny model (cancelled when the tests are done), so it is surely still running."""
    body = slow_job(target_languages=[lg for lg in SUPPORTED_LANGS if lg != "en"])
    body["hyperparameters"]["max_new_tokens"] = 128
    return body


@pytest.fixture(scope="module")
def jobs(served: Served) -> Iterator[dict[str, str]]:
    """acme's jobs: one failed, one finished, one running (the worker takes them in this order)."""
    with served.client("acme") as c:
        failed = c.post("/v1/edits", json=fast_job(model="no-such-org/no-such-model")).json()["id"]
        done = c.post("/v1/edits", json=fast_job()).json()["id"]
        assert _wait(c, failed, lambda j: j["status"] in TERMINAL)["status"] == "failed"
        job = _wait(c, done, lambda j: j["status"] in TERMINAL)
        assert job["status"] == "succeeded", (job["error"], served.log.read_text()[-3000:])
        running = c.post("/v1/edits", json=_long_job()).json()["id"]
        _wait(c, running, lambda j: j["status"] == "running" and j["progress"]["phase"] not in (None, "load"))
        yield {"failed": failed, "done": done, "running": running}
        c.post(f"/v1/edits/{running}/cancel")


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    p = ctx.new_page()
    p.set_default_timeout(30_000)
    yield p
    ctx.close()


def _sign_in(page: Any, served: Served, tenant: str, path: str = "/dashboard") -> None:
    page.goto(served.base + path)
    page.fill("#api-key", served.keys[tenant])
    page.click("#use-key")


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def test_running_job_progress_advances(page: Any, served: Served, jobs: dict[str, str],
                                       artifacts_dir: Path) -> None:
    _sign_in(page, served, "acme", f"/dashboard/jobs/{jobs['running']}")
    page.wait_for_selector("#status.status-running")
    prog = page.locator("#progress")
    prog.wait_for()
    first = (prog.get_attribute("data-phase"), int(prog.get_attribute("data-done")))
    page.screenshot(path=str(artifacts_dir / "dashboard-running-job.png"), full_page=True)
    # the page polls: the phase or the done count it shows moves on without a reload
    page.wait_for_function(
        "([phase, done]) => { const p = document.getElementById('progress');"
        " return p.dataset.phase !== phase || Number(p.dataset.done) > done; }",
        arg=[first[0], first[1]], timeout=30_000,
    )
    assert page.locator("#progress-text").inner_text().startswith("running")


def test_finished_job_shows_charts_and_table(page: Any, served: Served, jobs: dict[str, str],
                                             artifacts_dir: Path) -> None:
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))
    _sign_in(page, served, "acme", f"/dashboard/jobs/{jobs['done']}")
    page.wait_for_selector("#status.status-succeeded")
    rows = page.locator("#languages tbody tr")
    rows.first.wait_for()
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == ["en", "zh", "sw"]
    head = page.locator("#languages thead th").all_inner_texts()
    assert "ASR % before" in head and "borderline refused % after" in head
    flips = [i for i, h in enumerate(head) if h.startswith("harmless newly / no longer refused")]
    assert len(flips) == 1  # the paired flips of report.json, plain · borderline
    assert re.fullmatch(r"\d+/\d+ · \d+/\d+", rows.nth(1).locator("td").nth(flips[0]).inner_text().strip())
    page.wait_for_selector('#charts[data-loaded="true"]')
    img = page.locator('#charts img[data-name="charts/asr.png"]')
    page.wait_for_function("() => [...document.querySelectorAll('#charts img')].every(i => i.complete "
                           "&& i.naturalWidth > 0)")
    assert page.locator("#charts img").count() >= 4  # asr, refusal, utility, neurons, cost
    assert img.get_attribute("src").startswith("blob:")  # fetched with the header; the key is in no URL
    # the browser decoded the PNG: its natural size is the chart's; what it shows is not a blank box
    assert img.evaluate("i => i.naturalWidth") > 300
    shown = _pixels(img.screenshot())
    assert shown.std() > 20, "chart looks blank"
    assert len(np.unique(shown.reshape(-1, 3), axis=0)) > 50
    # the key travels only in the Authorization header of same-origin API calls, never in a URL
    key = served.keys["acme"]
    assert all(key not in r.url for r in requests)
    api_calls = [r for r in requests if "/v1/" in r.url]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {key}" for r in api_calls)
    assert all(r.url.startswith((served.base, "blob:", "data:")) for r in requests)
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("sessionStorage.getItem('lingua-edit-api-key')") == served.keys["acme"]
    names = page.locator("#artifacts button").all_inner_texts()
    assert {"report.html", "delta.safetensors", "model/config.json", "model/README.md"} <= set(names)
    assert page.locator("#events tbody tr").count() >= 3
    # sample answers from report.json, with the judge's verdict on each side
    assert page.locator("#samples table.samples").count() == 3
    verdicts = page.locator('#samples table[data-lang="zh"] tbody span').all_inner_texts()
    assert verdicts and set(verdicts) <= {"refused", "attack succeeded", "degenerate (neither)"}
    page.screenshot(path=str(artifacts_dir / "dashboard-finished-job.png"), full_page=True)
    # a download goes through fetch + blob URL too, and yields the artifact's bytes
    with page.expect_download() as dl:
        page.click('#artifacts button[data-artifact="report.html"]')
    body = Path(dl.value.path()).read_text()
    assert body.startswith("<!doctype html>") and "data:image/png;base64," in body


def test_job_list_and_failed_job(page: Any, served: Served, jobs: dict[str, str], artifacts_dir: Path) -> None:
    _sign_in(page, served, "acme")
    for key, status in (("done", "succeeded"), ("failed", "failed"), ("running", "running")):
        page.wait_for_selector(f'#jobs tr[data-job-id="{jobs[key]}"][data-status="{status}"]')
    page.screenshot(path=str(artifacts_dir / "dashboard-job-list.png"), full_page=True)
    page.click(f'#jobs a[href="/dashboard/jobs/{jobs["failed"]}"]')  # the key survives navigation in the tab
    page.wait_for_selector("#error-box:not([hidden])")
    assert page.locator("#error-code").inner_text() == "model_not_found"
    # one message for every unknown model (it must not reveal which names or paths exist on the server)
    assert page.locator("#error-message").inner_text().startswith("unknown model")
    page.screenshot(path=str(artifacts_dir / "dashboard-failed-job.png"), full_page=True)


def test_other_tenant_sees_neither_job(page: Any, served: Served, jobs: dict[str, str],
                                       artifacts_dir: Path) -> None:
    _sign_in(page, served, "globex")
    page.wait_for_selector("#no-jobs:not([hidden])")
    assert page.locator("#jobs tbody tr").count() == 0
    for key in ("done", "running"):
        page.goto(f"{served.base}/dashboard/jobs/{jobs[key]}")
        page.wait_for_selector("#message.error")
        assert "No such job" in page.locator("#message").inner_text()
        assert page.locator("#job").is_hidden()
        assert page.locator("#summary tbody tr, #languages tbody tr, #events tbody tr").count() == 0
    page.screenshot(path=str(artifacts_dir / "dashboard-other-tenant.png"), full_page=True)


def test_bad_key_is_refused_and_forgotten(page: Any, served: Served, jobs: dict[str, str]) -> None:
    page.goto(served.base + "/dashboard")
    page.fill("#api-key", "le_not-a-key")
    page.click("#use-key")
    page.wait_for_selector("#message.error")
    assert "not accepted" in page.locator("#message").inner_text()
    assert page.evaluate("sessionStorage.getItem('lingua-edit-api-key')") is None
    assert page.locator("#jobs tbody tr").count() == 0


def test_pages_are_shells_with_strict_headers(served: Served, jobs: dict[str, str]) -> None:
    import httpx

    r = httpx.get(f"{served.base}/dashboard/jobs/{jobs['done']}")  # no key: the shell, without job data
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["referrer-policy"] == "no-referrer" and "set-cookie" not in r.headers
    assert "tiny" not in r.text  # the model name is job data: the page fetches it with the key
    assert httpx.get(f"{served.base}/dashboard/jobs/%3Cscript%3E").status_code == 422
    assert not any(p.startswith("/dashboard") for p in httpx.get(f"{served.base}/openapi.json").json()["paths"])

"""Registry-ready outputs on the real stack: a job's `destination` written in Hugging Face layout under an
allow-listed root, base_revision rules, and retention deleting old finished jobs' artifacts and rows."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import update

from core.db.base import utcnow
from core.db.models import EditJob
from core.retention import purge_expired
from tests.service.conftest import Stack, WorkerProcess, fast_job

pytestmark = pytest.mark.service


def test_destination_written_in_hf_layout(pg_stack: Stack, pg_worker: WorkerProcess) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    root = pg_stack.tmp / "destinations"
    target = root / "acme" / f"run-{secrets.token_hex(3)}"
    job = pg_stack.submit(fast_job(destination=str(target)))
    assert job["destination"] == str(target)
    done = pg_stack.wait_terminal(job["id"])
    assert done["status"] == "succeeded", (done["error"], pg_worker.log.read_text()[-3000:])
    files = {p.name for p in target.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "delta.safetensors", "manifest.json"} <= files
    assert not [p for p in root.rglob(".*tmp-*")]  # no temporary directory left behind
    assert ModelCard.load(target / "README.md").data.base_model
    assert AutoModelForCausalLM.from_pretrained(target).config.model_type == "qwen2"
    events = pg_stack.client.get(f"/v1/edits/{job['id']}/events", params={"limit": 100}).json()["data"]
    assert any(e["type"] == "destination" and e["data"]["location"] == str(target) for e in events)

    # the same destination again: never overwritten; the job still succeeds, the event says why
    again = pg_stack.wait_terminal(pg_stack.submit(fast_job(destination=str(target)))["id"])
    assert again["status"] == "succeeded"
    events = pg_stack.client.get(f"/v1/edits/{again['id']}/events", params={"limit": 100}).json()["data"]
    assert any(e["type"] == "destination" and e["level"] == "error" and "already exists" in e["message"]
               for e in events)


@pytest.mark.parametrize(
    ("over", "param"),
    [
        ({"destination": "/etc/lingua"}, "destination"),
        ({"destination": "relative/dir"}, "destination"),
        ({"destination": "s3://somebody-elses-bucket/x"}, "destination"),
        ({"base_revision": "main"}, "base_revision"),  # tiny is a registered (local) model
        ({"model": "org/some-model", "base_revision": "../../x"}, "base_revision"),
    ],
)
def test_bad_destination_or_revision(pg_stack: Stack, over: dict, param: str) -> None:
    r = pg_stack.client.post("/v1/edits", json=fast_job(**over))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_hub_revision_is_recorded(pg_stack: Stack) -> None:
    r = pg_stack.client.post("/v1/edits", json=fast_job(model="org/some-model", base_revision="a" * 40))
    assert r.status_code == 202 and r.json()["base_revision"] == "a" * 40
    pg_stack.client.post(f"/v1/edits/{r.json()['id']}/cancel")


def test_retention_deletes_old_finished_jobs(
    pg_stack: Stack, pg_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = pg_stack.wait_terminal(pg_stack.submit(fast_job())["id"])
    assert old["status"] == "succeeded"
    fresh = pg_stack.submit(fast_job())
    pg_stack.client.post(f"/v1/edits/{fresh['id']}/cancel")
    with pg_stack.ctx.sessions() as s:
        s.execute(update(EditJob).where(EditJob.id == old["id"]).values(finished_at=utcnow() - timedelta(days=10)))
        s.commit()
    storage = pg_stack.settings.resolved_storage_dir() / "edits" / old["id"]
    assert storage.is_dir()
    monkeypatch.setattr(pg_stack.settings, "retention_days", 0)
    assert purge_expired(pg_stack.ctx) == []  # 0 = keep everything
    monkeypatch.setattr(pg_stack.settings, "retention_days", 7)
    deleted = purge_expired(pg_stack.ctx)
    assert old["id"] in deleted and fresh["id"] not in deleted
    assert not storage.exists()
    assert pg_stack.client.get(f"/v1/edits/{old['id']}").status_code == 404
    assert pg_stack.client.get(f"/v1/edits/{fresh['id']}").status_code == 200

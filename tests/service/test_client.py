"""lingua_edit_client.Client (clients/python) over real HTTP (uvicorn on the PostgreSQL + Redis stack, a real
worker): the typed methods, the error envelope, a resumed sha256-checked download with progress, the model
folder loaded with from_pretrained, and DELETE."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lingua_edit_client import APIError as LinguaEditAPIError
from lingua_edit_client import AsyncClient
from lingua_edit_client import Client as LinguaEditClient
from lingua_edit_client import Edit as EditOut

from tests.service.conftest import TINY_SOURCE, Stack, WorkerProcess, fast_job

pytestmark = pytest.mark.service


class RecordingTransport(httpx.HTTPTransport):
    """Remembers (method, path, Range header, status) of every request the client makes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = super().handle_request(request)
        self.seen.append((request.method, request.url.path, request.headers.get("range"), r.status_code))
        return r


@pytest.fixture(scope="module")
def base_url(pg_stack: Stack) -> Iterator[str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(pg_stack.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def api_key(pg_stack: Stack) -> str:
    return pg_stack.client.headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def client(base_url: str, api_key: str) -> Iterator[LinguaEditClient]:
    with LinguaEditClient(base_url, api_key, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def finished(base_url: str, api_key: str, pg_worker: WorkerProcess) -> tuple[EditOut, list[EditOut]]:
    """One tiny-model job run through the client; returns the final job and every state wait() saw."""
    seen: list[EditOut] = []
    body = fast_job(metadata={"suite": "client", "run": secrets.token_hex(4)})
    with LinguaEditClient(base_url, api_key, timeout=30) as c:
        job = c.create_edit(**body, idempotency_key=body["metadata"]["run"])
        assert job.status == "queued"
        again = c.create_edit(**body, idempotency_key=body["metadata"]["run"])
        assert again.id == job.id
        done = c.wait(job.id, poll_interval=0.2, on_progress=seen.append, timeout=180)
        assert done.is_terminal
    assert done.status == "succeeded", (done.error, pg_worker.log.read_text()[-3000:])
    return done, seen


def test_client_methods(client: LinguaEditClient, finished: tuple[EditOut, list[EditOut]], tmp_path: Path) -> None:
    job, seen = finished
    assert seen and seen[-1].status == "succeeded" and any(s.progress.phase for s in seen)
    assert [r.language for r in job.results] == ["en", "zh", "sw"]
    assert client.ready()

    events = list(client.events(job.id, page_size=2))  # several pages
    assert events[0].type == "queued" and events[-1].type == "finished"
    assert [e.id for e in events] == sorted({e.id for e in events})

    mine = list(client.list_edits(metadata={"run": job.metadata["run"]}, page_size=1))
    assert [j.id for j in mine] == [job.id]
    many = list(client.list_edits(page_size=1, limit=3))
    assert 1 <= len(many) <= 3 and len({j.id for j in many}) == len(many)
    assert all(j.status == "succeeded" for j in client.list_edits(status="succeeded", page_size=2, limit=4))

    names = {a.name: a for a in client.list_artifacts(job.id)}
    assert {"model/README.md", "model/config.json", "delta.safetensors", "manifest.json"} <= set(names)
    assert names["model/README.md"].kind == "model" and names["model/README.md"].content_type == "text/markdown"

    ids = {m.id: m.source for m in client.models()}
    assert ids["demo"] == "demo" and ids["tiny"] == "registered"

    rows = [
        {"id": f"{k}{i}", "lang": lg, "prompt": f"{k} prompt {i} in {lg}", "kind": kind}
        for i in range(4)
        for lg in ("en", "zh")
        for k, kind in (("h", "harmful"), ("s", "harmless"))
    ]
    f = tmp_path / "calib.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = client.upload_dataset(f)
    assert ds.rows == len(rows) and ds.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert client.get_dataset(ds.id).id == ds.id

    with pytest.raises(LinguaEditAPIError) as e:
        client.get_edit("edit_doesnotexist")
    assert (e.value.status, e.value.code, e.value.param) == (404, "not_found", "id")
    with pytest.raises(LinguaEditAPIError) as e:
        client.create_edit("no-such-model", target_languages=["zh"])
    assert (e.value.status, e.value.param) == (422, "model")
    with pytest.raises(LinguaEditAPIError) as e:
        client.cancel_edit(job.id)
    assert (e.value.status, e.value.code) == (409, "conflict")
    queued = client.create_edit("tiny", target_languages=["zh"], metadata={"suite": "client-cancel"})
    assert client.cancel_edit(queued.id).status in ("cancelled", "cancelling")
    with LinguaEditClient(client.base_url, "le_wrong") as bad, pytest.raises(LinguaEditAPIError) as e:
        bad.get_edit(job.id)
    assert (e.value.status, e.value.code) == (401, "unauthorized")


def test_resumed_download(
    base_url: str, api_key: str, finished: tuple[EditOut, list[EditOut]], tmp_path: Path
) -> None:
    job, _ = finished
    art = next(a for a in job.artifacts if a.name == "model/model.safetensors")
    rec = RecordingTransport()
    with LinguaEditClient(base_url, api_key, transport=rec) as c:
        url = f"/v1/edits/{job.id}/artifacts/model/model.safetensors"
        full = c._http.get(url).content
        assert hashlib.sha256(full).hexdigest() == art.sha256 and len(full) == art.size

        # an interrupted download left the first bytes in dest.part: only the rest is fetched
        dest = tmp_path / "dl" / "model.safetensors"
        dest.parent.mkdir()
        cut = art.size // 3
        dest.with_name("model.safetensors.part").write_bytes(full[:cut])
        rec.seen.clear()
        seen: list[tuple[int, int]] = []
        assert c.download_artifact(job.id, art.name, dest, on_progress=lambda d, t: seen.append((d, t))) == dest
        # progress counts from the resumed offset up to the size
        assert seen[0][0] > cut and seen[-1] == (art.size, art.size)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert dest.read_bytes() == full and not dest.with_name("model.safetensors.part").exists()
        gets = [s for s in rec.seen if s[1] == url]
        assert gets == [("GET", url, f"bytes={cut}-", 206)]

        # already complete and correct: nothing is downloaded
        rec.seen.clear()
        c.download_artifact(job.id, art.name, dest)
        assert [s for s in rec.seen if s[1] == url] == []

        # a truncated dest (curl-style) is resumed too
        dest.write_bytes(full[:100])
        rec.seen.clear()
        c.download_artifact(job.id, art.name, dest)
        assert dest.read_bytes() == full
        assert [s[2:] for s in rec.seen if s[1] == url] == [("bytes=100-", 206)]

        # a corrupt partial file fails the sha256 check and is fetched again from byte 0
        dest.unlink()
        dest.with_name("model.safetensors.part").write_bytes(b"\0" * cut)
        rec.seen.clear()
        c.download_artifact(job.id, art.name, dest)
        assert dest.read_bytes() == full
        assert [s[2:] for s in rec.seen if s[1] == url] == [(f"bytes={cut}-", 206), (None, 200)]

        # resume=False always starts over
        dest.with_name("model.safetensors.part").write_bytes(full[:cut])
        dest.unlink()
        rec.seen.clear()
        c.download_artifact(job.id, art.name, dest, resume=False)
        assert dest.read_bytes() == full and [s[2:] for s in rec.seen if s[1] == url] == [(None, 200)]


def test_model_folder_loads(
    client: LinguaEditClient, finished: tuple[EditOut, list[EditOut]], tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    job, _ = finished
    progress: list[tuple[int, int]] = []
    model_dir = client.download_model(job.id, tmp_path / "edited", on_progress=lambda d, t: progress.append((d, t)))
    per_file = {a.name.removeprefix("model/"): a for a in job.artifacts if a.name.startswith("model/")}
    on_disk = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert on_disk == set(per_file)
    for rel, a in per_file.items():
        assert hashlib.sha256((model_dir / rel).read_bytes()).hexdigest() == a.sha256, rel
    total = sum(a.size for a in per_file.values())
    assert progress[-1] == (total, total)

    card = ModelCard.load(model_dir / "README.md")
    assert card.data.base_model == TINY_SOURCE and card.data.base_model_relation == "finetune"
    assert card.data.license == "other"  # the tiny model has no card of its own to take a licence from
    assert card.data.language == ["en", "zh", "sw"] and "lingua-edit" in card.data.tags
    assert "| zh |" in card.text and "## Hyperparameters" in card.text and "weights changed" in card.text

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2" and sum(p.numel() for p in model.parameters()) > 0


def test_async_client(base_url: str, api_key: str, finished: tuple[EditOut, list[EditOut]], tmp_path: Path) -> None:
    import asyncio

    job, _ = finished

    async def go() -> tuple[EditOut, list[str], Path]:
        async with AsyncClient(base_url, api_key) as c:
            got = await c.wait(job.id, poll_interval=0.1)
            names = [e.type async for e in c.events(job.id, page_size=3)]
            path = await c.download_artifact(job.id, "manifest.json", tmp_path / "m.json")
            return got, names, path

    got, names, path = asyncio.run(go())
    assert got.id == job.id and got.status == "succeeded" and names[0] == "queued"
    manifest = next(a for a in job.artifacts if a.name == "manifest.json")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest.sha256


def test_delete(client: LinguaEditClient, pg_stack: Stack, pg_worker: WorkerProcess) -> None:
    job = client.create_edit(**fast_job(metadata={"suite": "client-delete"}))
    with pytest.raises(LinguaEditAPIError) as e:  # not while queued or running
        client.delete_edit(job.id)
    assert (e.value.status, e.value.code) == (409, "conflict")
    done = client.wait(job.id, poll_interval=0.2, timeout=180)
    assert done.status == "succeeded"
    root = pg_stack.settings.resolved_storage_dir() / "edits" / job.id
    assert root.is_dir() and any(root.iterdir())
    other = pg_stack.other.delete(f"/v1/edits/{job.id}")  # another tenant: not found, nothing deleted
    assert other.status_code == 404 and root.is_dir()
    client.delete_edit(job.id)
    assert not root.exists()
    with pytest.raises(LinguaEditAPIError) as e:
        client.get_edit(job.id)
    assert e.value.status == 404
    assert pg_stack.client.get(f"/v1/edits/{job.id}/events").status_code == 404

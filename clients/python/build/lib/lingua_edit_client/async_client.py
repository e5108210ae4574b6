"""The asynchronous client: the same methods as Client, awaited (iterators are async iterators)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from . import _common as c
from .errors import APIError, ChecksumMismatchError, raise_for
from .models import Artifact, ArtifactList, Dataset, Edit, EditList, Event, EventList, ModelInfo, ModelList
from .retry import AsyncRetryTransport, RetryPolicy


class AsyncClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, key = c.resolve(base_url, api_key)
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=c.client_headers(key),
            timeout=timeout,
            transport=AsyncRetryTransport(transport, retry),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await self._http.request(method, path, **kw)
        raise_for(r)
        return r

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def models(self) -> list[ModelInfo]:
        return ModelList.model_validate((await self._request("GET", "/v1/models")).json()).data

    async def create_edit(
        self, model: str, *, idempotency_key: str | None = None, **fields: Any
    ) -> Edit:
        """Keyword arguments as in Client.create_edit."""
        body = c.edit_body(model, **fields)
        r = await self._request("POST", "/v1/edits", json=body, headers=c.create_headers(idempotency_key))
        return Edit.model_validate(r.json())

    async def get_edit(self, edit_id: str) -> Edit:
        return Edit.model_validate((await self._request("GET", f"/v1/edits/{edit_id}")).json())

    async def list_edits(
        self,
        *,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
        page_size: int = 20,
        limit: int | None = None,
    ) -> AsyncIterator[Edit]:
        params = c.list_params(status, metadata, page_size)
        yielded = 0
        while True:
            page = EditList.model_validate((await self._request("GET", "/v1/edits", params=params)).json())
            for job in page.data:
                yield job
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if not page.has_more or not page.data:
                return
            params["after"] = page.data[-1].id

    async def cancel_edit(self, edit_id: str) -> Edit:
        return Edit.model_validate((await self._request("POST", f"/v1/edits/{edit_id}/cancel")).json())

    async def delete_edit(self, edit_id: str) -> None:
        await self._request("DELETE", f"/v1/edits/{edit_id}")

    async def events(self, edit_id: str, *, after: int | None = None, page_size: int = 100) -> AsyncIterator[Event]:
        params: dict[str, Any] = {"limit": page_size}
        if after is not None:
            params["after"] = after
        while True:
            r = await self._request("GET", f"/v1/edits/{edit_id}/events", params=params)
            page = EventList.model_validate(r.json())
            for e in page.data:
                yield e
            if not page.has_more or not page.data:
                return
            params["after"] = page.data[-1].id

    async def wait(
        self,
        edit_id: str,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        on_progress: Callable[[Edit], None | Awaitable[None]] | None = None,
    ) -> Edit:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_edit(edit_id)
            if on_progress is not None:
                maybe = on_progress(job)
                if asyncio.iscoroutine(maybe):
                    await maybe
            if job.is_terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"edit {edit_id} still {job.status} after {timeout:.0f}s")
            await asyncio.sleep(poll_interval)

    async def list_artifacts(self, edit_id: str) -> list[Artifact]:
        r = await self._request("GET", f"/v1/edits/{edit_id}/artifacts")
        return ArtifactList.model_validate(r.json()).data

    async def download_artifact(
        self,
        edit_id: str,
        name: str,
        dest: str | os.PathLike[str],
        *,
        resume: bool = True,
        artifact: Artifact | None = None,
        on_progress: c.ProgressCallback | None = None,
    ) -> Path:
        art = artifact or next((a for a in await self.list_artifacts(edit_id) if a.name == name), None)
        if art is None:
            raise APIError(404, "not_found", f"no artifact {name!r}", "name")
        dl = c.Download(art, Path(dest), resume)
        if dl.already_done():
            if on_progress:
                on_progress(art.size, art.size)
            return dl.dest
        for _ in range(2):
            async with self._http.stream(
                "GET", c.artifact_path(edit_id, art.name), headers=dl.request_headers(), follow_redirects=True
            ) as r:
                if not r.is_success:
                    await r.aread()
                    raise_for(r)
                f, h = dl.start(r.status_code, r.headers.get("content-range"))
                done = dl.have() if r.status_code == 206 else 0
                with f:
                    async for block in r.aiter_bytes(c.CHUNK):
                        h.update(block)
                        f.write(block)
                        done += len(block)
                        if on_progress:
                            on_progress(done, art.size)
            if dl.finish(h.hexdigest()):
                return dl.dest
        raise ChecksumMismatchError(f"sha256 of {art.name} does not match {art.sha256}")

    async def download_model(
        self, edit_id: str, dest_dir: str | os.PathLike[str], *, on_progress: c.ProgressCallback | None = None
    ) -> Path:
        files = c.model_files(await self.list_artifacts(edit_id))
        if not files:
            raise APIError(404, "not_found", "this job has no model artifacts", "id")
        total, base, out = sum(a.size for a, _ in files), 0, Path(dest_dir)
        for art, rel in files:
            cb = (lambda d, _t, b=base: on_progress(b + d, total)) if on_progress else None
            await self.download_artifact(edit_id, art.name, out / rel, artifact=art, on_progress=cb)
            base += art.size
        return out

    async def upload_dataset(self, path: str | os.PathLike[str]) -> Dataset:
        p = Path(path)
        r = await self._request("POST", "/v1/datasets", files={"file": (p.name, p.read_bytes())})
        return Dataset.model_validate(r.json())

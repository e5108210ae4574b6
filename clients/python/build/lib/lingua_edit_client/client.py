"""The synchronous client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from . import _common as c
from .errors import APIError, ChecksumMismatchError, raise_for
from .models import (
    Artifact,
    ArtifactList,
    Dataset,
    Edit,
    EditList,
    Event,
    EventList,
    ModelInfo,
    ModelList,
    WebhookSecret,
)
from .retry import RetryPolicy, RetryTransport


class Client:
    """A lingua-edit server. `base_url` and `api_key` default to $LINGUA_EDIT_URL and $LINGUA_EDIT_API_KEY.

    Connection failures, 429 and 503 are retried with backoff (honouring Retry-After); any other error
    answer raises APIError at once.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, key = c.resolve(base_url, api_key)
        self._http = httpx.Client(
            base_url=url,
            headers=c.client_headers(key),
            timeout=timeout,
            transport=RetryTransport(transport, retry),
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        raise_for(r)
        return r

    # -- service -----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when the server answers /readyz with 200 (database and broker reachable)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[ModelInfo]:
        return ModelList.model_validate(self._request("GET", "/v1/models").json()).data

    # -- edits -------------------------------------------------------------------------------------------
    def create_edit(
        self,
        model: str,
        *,
        target_languages: list[str] | None = None,
        source_language: str | None = None,
        dataset_id: str | None = None,
        calibration_rows: list[dict[str, Any]] | None = None,
        eval_split: float | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        judge: str | None = None,
        metadata: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        base_revision: str | None = None,
        destination: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Edit:
        """Submit an edit job (unset arguments take the server's defaults) and return the queued job.
        Without an `idempotency_key` one is generated, so the client's own retries never submit twice."""
        body = c.edit_body(
            model,
            target_languages=target_languages,
            source_language=source_language,
            dataset_id=dataset_id,
            calibration_rows=calibration_rows,
            eval_split=eval_split,
            hyperparameters=hyperparameters,
            judge=judge,
            metadata=metadata,
            webhook_url=webhook_url,
            base_revision=base_revision,
            destination=destination,
            **extra,
        )
        r = self._request("POST", "/v1/edits", json=body, headers=c.create_headers(idempotency_key))
        return Edit.model_validate(r.json())

    def get_edit(self, edit_id: str) -> Edit:
        return Edit.model_validate(self._request("GET", f"/v1/edits/{edit_id}").json())

    def list_edits(
        self,
        *,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
        page_size: int = 20,
        limit: int | None = None,
    ) -> Iterator[Edit]:
        """Newest first, following the `after` cursor; stops after `limit` jobs if given."""
        params = c.list_params(status, metadata, page_size)
        yielded = 0
        while True:
            page = EditList.model_validate(self._request("GET", "/v1/edits", params=params).json())
            for job in page.data:
                yield job
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if not page.has_more or not page.data:
                return
            params["after"] = page.data[-1].id

    def cancel_edit(self, edit_id: str) -> Edit:
        return Edit.model_validate(self._request("POST", f"/v1/edits/{edit_id}/cancel").json())

    def delete_edit(self, edit_id: str) -> None:
        """Delete a finished job, its rows and its artifacts (409 while it runs: cancel it first)."""
        self._request("DELETE", f"/v1/edits/{edit_id}")

    def events(self, edit_id: str, *, after: int | None = None, page_size: int = 100) -> Iterator[Event]:
        params: dict[str, Any] = {"limit": page_size}
        if after is not None:
            params["after"] = after
        while True:
            page = EventList.model_validate(self._request("GET", f"/v1/edits/{edit_id}/events", params=params).json())
            yield from page.data
            if not page.has_more or not page.data:
                return
            params["after"] = page.data[-1].id

    def wait(
        self,
        edit_id: str,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        on_progress: Callable[[Edit], None] | None = None,
    ) -> Edit:
        """Poll until the job is succeeded, failed or cancelled (or any state the server calls final) and
        return it; `on_progress` sees every polled state. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_edit(edit_id)
            if on_progress is not None:
                on_progress(job)
            if job.is_terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"edit {edit_id} still {job.status} after {timeout:.0f}s")
            time.sleep(poll_interval)

    # -- artifacts ---------------------------------------------------------------------------------------
    def list_artifacts(self, edit_id: str) -> list[Artifact]:
        return ArtifactList.model_validate(self._request("GET", f"/v1/edits/{edit_id}/artifacts").json()).data

    def download_artifact(
        self,
        edit_id: str,
        name: str,
        dest: str | os.PathLike[str],
        *,
        resume: bool = True,
        artifact: Artifact | None = None,
        on_progress: c.ProgressCallback | None = None,
    ) -> Path:
        """Download an artifact to `dest`, check its sha256 (= its ETag) and return `dest`.

        An interrupted download continues from `dest.part` (Range + If-Range); a complete `dest` with the
        right sha256 is left alone. S3 deployments redirect to a presigned URL, which is followed (without
        the API key). ChecksumMismatchError when the bytes do not match, twice in a row.
        """
        art = artifact or next((a for a in self.list_artifacts(edit_id) if a.name == name), None)
        if art is None:
            raise APIError(404, "not_found", f"no artifact {name!r}", "name")
        dl = c.Download(art, Path(dest), resume)
        if dl.already_done():
            if on_progress:
                on_progress(art.size, art.size)
            return dl.dest
        for _ in range(2):
            with self._http.stream(
                "GET", c.artifact_path(edit_id, art.name), headers=dl.request_headers(), follow_redirects=True
            ) as r:
                if not r.is_success:
                    r.read()
                    raise_for(r)
                f, h = dl.start(r.status_code, r.headers.get("content-range"))
                done = dl.have() if r.status_code == 206 else 0
                with f:
                    for block in r.iter_bytes(c.CHUNK):
                        h.update(block)
                        f.write(block)
                        done += len(block)
                        if on_progress:
                            on_progress(done, art.size)
            if dl.finish(h.hexdigest()):
                return dl.dest
        raise ChecksumMismatchError(f"sha256 of {art.name} does not match {art.sha256}")

    def download_model(
        self,
        edit_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        on_progress: c.ProgressCallback | None = None,
    ) -> Path:
        """Download the edited model folder (Hugging Face layout: model card, config, safetensors shards and
        index, tokenizer), every file sha256-checked; `from_pretrained(dest_dir)` loads it."""
        files = c.model_files(self.list_artifacts(edit_id))
        if not files:
            raise APIError(404, "not_found", "this job has no model artifacts", "id")
        total = sum(a.size for a, _ in files)
        base = 0
        out = Path(dest_dir)
        for art, rel in files:
            cb = (lambda d, _t, b=base: on_progress(b + d, total)) if on_progress else None
            self.download_artifact(edit_id, art.name, out / rel, artifact=art, on_progress=cb)
            base += art.size
        return out

    # -- datasets ----------------------------------------------------------------------------------------
    def upload_dataset(self, path: str | os.PathLike[str]) -> Dataset:
        """Upload a calibration set (.jsonl or .csv); returns the stored dataset (id, rows, sha256)."""
        p = Path(path)
        r = self._request("POST", "/v1/datasets", files={"file": (p.name, p.read_bytes())})
        return Dataset.model_validate(r.json())

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._request("GET", f"/v1/datasets/{dataset_id}").json())

    # -- webhooks ----------------------------------------------------------------------------------------
    def rotate_webhook_secret(self) -> str:
        """Create or rotate this tenant's webhook signing secret; returns it (the server shows it once)."""
        return str(WebhookSecret.model_validate(self._request("POST", "/v1/webhook-secret").json()).secret)

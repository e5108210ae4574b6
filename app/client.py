"""A Python client for the lingua-edit HTTP API (httpx; responses parsed into the service's own models).

    from app.client import LinguaEditClient

    with LinguaEditClient("http://127.0.0.1:8000", api_key) as le:
        job = le.create_edit("demo", target_languages=["zh", "sw"], idempotency_key="run-42")
        job = le.wait(job.id, on_progress=lambda j: print(j.status, j.progress.phase))
        le.download_artifact(job.id, "model.tar", "out/model.tar")  # resumable, sha256-checked

Every non-2xx answer raises LinguaEditAPIError with the fields of the error envelope.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from app.datasets.schemas import DatasetOut
from app.edits.schemas import TERMINAL, ArtifactList, ArtifactOut, EditList, EditOut, EventList, EventOut
from app.models.router import ModelList, ModelOut

__all__ = ["ChecksumMismatchError", "LinguaEditAPIError", "LinguaEditClient"]

CHUNK = 1 << 20


class LinguaEditAPIError(Exception):
    """An error answer from the API: HTTP status plus the envelope's code, message and param."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.status, self.code, self.message, self.param = status, code, message, param


class ChecksumMismatchError(Exception):
    """A downloaded artifact's sha256 differs from the one the API recorded."""


def _raise_for(r: httpx.Response) -> None:
    if r.is_success:
        return
    r.read()  # a streamed response's body is not loaded yet
    try:
        err = r.json()["error"]
        raise LinguaEditAPIError(r.status_code, str(err["code"]), str(err["message"]), err.get("param"))
    except (ValueError, KeyError, TypeError):
        raise LinguaEditAPIError(r.status_code, "http_error", r.text[:500] or r.reason_phrase) from None


class LinguaEditClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 60.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "lingua-edit-client/0.1"},
            timeout=timeout,
            transport=transport,
        )

    # -- plumbing ----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LinguaEditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        _raise_for(r)
        return r

    # -- service -----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when the API answers /readyz with 200 (database and broker reachable)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[ModelOut]:
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
        idempotency_key: str | None = None,
    ) -> EditOut:
        """Submit an edit job (unset arguments take the server's defaults); 202 → the queued job."""
        body: dict[str, Any] = {"model": model}
        optional = {
            "target_languages": target_languages,
            "source_language": source_language,
            "dataset_id": dataset_id,
            "calibration_rows": calibration_rows,
            "eval_split": eval_split,
            "hyperparameters": dict(hyperparameters) if hyperparameters is not None else None,
            "judge": judge,
            "metadata": dict(metadata) if metadata is not None else None,
            "webhook_url": webhook_url,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return EditOut.model_validate(self._request("POST", "/v1/edits", json=body, headers=headers).json())

    def get_edit(self, edit_id: str) -> EditOut:
        return EditOut.model_validate(self._request("GET", f"/v1/edits/{edit_id}").json())

    def list_edits(
        self,
        *,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
        page_size: int = 20,
        limit: int | None = None,
    ) -> Iterator[EditOut]:
        """Newest first, following the `after` cursor while `has_more`; stops after `limit` jobs if given."""
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status
        for k, v in (metadata or {}).items():
            params[f"metadata[{k}]"] = v
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

    def cancel_edit(self, edit_id: str) -> EditOut:
        return EditOut.model_validate(self._request("POST", f"/v1/edits/{edit_id}/cancel").json())

    def events(self, edit_id: str, *, after: int | None = None, page_size: int = 100) -> Iterator[EventOut]:
        """The job's event log from the start (or after event id `after`), following pages."""
        params: dict[str, Any] = {"limit": page_size}
        if after is not None:
            params["after"] = after
        while True:
            page = EventList.model_validate(
                self._request("GET", f"/v1/edits/{edit_id}/events", params=params).json()
            )
            yield from page.data
            if not page.has_more or not page.data:
                return
            params["after"] = page.data[-1].id

    def wait(
        self,
        edit_id: str,
        poll_interval: float = 1.0,
        on_progress: Callable[[EditOut], None] | None = None,
        timeout: float | None = None,
    ) -> EditOut:
        """Poll until the job is succeeded, failed or cancelled and return it; `on_progress` sees every
        polled state. TimeoutError after `timeout` seconds (the job keeps running; cancel it if you wish)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_edit(edit_id)
            if on_progress is not None:
                on_progress(job)
            if job.status in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"edit {edit_id} still {job.status} after {timeout:.0f}s")
            time.sleep(poll_interval)

    # -- artifacts ---------------------------------------------------------------------------------------
    def list_artifacts(self, edit_id: str) -> list[ArtifactOut]:
        return ArtifactList.model_validate(self._request("GET", f"/v1/edits/{edit_id}/artifacts").json()).data

    def download_artifact(
        self,
        edit_id: str,
        name: str,
        dest: str | os.PathLike[str],
        *,
        resume: bool = True,
        artifact: ArtifactOut | None = None,
    ) -> Path:
        """Download an artifact to `dest` and check its sha256; returns `dest`.

        Bytes arrive in `dest + ".part"`, renamed to `dest` once the sha256 matches. With `resume`, an
        existing partial file (`dest.part`, or a shorter `dest`) is continued with a Range request guarded by
        If-Range, so a changed artifact is fetched whole again. A complete `dest` with the right sha256 is
        left as it is. ChecksumMismatchError if the result does not match (the partial file is removed).
        """
        dest = Path(dest)
        art = artifact or next((a for a in self.list_artifacts(edit_id) if a.name == name), None)
        if art is None:
            raise LinguaEditAPIError(404, "not_found", "artifact not found", "name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        if resume and dest.is_file() and not part.exists():
            if dest.stat().st_size == art.size and _sha256_file(dest) == art.sha256:
                return dest
            if dest.stat().st_size < art.size:
                dest.replace(part)  # e.g. a download an earlier tool left truncated
        if not resume or (part.exists() and part.stat().st_size > art.size):
            part.unlink(missing_ok=True)
        for attempt in (1, 2):
            digest = self._fetch(edit_id, art, part)
            if digest == art.sha256:
                part.replace(dest)
                return dest
            part.unlink(missing_ok=True)  # a corrupt prefix or a bad transfer: once more from byte 0
            if attempt == 2:
                raise ChecksumMismatchError(f"sha256 of {name} is {digest}, expected {art.sha256}")
        raise AssertionError("unreachable")

    def _fetch(self, edit_id: str, art: ArtifactOut, part: Path) -> str:
        """Fill `part` up to the artifact's size (continuing what is there) and return the file's sha256."""
        h = hashlib.sha256()
        have = part.stat().st_size if part.exists() else 0
        headers: dict[str, str] = {}
        if 0 < have < art.size:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{art.sha256}"'}
        elif have == art.size:
            return _sha256_file(part)
        with self._http.stream("GET", f"/v1/edits/{edit_id}/artifacts/{art.name}", headers=headers) as r:
            _raise_for(r)
            if r.status_code == 206:
                expect = f"bytes {have}-"
                if not r.headers.get("content-range", "").startswith(expect):
                    raise LinguaEditAPIError(r.status_code, "bad_range", "unexpected Content-Range")
                with open(part, "rb") as f:  # the bytes already on disk count towards the digest
                    while block := f.read(CHUNK):
                        h.update(block)
                mode = "ab"
            else:  # 200: the whole file (no range asked, or the artifact changed)
                mode = "wb"
            with open(part, mode) as f:
                for block in r.iter_bytes(CHUNK):
                    h.update(block)
                    f.write(block)
        return h.hexdigest()

    # -- datasets ----------------------------------------------------------------------------------------
    def upload_dataset(self, path: str | os.PathLike[str]) -> DatasetOut:
        """Upload a calibration set (.jsonl or .csv); returns the stored dataset (id, rows, sha256)."""
        p = Path(path)
        with open(p, "rb") as f:
            r = self._request("POST", "/v1/datasets", files={"file": (p.name, f)})
        return DatasetOut.model_validate(r.json())

    def get_dataset(self, dataset_id: str) -> DatasetOut:
        return DatasetOut.model_validate(self._request("GET", f"/v1/datasets/{dataset_id}").json())


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()

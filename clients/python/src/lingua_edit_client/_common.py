"""What the sync and async clients share: request bodies, paths, headers, download bookkeeping."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .models import Artifact

__version__ = "0.1.0"
CHUNK = 1 << 20
DEFAULT_URL = "http://127.0.0.1:8000"

# on_progress(bytes_done, bytes_total) during a download
ProgressCallback = Callable[[int, int], None]


def client_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"lingua-edit-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Arguments first, then LINGUA_EDIT_URL / LINGUA_EDIT_API_KEY, then the local default URL."""
    url = base_url or os.environ.get("LINGUA_EDIT_URL") or DEFAULT_URL
    return url.rstrip("/"), api_key or os.environ.get("LINGUA_EDIT_API_KEY")


def edit_body(model: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    for k, v in fields.items():
        if v is None:
            continue
        body[k] = dict(v) if isinstance(v, Mapping) else v
    return body


def create_headers(idempotency_key: str | None) -> dict[str, str]:
    # Always a key: a create retried after a lost connection or a 503 then returns the same job.
    return {"Idempotency-Key": idempotency_key or f"le-client-{uuid.uuid4().hex}"}


def list_params(status: str | None, metadata: Mapping[str, str] | None, page_size: int) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": page_size}
    if status:
        params["status"] = status
    for k, v in (metadata or {}).items():
        params[f"metadata[{k}]"] = v
    return params


def artifact_path(edit_id: str, name: str) -> str:
    return f"/v1/edits/{edit_id}/artifacts/{name}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def model_files(artifacts: list[Artifact]) -> list[tuple[Artifact, str]]:
    """The model's artifacts with their paths inside the model folder (`model/config.json` -> `config.json`)."""
    out = []
    for a in artifacts:
        if a.kind == "model" and a.name.startswith("model/"):
            rel = a.name.removeprefix("model/")
            parts = Path(rel).parts
            if rel and not Path(rel).is_absolute() and ".." not in parts:  # never outside the folder
                out.append((a, rel))
    return out


class Download:
    """Bookkeeping of one resumable, hash-checked download into `dest` (bytes go to `dest.part` first)."""

    def __init__(self, art: Artifact, dest: Path, resume: bool) -> None:
        self.art, self.dest = art, dest
        self.part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if resume and dest.is_file() and not self.part.exists():
            if dest.stat().st_size < art.size:
                dest.replace(self.part)  # e.g. a download an earlier tool left truncated
        if not resume or (self.part.exists() and self.part.stat().st_size > art.size):
            self.part.unlink(missing_ok=True)

    def already_done(self) -> bool:
        d = self.dest
        return d.is_file() and not self.part.exists() and d.stat().st_size == self.art.size and (
            sha256_file(d) == self.art.sha256
        )

    def request_headers(self) -> dict[str, str]:
        have = self.part.stat().st_size if self.part.exists() else 0
        if 0 < have < self.art.size:
            # If-Range: a changed artifact comes back whole (200) instead of a mismatched tail
            return {"Range": f"bytes={have}-", "If-Range": f'"{self.art.sha256}"'}
        return {}

    def have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def start(self, status: int, content_range: str | None) -> tuple[Any, Any]:
        """Open the part file for this answer; returns (file, running sha256)."""
        h = hashlib.sha256()
        have = self.have()
        if status == 206:
            if not (content_range or "").startswith(f"bytes {have}-"):
                from .errors import APIError

                raise APIError(status, "bad_range", f"unexpected Content-Range {content_range!r}")
            with open(self.part, "rb") as f:  # the bytes already on disk count towards the digest
                while block := f.read(CHUNK):
                    h.update(block)
            return open(self.part, "ab"), h  # noqa: SIM115 (closed by finish)
        return open(self.part, "wb"), h  # noqa: SIM115

    def finish(self, digest: str) -> bool:
        if digest == self.art.sha256:
            self.part.replace(self.dest)
            return True
        self.part.unlink(missing_ok=True)  # a corrupt prefix or a bad transfer: fetched again from byte 0
        return False

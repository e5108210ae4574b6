"""Artifact listing and downloads: strong ETag (sha256), Content-Length, single Range requests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response, StreamingResponse

from app.artifacts.ranges import RangeNotSatisfiable, parse_range
from app.deps import CtxDep, SessionDep, TenantDep
from app.edits import repository as repo
from app.edits.schemas import ArtifactList
from app.edits.service import artifact_out, get_edit
from app.errors import ApiError, not_found

router = APIRouter(prefix="/v1/edits", tags=["artifacts"])


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(session: SessionDep, tenant: TenantDep, job_id: str) -> ArtifactList:
    job = get_edit(session, tenant, job_id)
    return ArtifactList(data=[artifact_out(a) for a in job.artifacts])


@router.get("/{job_id}/artifacts/{name:path}")
def download_artifact(
    ctx: CtxDep,
    session: SessionDep,
    tenant: TenantDep,
    job_id: str,
    name: str,
    range_: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    job = get_edit(session, tenant, job_id)
    # The name is only ever matched against recorded rows; the storage key comes from the row.
    art = repo.get_artifact(session, job.id, name)
    if art is None:
        raise not_found("artifact", "name")
    etag = f'"{art.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{art.name.rsplit("/", 1)[-1]}"',
    }
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    if if_range and if_range.strip() != etag:
        range_ = None  # the client's copy is stale: send the whole file
    try:
        rng = parse_range(range_, art.size)
    except RangeNotSatisfiable:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"range not satisfiable for {art.size} bytes",
            "Range",
            headers={"Content-Range": f"bytes */{art.size}"},
        ) from None
    if rng is None:
        start, end, status = 0, art.size - 1, 200
    else:
        start, end = rng
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{art.size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    body = ctx.storage.open_range(art.storage_key, start, end) if art.size else iter([b""])
    return StreamingResponse(body, status_code=status, headers=headers, media_type=art.content_type)

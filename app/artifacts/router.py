"""Artifact listing and downloads.

Local storage: Starlette's FileResponse (single and multiple ranges, `If-Range`, `HEAD`), with the sha256 as a
strong ETag. S3 storage: a `307` redirect to a presigned URL, so multi-GB files never pass through the API.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import RedirectResponse, Response
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

from app.deps import CtxDep, SessionDep, TenantDep
from app.edits.service import get_edit
from app.errors import ApiError, not_found
from core.jobs import repository as repo
from core.jobs.schemas import ArtifactList
from core.jobs.view import artifact_out

router = APIRouter(prefix="/v1/edits", tags=["artifacts"])


class ArtifactFileResponse(FileResponse):
    """FileResponse that ignores a Range header it cannot parse (`items=0-1`, `bytes=abc`) and sends the
    whole file with 200, as RFC 9110 §14.2 allows, instead of answering 400."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # an empty list makes FileResponse send the full body


def _opaque(tag: str) -> str:
    """The entity tag with any weak prefix removed (If-None-Match compares weakly, RFC 9110 §13.1.2)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(session: SessionDep, tenant: TenantDep, job_id: str) -> ArtifactList:
    job = get_edit(session, tenant, job_id)
    return ArtifactList(data=[artifact_out(a) for a in job.artifacts])


def _artifact_response(
    ctx: CtxDep,
    session: SessionDep,
    tenant: str,
    job_id: str,
    name: str,
    if_none_match: str | None,
    range_: str | None = None,
) -> Response:
    job = get_edit(session, tenant, job_id)
    # The name is only ever matched against recorded rows; the storage key comes from the row.
    art = repo.get_artifact(session, job.id, name)
    if art is None:
        raise not_found("artifact", "name")
    etag = f'"{art.sha256}"'
    filename = art.name.rsplit("/", 1)[-1]
    headers = {"ETag": etag, "Content-Disposition": f'attachment; filename="{filename}"'}
    if if_none_match is not None:
        tags = [_opaque(t) for t in if_none_match.split(",")]
        if "*" in tags or etag in tags:
            return Response(status_code=304, headers=headers)
    url = ctx.storage.presigned_url(art.storage_key, filename, art.content_type)
    if url is not None:
        return RedirectResponse(url, status_code=307, headers=headers)
    if range_:
        try:  # the same parser FileResponse uses, run first so a 416 carries the JSON error envelope
            ArtifactFileResponse._parse_range_header(range_, art.size)
        except RangeNotSatisfiable:
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"range not satisfiable for {art.size} bytes",
                "Range",
                headers={"Content-Range": f"bytes */{art.size}"},
            ) from None
    path = ctx.storage.local_path(art.storage_key, ctx.settings.data_dir / "tmp")
    return ArtifactFileResponse(path, headers=headers, media_type=art.content_type)


_DOWNLOAD_RESPONSES: dict[int | str, dict] = {
    200: {"description": "the whole file", "content": {"application/octet-stream": {}}},
    206: {"description": "the requested byte range(s)"},
    304: {"description": "If-None-Match matched the ETag (the sha256)"},
    307: {"description": "S3 storage: redirect to a presigned URL (Location)"},
    416: {"description": "Range not satisfiable"},
}


@router.get("/{job_id}/artifacts/{name:path}", responses=_DOWNLOAD_RESPONSES)
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
    # Range and If-Range are read by FileResponse from the request itself; declared here for the schema.
    return _artifact_response(ctx, session, tenant, job_id, name, if_none_match, range_)


@router.head("/{job_id}/artifacts/{name:path}", responses=_DOWNLOAD_RESPONSES)
def head_artifact(
    ctx: CtxDep,
    session: SessionDep,
    tenant: TenantDep,
    job_id: str,
    name: str,
    range_: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    return _artifact_response(ctx, session, tenant, job_id, name, if_none_match, range_)

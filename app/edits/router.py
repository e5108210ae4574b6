from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from app.deps import BearerDep, PageDep, SessionDep, TenantDep
from app.edits import service
from app.errors import ApiError, ErrorEnvelope
from core.jobs import repository as repo
from core.jobs.lifecycle import CANCELLED
from core.jobs.schemas import EditCreate, EditList, EditOut, EventList, EventOut, Status
from core.jobs.view import render
from core.webhooks import notify

router = APIRouter(prefix="/v1/edits", tags=["edits"])
MAX_EVENT_ID = 2**63 - 1  # event ids are BIGINT
_META = re.compile(r"^metadata\[(.{1,64})\]$")


@router.post(
    "",
    status_code=202,
    response_model=EditOut,
    responses={429: {"model": ErrorEnvelope, "description": "the tenant has too many queued jobs; see Retry-After"}},
)
def create_edit(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    body: EditCreate,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> EditOut:
    job, _created = service.create_edit(request.app.state.ctx, session, tenant, body, idempotency_key)
    response.headers["Location"] = f"/v1/edits/{job.id}"
    return render(session, job)


@router.get("", response_model=EditList)
def list_edits(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    page: PageDep,
    status: Annotated[Status | None, Query()] = None,
) -> EditList:
    metadata = {m.group(1): v for k, v in request.query_params.items() if (m := _META.match(k))}
    after = None
    if page.after:
        after = repo.get_job(session, tenant, page.after)
        if after is None:
            raise ApiError(422, "invalid_request", "unknown cursor", "after")
    jobs, has_more = repo.list_jobs(
        session, tenant, after=after, limit=page.limit, status=status, metadata=metadata
    )
    return EditList(data=[render(session, j) for j in jobs], has_more=has_more)


@router.get("/{job_id}", response_model=EditOut)
async def get_edit(request: Request, credentials: BearerDep, job_id: str) -> Response:
    """Read one edit: its status, progress, results and links. Poll this until the status is terminal."""
    # The polling path: authentication, the read and the rendering on one autocommit connection, plain
    # rows instead of ORM objects, the JSON written once (no response_model pass). It runs on the event
    # loop: the read is one indexed query and handing it to the thread pool cost more CPU than the read
    # (BENCHMARKS.md §4); the read engine bounds its waits (core/db/session.py).
    body = service.read_edit_json(request.app.state.ctx, credentials, job_id)
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", response_model=EditOut)
def cancel_edit(request: Request, session: SessionDep, tenant: TenantDep, job_id: str) -> EditOut:
    job = service.cancel_edit(session, tenant, job_id)
    if job.status == CANCELLED:  # cancelled while queued: no worker will report it
        notify(request.app.state.ctx, job.id, "edit.cancelled")
    return render(session, job)


@router.delete("/{job_id}", status_code=204, responses={409: {"description": "the job is queued or running"}})
def delete_edit(request: Request, session: SessionDep, tenant: TenantDep, job_id: str) -> Response:
    """Delete a finished job with its artifacts, events and results (409 while queued or running)."""
    service.delete_edit(request.app.state.ctx, session, tenant, job_id)
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(session: SessionDep, tenant: TenantDep, job_id: str, page: PageDep) -> EventList:
    job = service.get_edit(session, tenant, job_id)
    after = None
    if page.after is not None:
        if not page.after.isdigit() or int(page.after) > MAX_EVENT_ID:
            raise ApiError(422, "invalid_request", "after must be an event id", "after")
        after = int(page.after)
    events, has_more = repo.list_events(session, job.id, after=after, limit=page.limit)
    return EventList(
        data=[
            EventOut(
                id=e.id, type=e.type, level=e.level, message=e.message, data=e.data, created_at=e.created_at
            )
            for e in events
        ],
        has_more=has_more,
    )

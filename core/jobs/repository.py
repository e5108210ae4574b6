"""SQL for edit jobs, their events, results and artifacts; no business rules here (status changes: lifecycle)."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, func, or_, select
from sqlalchemy.orm import Session

from core.apikeys import hash_key
from core.db.models import ApiKey, Artifact, EditJob, JobEvent, JobMetadata, LanguageResultRow
from core.jobs.lifecycle import ACTIVE, QUEUED, SUCCEEDED


def get_job(session: Session, tenant: str, job_id: str) -> EditJob | None:
    return session.scalar(select(EditJob).where(EditJob.id == job_id, EditJob.tenant == tenant))


# Built once: the polling path pays neither statement construction nor compilation per request.
# The job and its metadata pairs in one round trip: one row per pair (a job has at most a few), or one row
# with NULL key and value when it has none.
_JOB_WITH_METADATA = (
    select(EditJob.__table__, JobMetadata.key.label("meta_key"), JobMetadata.value.label("meta_value"))
    .select_from(EditJob.__table__.outerjoin(JobMetadata, JobMetadata.job_id == EditJob.id))
    .where(
        EditJob.id == bindparam("job_id"),
        EditJob.tenant
        == select(ApiKey.tenant)
        .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
        .scalar_subquery(),
    )
    .order_by(JobMetadata.key)
)
_RESULTS = (
    select(LanguageResultRow.__table__)
    .where(LanguageResultRow.job_id == bindparam("job_id"))
    .order_by(LanguageResultRow.id)
)
_ARTIFACTS = select(Artifact.__table__).where(Artifact.job_id == bindparam("job_id")).order_by(Artifact.id)


def read_job(conn: Connection, key: str | None, job_id: str) -> SimpleNamespace | None:
    """The job `job_id` of the tenant holding the unrevoked API key `key`, with its metadata (and, once
    succeeded, results and artifacts), as plain rows with EditJob's attribute names. Core on a connection,
    no ORM: this is the polling path."""
    if not key:
        return None
    rows = conn.execute(_JOB_WITH_METADATA, {"job_id": job_id, "key_hash": hash_key(key)}).all()
    if not rows:
        return None
    row = rows[0]
    meta = [SimpleNamespace(key=r.meta_key, value=r.meta_value) for r in rows if r.meta_key is not None]
    by_id = {"job_id": job_id}
    results: list[Any] = []
    artifacts: list[Any] = []
    if row.status == SUCCEEDED:  # the worker writes both in the commit that makes a job succeeded
        results = conn.execute(_RESULTS, by_id).all()
        artifacts = conn.execute(_ARTIFACTS, by_id).all()
    fields = {k: v for k, v in row._mapping.items() if k not in ("meta_key", "meta_value")}
    return SimpleNamespace(**fields, metadata_items=meta, results=results, artifacts=artifacts)


def get_by_idempotency_key(session: Session, tenant: str, key: str) -> EditJob | None:
    return session.scalar(select(EditJob).where(EditJob.tenant == tenant, EditJob.idempotency_key == key))


def count_jobs(session: Session, tenant: str, statuses: tuple[str, ...]) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(EditJob).where(EditJob.tenant == tenant, EditJob.status.in_(statuses))
        )
        or 0
    )


def list_jobs(
    session: Session,
    tenant: str,
    *,
    after: EditJob | None,
    limit: int,
    status: str | None,
    metadata: dict[str, str],
) -> tuple[list[EditJob], bool]:
    """Newest first; the cursor is the last job of the previous page, compared on (created_at, id)."""
    q = select(EditJob).where(EditJob.tenant == tenant)
    if status:
        q = q.where(EditJob.status == status)
    for k, v in metadata.items():
        q = q.where(
            exists().where(JobMetadata.job_id == EditJob.id, JobMetadata.key == k, JobMetadata.value == v)
        )
    if after is not None:
        q = q.where(
            or_(
                EditJob.created_at < after.created_at,
                and_(EditJob.created_at == after.created_at, EditJob.id < after.id),
            )
        )
    rows = list(session.scalars(q.order_by(EditJob.created_at.desc(), EditJob.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add_event(
    session: Session,
    job_id: str,
    type_: str,
    message: str = "",
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, message=message, data=data, level=level))


def list_events(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        q = q.where(JobEvent.id > after)
    rows = list(session.scalars(q.order_by(JobEvent.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def phases_seen(session: Session | Connection, job_id: str) -> list[str]:
    """Phases in the order the worker entered them (one event per phase change)."""
    rows = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "phase").order_by(JobEvent.id)
    )
    return [d["phase"] for d in rows if d and "phase" in d]


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def stale_running(session: Session, before: datetime) -> list[EditJob]:
    return list(
        session.scalars(
            select(EditJob).where(
                EditJob.status.in_(ACTIVE),
                or_(EditJob.heartbeat_at < before, EditJob.heartbeat_at.is_(None)),
            )
        )
    )


def queued_before(session: Session, cutoff: datetime, limit: int = 1000) -> list[str]:
    """Ids of jobs queued and untouched since `cutoff` (the reaper checks their task messages)."""
    q = select(EditJob.id).where(EditJob.status == QUEUED, EditJob.updated_at < cutoff).limit(limit)
    return list(session.scalars(q))

"""SQL for edit jobs, their events, results and artifacts; no business rules here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Artifact, EditJob, JobEvent, JobMetadata


def get_job(session: Session, tenant: str, job_id: str) -> EditJob | None:
    return session.scalar(select(EditJob).where(EditJob.id == job_id, EditJob.tenant == tenant))


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


def phases_seen(session: Session, job_id: str) -> list[str]:
    """Phases in the order the worker entered them (one event per phase change)."""
    rows = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "phase").order_by(JobEvent.id)
    )
    return [d["phase"] for d in rows if d and "phase" in d]


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def transition(session: Session, job_id: str, from_status: tuple[str, ...], **values: Any) -> bool:
    """Compare-and-set on status, so API, worker and reaper never overwrite each other's decisions."""
    values.setdefault("updated_at", utcnow())
    res = session.execute(
        update(EditJob)
        .where(EditJob.id == job_id, EditJob.status.in_(from_status))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def stale_running(session: Session, before: datetime) -> list[EditJob]:
    return list(
        session.scalars(
            select(EditJob).where(
                EditJob.status.in_(("running", "cancelling")),
                or_(EditJob.heartbeat_at < before, EditJob.heartbeat_at.is_(None)),
            )
        )
    )

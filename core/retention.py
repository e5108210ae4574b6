"""Deleting finished jobs: one on request (DELETE /v1/edits/{id}), and by retention every job finished more
than LINGUA_EDIT_RETENTION_DAYS ago (the reaper loop)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.context import Context
from core.db.base import utcnow
from core.db.models import Dataset, EditJob, JobEvent
from core.jobs.lifecycle import TERMINAL

log = logging.getLogger("lingua_edit.retention")


def purge_expired(ctx: Context, now: datetime | None = None, batch: int = 100) -> list[str]:
    """Delete up to `batch` finished jobs whose finished_at is older than the retention period; returns
    their ids. A job that fails to delete is logged and left for the next run."""
    days = ctx.settings.retention_days
    if days <= 0:
        return []
    cutoff = (now or utcnow()) - timedelta(days=days)
    deleted: list[str] = []
    with ctx.sessions() as session:
        ids = session.scalars(
            select(EditJob.id)
            .where(EditJob.status.in_(TERMINAL), EditJob.finished_at < cutoff)
            .order_by(EditJob.finished_at)
            .limit(batch)
        ).all()
        for job_id in ids:
            job = session.get(EditJob, job_id)
            if job is None:
                continue
            try:
                purge_job(ctx, session, job)
                session.commit()
                deleted.append(job_id)
            except Exception:
                session.rollback()
                log.exception("retention: could not delete %s", job_id)
    if deleted:
        log.info("retention: deleted %d job(s) finished before %s", len(deleted), cutoff.isoformat())
    return deleted


def purge_job(ctx: Context, session: Session, job: EditJob) -> None:
    """Storage first (a failure leaves the row, so a later try can finish), then the rows."""
    try:
        ctx.storage.delete_prefix(f"edits/{job.id}")
    except Exception as exc:  # e.g. botocore errors: the rows stay, so the delete can be retried
        raise OSError(f"could not delete the artifacts of {job.id}: {type(exc).__name__}") from exc
    inline = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    session.execute(JobEvent.__table__.delete().where(JobEvent.job_id == job.id))
    session.delete(job)
    session.flush()
    if inline is not None and inline.inline:
        still_used = session.scalar(select(EditJob.id).where(EditJob.dataset_id == inline.id).limit(1))
        if still_used is None:
            ctx.storage.delete_prefix(f"datasets/{inline.id}")
            session.delete(inline)
    log.info("deleted edit job %s and its artifacts", job.id)

"""Retention: finished jobs older than LINGUA_EDIT_RETENTION_DAYS lose their artifacts and rows."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from app.context import Context
from app.db.base import utcnow
from app.db.models import EditJob
from app.edits.schemas import TERMINAL
from app.edits.service import purge_job

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

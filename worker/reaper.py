"""Jobs whose worker died (kill -9, OOM, lost node) stop heartbeating; re-queue them once, then fail them."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.context import Context
from app.db.base import utcnow
from app.edits import repository as repo
from app.edits.service import enqueue
from app.errors import ApiError
from worker.webhook import notify

log = logging.getLogger("lingua_edit.reaper")

LOST = (
    "the worker running this job stopped responding (killed, out of memory, or lost); "
    "it was retried {n} time(s)"
)


def reap(
    ctx: Context, now: datetime | None = None, stale_after_s: float | None = None
) -> list[tuple[str, str]]:
    """Handle every stale running job; returns (job_id, action) with action requeued|failed|cancelled."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=ctx.settings.stale_after_s if stale_after_s is None else stale_after_s)
    actions: list[tuple[str, str]] = []
    with ctx.sessions() as session:
        for job in repo.stale_running(session, cutoff):
            from_status = (job.status,)
            if job.cancel_requested:
                ok = repo.transition(session, job.id, from_status, status="cancelled", finished_at=now)
                action = "cancelled"
                if ok:
                    repo.add_event(session, job.id, "cancelled", "cancelled (the worker stopped responding)")
            elif job.attempts < ctx.settings.max_attempts:
                ok = repo.transition(
                    session,
                    job.id,
                    from_status,
                    status="queued",
                    worker_id=None,
                    heartbeat_at=None,
                    progress_phase=None,
                    progress_done=0,
                    progress_total=0,
                )
                action = "requeued"
                if ok:
                    repo.add_event(
                        session,
                        job.id,
                        "requeued",
                        "the worker stopped responding; job re-queued",
                        {"attempts": job.attempts},
                        level="warning",
                    )
            else:
                ok = repo.transition(
                    session,
                    job.id,
                    from_status,
                    status="failed",
                    finished_at=now,
                    error_type="system",
                    error_code="worker_lost",
                    error_message=LOST.format(n=max(0, job.attempts - 1)),
                )
                action = "failed"
                if ok:
                    repo.add_event(
                        session, job.id, "error", LOST.format(n=max(0, job.attempts - 1)), level="error"
                    )
            if not ok:  # the worker or the API changed it meanwhile
                continue
            session.commit()
            log.warning("reaper: job %s %s (heartbeat %s)", job.id, action, job.heartbeat_at)
            if action == "requeued":
                try:
                    enqueue(ctx, session, job)
                except ApiError:
                    action = "failed"
            actions.append((job.id, action))
            if action != "requeued":
                notify(ctx, job.id)
    return actions

"""The reaper keeps every job moving towards a terminal state:

- running jobs whose worker stopped heartbeating (kill -9, OOM, lost node, a disk-full worker that could
  not record its failure) are re-queued once, then failed;
- queued jobs whose task message is gone (Redis restarted without persistence, a publish lost, a job the
  worker deferred for the tenant's running limit) are dispatched again (dispatch is idempotent on the row);
- scratch directories of dead processes are removed.

One job's failure does not stop the others; a failed run is logged and the next run retries.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from core.broker import job_alive, pending_task_payloads
from core.context import Context
from core.db.base import utcnow
from core.jobs import lifecycle
from core.jobs import repository as repo
from core.jobs.lifecycle import REAPER
from core.queue import dispatch
from core.scratch import clean_orphans
from core.webhooks import notify

log = logging.getLogger("lingua_edit.reaper")

LOST = (
    "the worker running this job stopped responding (killed, out of memory, or lost); "
    "it was retried {n} time(s)"
)


def reap(
    ctx: Context, now: datetime | None = None, stale_after_s: float | None = None
) -> list[tuple[str, str]]:
    """One reaper pass; returns (job_id, action) with action requeued|failed|cancelled|redispatched."""
    now = now or utcnow()
    actions = reap_stale(ctx, now, stale_after_s)
    actions += redispatch_lost(ctx, now)
    try:
        clean_orphans(ctx.settings.data_dir / "tmp")
    except OSError as exc:
        log.warning("reaper: scratch clean-up failed: %s", exc)
    return actions


def reap_stale(ctx: Context, now: datetime, stale_after_s: float | None = None) -> list[tuple[str, str]]:
    cutoff = now - timedelta(seconds=ctx.settings.stale_after_s if stale_after_s is None else stale_after_s)
    with ctx.sessions() as session:
        stale = [(j.id, j.status, j.cancel_requested, j.attempts, j.heartbeat_at)
                 for j in repo.stale_running(session, cutoff)]
    actions: list[tuple[str, str]] = []
    for job_id, status, cancel_requested, attempts, heartbeat_at in stale:
        if job_alive(ctx.settings, job_id):  # its worker lives but cannot write the database (disk full)
            log.warning("reaper: job %s has no database heartbeat since %s but its worker is alive; left to it",
                        job_id, heartbeat_at)
            continue
        try:
            action = _reap_one(ctx, now, job_id, status, cancel_requested, attempts)
        except Exception:
            log.exception("reaper: could not handle stale job %s; retrying next run", job_id)
            continue
        if action is None:
            continue
        log.warning("reaper: job %s %s (heartbeat %s)", job_id, action, heartbeat_at)
        actions.append((job_id, action))
        if action == "requeued":
            try:
                dispatch(ctx, job_id)
            except Exception as exc:  # broker down: the job stays queued and redispatch_lost sends it later
                log.error("reaper: could not dispatch %s: %s", job_id, exc)
        else:
            notify(ctx, job_id)
    return actions


def _reap_one(
    ctx: Context, now: datetime, job_id: str, status: str, cancel_requested: bool, attempts: int
) -> str | None:
    with ctx.sessions() as session:
        if cancel_requested:
            ok = lifecycle.move(session, job_id, "finish_cancelled", REAPER, expect=status, finished_at=now)
            action = "cancelled"
            if ok:
                repo.add_event(session, job_id, "cancelled", "cancelled (the worker stopped responding)")
        elif attempts < ctx.settings.max_attempts:
            ok = lifecycle.move(
                session,
                job_id,
                "requeue",
                REAPER,
                expect=status,
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
                    job_id,
                    "requeued",
                    "the worker stopped responding; job re-queued",
                    {"attempts": attempts},
                    level="warning",
                )
        else:
            message = LOST.format(n=max(0, attempts - 1))
            ok = lifecycle.move(
                session,
                job_id,
                "fail",
                REAPER,
                expect=status,
                finished_at=now,
                error_type="system",
                error_code="worker_lost",
                error_message=message,
            )
            action = "failed"
            if ok:
                repo.add_event(session, job_id, "error", message, level="error")
                ctx.storage.delete_prefix(f"edits/{job_id}")  # whatever the dead attempt stored
        if not ok:  # the worker or the API changed it meanwhile
            return None
        session.commit()
    return action


def redispatch_lost(ctx: Context, now: datetime) -> list[tuple[str, str]]:
    """Dispatch again every queued job older than redispatch_after_s whose message is in neither the broker
    queue nor its unacked set. Skipped while the broker cannot be read."""
    cutoff = now - timedelta(seconds=ctx.settings.redispatch_after_s)
    with ctx.sessions() as session:
        queued = repo.queued_before(session, cutoff)
    if not queued:
        return []
    payloads = pending_task_payloads(ctx.settings)
    if payloads is None:
        return []
    blob = b"\n".join(payloads)
    actions: list[tuple[str, str]] = []
    for job_id in queued:
        if job_id.encode() in blob:
            continue
        try:
            dispatch(ctx, job_id)
        except Exception as exc:
            log.error("reaper: could not re-dispatch %s: %s", job_id, exc)
            break
        with ctx.sessions() as session:  # so the next run waits redispatch_after_s again
            lifecycle.move(session, job_id, "redispatch", REAPER)
            repo.add_event(session, job_id, "redispatched", "the job's task message was lost; sent again",
                           level="warning")
            session.commit()
        log.warning("reaper: job %s had no task message; re-dispatched", job_id)
        actions.append((job_id, "redispatched"))
    return actions

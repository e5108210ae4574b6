"""The edit job's lifecycle: its states, the transitions between them and who makes each one.

Every change of `edit_jobs.status` in the service goes through `move()`: one conditional UPDATE that
compares-and-sets on the current status, so the API, the worker and the reaper never overwrite each
other's decisions (the loser of a race sees `False` and backs off). A job is created `queued` (INITIAL);
nothing else writes a status.

    queued ──claim──▶ running ──succeed/fail/finish_cancelled──▶ succeeded | failed | cancelled
      │  ▲               │  ▲
      │  └──requeue──────┤  └──reclaim (a redelivered task whose worker died)
      │                  └──request_cancel──▶ cancelling ──(the worker or the reaper ends it)──▶ terminal
      └──cancel_queued / enqueue_failed──▶ cancelled / failed

`heartbeat`, `progress` and `redispatch` write other columns under the same status guard (the status does
not change); terminal states are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import EditJob

QUEUED = "queued"
RUNNING = "running"
CANCELLING = "cancelling"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
INITIAL = QUEUED
ACTIVE = (RUNNING, CANCELLING)  # a worker holds the job (heartbeat, progress, stale checks)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

Actor = Literal["api", "worker", "reaper"]
API: Actor = "api"
WORKER: Actor = "worker"
REAPER: Actor = "reaper"


@dataclass(frozen=True)
class Transition:
    sources: tuple[str, ...]
    target: str | None  # None: the status stays (a guarded write of other columns)
    by: tuple[Actor, ...]


TRANSITIONS: dict[str, Transition] = {
    # API: POST /v1/edits could not reach the broker (the job never ran; its Idempotency-Key is freed)
    "enqueue_failed": Transition((QUEUED,), FAILED, (API,)),
    # API: POST /v1/edits/{id}/cancel
    "cancel_queued": Transition((QUEUED,), CANCELLED, (API,)),
    "request_cancel": Transition((RUNNING,), CANCELLING, (API,)),
    # worker
    "claim": Transition((QUEUED,), RUNNING, (WORKER,)),
    "reclaim": Transition((RUNNING,), RUNNING, (WORKER,)),  # redelivered after its worker died
    "heartbeat": Transition(ACTIVE, None, (WORKER,)),
    "progress": Transition(ACTIVE, None, (WORKER,)),
    "succeed": Transition(ACTIVE, SUCCEEDED, (WORKER,)),
    "fail": Transition(ACTIVE, FAILED, (WORKER, REAPER)),  # reaper: the worker was lost too often
    "finish_cancelled": Transition(ACTIVE, CANCELLED, (WORKER, REAPER)),  # reaper: cancel + dead worker
    # reaper
    "requeue": Transition((RUNNING,), QUEUED, (REAPER,)),  # the worker died; attempts left
    "redispatch": Transition((QUEUED,), None, (REAPER,)),  # the task message was lost; sent again
}


class IllegalTransitionError(ValueError):
    """A caller asked for a transition the table does not have (a programming error, not a race)."""


def edges() -> set[tuple[str, str]]:
    """Every (from, to) status pair the table allows (a status-preserving write is (s, s))."""
    return {(s, t.target or s) for t in TRANSITIONS.values() for s in t.sources}


def move(
    session: Session,
    job_id: str,
    name: str,
    by: Actor,
    *,
    expect: str | None = None,
    **values: Any,
) -> bool:
    """Apply transition `name` to the job as `by`, in one `UPDATE ... WHERE status IN (...)`; True when the
    row was in a source state (and is now in the target), False when someone else moved it first.

    `expect` narrows the compare-and-set to the status the caller read (the reaper acts on what it saw).
    `values` are the other columns to write; the status comes from the table only. Not committed."""
    t = TRANSITIONS.get(name)
    if t is None:
        raise IllegalTransitionError(f"no transition {name!r}")
    if by not in t.by:
        raise IllegalTransitionError(f"{by} may not make transition {name!r}")
    if "status" in values:
        raise IllegalTransitionError("the status is set by the transition table, not by the caller")
    sources = t.sources if expect is None else tuple(s for s in t.sources if s == expect)
    if not sources:
        raise IllegalTransitionError(f"transition {name!r} does not start from {expect!r}")
    if t.target is not None:
        values["status"] = t.target
    values.setdefault("updated_at", utcnow())
    res = session.execute(
        update(EditJob)
        .where(EditJob.id == job_id, EditJob.status.in_(sources))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1

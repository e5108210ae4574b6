"""A job row as its public representation (EditOut): GET /v1/edits/{id} answers it and every webhook carries
it, so both adapters render a job the same way."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import EditJob, LanguageResultRow
from core.jobs import repository as repo
from core.jobs.lifecycle import ACTIVE
from core.jobs.schemas import (
    ArtifactOut,
    EditOut,
    ErrorInfo,
    Hyperparameters,
    LanguageResultOut,
    Progress,
)
from worker.engine.result import standard_error

# The engine's phases (progress.phase) in the order each method runs them (evaluate twice: before and after the
# edit; the search screens twice: the base, then its candidates after the capture), with rough shares of the wall
# time on the demo model (the search's from BENCHMARKS.md §1a's stage timings); used only for `estimated_finish`.
PHASE_SHARES: dict[str, tuple[tuple[str, float], ...]] = {
    "paper": (
        ("load", 0.02),
        ("evaluate", 0.38),
        ("capture", 0.10),
        ("localize", 0.06),
        ("solve", 0.02),
        ("apply", 0.01),
        ("evaluate", 0.39),
        ("save", 0.02),
    ),
    "search": (
        ("load", 0.01),
        ("evaluate", 0.11),
        ("search", 0.02),
        ("capture", 0.21),
        ("search", 0.25),
        ("confirm", 0.29),
        ("evaluate", 0.10),
        ("save", 0.01),
    ),
}


def estimated_finish(job: EditJob, phases_seen: list[str], now: datetime | None = None) -> datetime | None:
    """Extrapolate from the share of the work done: stages passed (from the phase events) plus the
    fraction of the current one."""
    if job.status not in ACTIVE or not job.started_at or not phases_seen:
        return None
    shares = PHASE_SHARES.get((job.config or {}).get("method", "search"), PHASE_SHARES["search"])
    pos = 0
    for phase in phases_seen:  # walk forward; repeats (per-layer capture/solve/apply) stay in place
        nxt = next((k for k in range(pos, len(shares)) if shares[k][0] == phase), None)
        if nxt is not None:
            pos = nxt
    within = job.progress_done / job.progress_total if job.progress_total else 0.0
    frac = sum(w for _, w in shares[:pos]) + shares[pos][1] * min(within, 1.0)
    if frac < 0.03:
        return None
    elapsed = ((now or utcnow()) - job.started_at).total_seconds()
    return job.started_at + timedelta(seconds=elapsed / frac)


def artifact_out(a: Any) -> ArtifactOut:
    return ArtifactOut(
        name=a.name,
        kind=a.kind,
        size=a.size,
        sha256=a.sha256,
        content_type=a.content_type,
        created_at=a.created_at,
    )


def to_out(job: EditJob, phases_seen: list[str] | None = None) -> EditOut:
    cfg = dict(job.config)
    hyper_keys = tuple(Hyperparameters.model_fields)
    error = None
    if job.error_code:
        error = ErrorInfo(
            code=job.error_code, message=job.error_message or "", param=job.error_param, type=job.error_type
        )  # type: ignore[arg-type]
    return EditOut(
        id=job.id,
        status=job.status,
        model=job.model,  # type: ignore[arg-type]
        source_language=cfg.get("source_lang", "en"),
        target_languages=list(cfg.get("target_langs", [])),
        dataset_id=job.dataset_id,
        eval_split=cfg.get("eval_split", 0.0),
        hyperparameters={k: cfg[k] for k in hyper_keys if k in cfg},
        judge=cfg.get("judge", "refusal"),
        metadata={m.key: m.value for m in job.metadata_items},
        webhook_url=job.webhook_url,
        base_revision=cfg.get("base_revision"),
        destination=job.destination,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=Progress(phase=job.progress_phase, done=job.progress_done, total=job.progress_total),
        estimated_finish=estimated_finish(job, phases_seen or []),
        error=error,
        results=[language_result_out(r) for r in job.results],
        utility=job.utility,
        neurons=job.neurons,
        timings=job.timings,
        peak_memory_mb=job.peak_memory_mb,
        warnings=list(job.warnings or []),
        artifacts=[artifact_out(a) for a in job.artifacts],
        attempts=job.attempts,
    )


def language_result_out(row: LanguageResultRow) -> LanguageResultOut:
    fields = {k: getattr(row, k) for k in LanguageResultOut.model_fields if hasattr(row, k)}
    return LanguageResultOut(
        **fields,
        language=row.lang,
        asr_se_before=standard_error(row.asr_before, row.n),
        asr_se_after=standard_error(row.asr_after, row.n),
    )


def render(session: Session, job: EditJob) -> EditOut:
    """to_out, with the phase history a running job's estimate needs."""
    phases = repo.phases_seen(session, job.id) if job.status in ACTIVE else []
    return to_out(job, phases)

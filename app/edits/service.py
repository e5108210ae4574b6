"""Edit-job rules: validate, create (idempotently), enqueue after commit, cancel, and render."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.context import Context
from app.datasets import service as datasets
from app.db.base import utcnow
from app.db.models import EditJob, JobMetadata, LanguageResultRow
from app.edits import repository as repo
from app.edits.destinations import parse_destination
from app.edits.schemas import (
    TERMINAL,
    ArtifactOut,
    EditCreate,
    EditOut,
    ErrorInfo,
    Hyperparameters,
    LanguageResultOut,
    Progress,
)
from app.errors import ApiError, not_found
from app.ids import new_id
from app.models.resolve import UnknownModelError, resolve_model
from app.netguard import UnsafeURLError, check_webhook_url
from app.settings import Settings
from worker.celery_app import TASK_NAME
from worker.engine.result import standard_error

log = logging.getLogger("lingua_edit.edits")



def check_model(settings: Settings, model: str) -> None:
    # Local paths are not accepted over HTTP, and every unknown name gets the same answer (no probing).
    try:
        resolve_model(settings, model)
    except UnknownModelError as exc:
        raise ApiError(422, exc.code, str(exc), "model") from None


def check_tenant_quota(session: Session, settings: Settings, tenant: str) -> None:
    """At most `tenant_max_queued_jobs` waiting jobs per tenant, so one tenant cannot fill the queue."""
    waiting = repo.count_jobs(session, tenant, ("queued",))
    if waiting >= settings.tenant_max_queued_jobs:
        raise ApiError(
            429,
            "rate_limited",
            f"this tenant already has {waiting} queued jobs (limit {settings.tenant_max_queued_jobs}); "
            "retry when some have started",
            headers={"Retry-After": str(int(settings.tenant_retry_after_s))},
        )


def request_hash(body: EditCreate) -> str:
    canon = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def build_config(body: EditCreate) -> dict[str, Any]:
    from worker.engine.config import EditConfig

    fields: dict[str, Any] = {"model": body.model, "source_lang": body.source_language, "judge": body.judge}
    if body.base_revision:
        fields["base_revision"] = body.base_revision
    if body.target_languages:
        fields["target_langs"] = list(body.target_languages)
    if body.eval_split is not None:
        fields["eval_split"] = body.eval_split
    fields.update(body.hyperparameters.model_dump(exclude_none=True))
    cfg = EditConfig(**fields).to_dict()
    # Paths and devices are the worker's business, never the client's.
    for k in ("calibration", "device", "dtype", "judge_model", "judge_url", "judge_api_model"):
        cfg.pop(k, None)
    return cfg


def _same_or_conflict(job: EditJob, digest: str) -> EditJob:
    if job.request_hash != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            "Idempotency-Key",
        )
    return job


def create_edit(
    ctx: Context, session: Session, tenant: str, body: EditCreate, idempotency_key: str | None
) -> tuple[EditJob, bool]:
    """Return (job, created). Validation happens before anything is stored or queued."""
    digest = request_hash(body)
    if idempotency_key:
        existing = repo.get_by_idempotency_key(session, tenant, idempotency_key)
        if existing is not None:
            return _same_or_conflict(existing, digest), False
    check_model(ctx.settings, body.model)
    check_tenant_quota(session, ctx.settings, tenant)
    if body.webhook_url:
        try:
            check_webhook_url(body.webhook_url, ctx.settings.webhook_private_allowlist)
        except UnsafeURLError as exc:
            raise ApiError(422, "invalid_webhook_url", str(exc), "webhook_url") from None
    if body.base_revision and (body.model == "demo" or body.model in ctx.settings.model_registry):
        raise ApiError(
            422, "invalid_request", "base_revision applies to hub models only (not demo or registered names)",
            "base_revision",
        )
    destination = None
    if body.destination:
        destination = parse_destination(body.destination, ctx.settings.destination_roots).location
    config = build_config(body)
    dataset_id = None
    if body.dataset_id:
        ds = datasets.get_dataset(session, tenant, body.dataset_id)
        datasets.check_dataset_languages(ctx, ds, body.source_language, body.target_languages)
        dataset_id = ds.id
    elif body.calibration_rows:
        dataset_id = datasets.create_inline(
            ctx, session, tenant, body.calibration_rows, body.source_language, body.target_languages
        ).id
    else:
        datasets.check_bundled_languages(body.source_language, body.target_languages)
    job = EditJob(
        id=new_id("edit"),
        tenant=tenant,
        status="queued",
        model=body.model,
        dataset_id=dataset_id,
        config=config,
        request_hash=digest,
        idempotency_key=idempotency_key,
        webhook_url=body.webhook_url,
        destination=destination,
        created_at=utcnow(),
    )
    job.metadata_items = [JobMetadata(key=k, value=v) for k, v in body.metadata.items()]
    session.add(job)
    repo.add_event(session, job.id, "queued", "job queued")
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        session.rollback()
        existing = repo.get_by_idempotency_key(session, tenant, idempotency_key or "")
        if existing is None:
            raise
        return _same_or_conflict(existing, digest), False
    enqueue(ctx, session, job)
    return job, True


def dispatch(ctx: Context, job_id: str) -> None:
    """Send the job's task. Idempotent on the row: the worker claims `queued` with a compare-and-set, so a
    second message for the same job (a re-dispatch, a redelivery) does nothing."""
    ctx.celery.send_task(TASK_NAME, args=[job_id], queue=ctx.settings.queue)


def enqueue(ctx: Context, session: Session, job: EditJob) -> None:
    """Send the task; only called once the row is committed, so the worker always finds it."""
    try:
        dispatch(ctx, job.id)
    except Exception as exc:  # broker down or not configured
        log.error("could not enqueue %s: %s", job.id, exc)
        repo.transition(
            session,
            job.id,
            ("queued",),
            status="failed",
            finished_at=utcnow(),
            error_type="system",
            error_code="broker_unavailable",
            error_message="the job queue is unreachable",
            # Free the Idempotency-Key: the 503 invites a retry with the same key, which must run a new job.
            idempotency_key=None,
        )
        repo.add_event(session, job.id, "error", "the job queue is unreachable", level="error")
        session.commit()
        raise ApiError(503, "unavailable", "the job queue is unreachable; try again later") from exc


def get_edit(session: Session, tenant: str, job_id: str) -> EditJob:
    job = repo.get_job(session, tenant, job_id)
    if job is None:
        raise not_found("edit job", "id")
    return job


def read_edit_json(ctx: Context, credentials: Any, job_id: str) -> bytes:
    """GET /v1/edits/{id} on one autocommit connection: the key and the job in one query (the key alone
    only when that finds nothing, to tell 401 from 404), children only where the status can have them."""
    from app.deps import authenticate, bearer_key

    with (ctx.read_engine or ctx.engine).connect() as conn:
        job = repo.read_job(conn, bearer_key(credentials), job_id)
        if job is None:
            authenticate(conn, credentials)  # raises 401 for a bad key
            raise not_found("edit job", "id")
        phases = repo.phases_seen(conn, job.id) if job.status in ("running", "cancelling") else []
    return to_out(job, phases).model_dump_json().encode()  # type: ignore[arg-type]


def cancel_edit(session: Session, tenant: str, job_id: str) -> EditJob:
    job = get_edit(session, tenant, job_id)
    now = utcnow()
    if repo.transition(
        session, job.id, ("queued",), status="cancelled", cancel_requested=True, finished_at=now
    ):
        repo.add_event(session, job.id, "cancelled", "cancelled while queued")
    elif repo.transition(session, job.id, ("running",), status="cancelling", cancel_requested=True):
        repo.add_event(session, job.id, "cancelling", "cancel requested; the worker stops at the next check")
    else:
        session.refresh(job)
        if job.status in TERMINAL:
            raise ApiError(409, "conflict", f"edit job is already {job.status}", "id")
    session.commit()
    session.refresh(job)
    return job


def delete_edit(ctx: Context, session: Session, tenant: str, job_id: str) -> None:
    """Delete a finished job: its artifacts in storage, its rows (events, results, metadata, artifacts), and
    the dataset made from its inline rows. A queued or running job is refused with 409 (cancel it first)."""
    job = get_edit(session, tenant, job_id)
    if job.status not in TERMINAL:
        raise ApiError(
            409, "conflict", f"edit job is {job.status}: cancel it and delete it once it has stopped", "id"
        )
    try:
        purge_job(ctx, session, job)
    except OSError as exc:  # local storage; S3 client errors are wrapped below
        session.rollback()
        raise ApiError(503, "unavailable", "artifact storage is unavailable; try again later") from exc
    session.commit()


def purge_job(ctx: Context, session: Session, job: EditJob) -> None:
    """Storage first (a failure leaves the row, so a later try can finish), then the rows."""
    from app.db.models import Dataset, JobEvent

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


# The engine's stages in the order it runs them (evaluate twice: before and after the edit), with rough
# shares of the wall time measured on the demo model; used only for `estimated_finish`.
STAGES: tuple[tuple[str, float], ...] = (
    ("load", 0.02),
    ("evaluate", 0.38),
    ("capture", 0.10),
    ("localize", 0.06),
    ("solve", 0.02),
    ("apply", 0.01),
    ("evaluate", 0.39),
    ("save", 0.02),
)


def estimated_finish(job: EditJob, phases_seen: list[str], now: datetime | None = None) -> datetime | None:
    """Extrapolate from the share of the work done: stages passed (from the phase events) plus the
    fraction of the current one."""
    if job.status not in ("running", "cancelling") or not job.started_at or not phases_seen:
        return None
    pos = 0
    for phase in phases_seen:  # walk forward; repeats (per-layer capture/solve/apply) stay in place
        nxt = next((k for k in range(pos, len(STAGES)) if STAGES[k][0] == phase), None)
        if nxt is not None:
            pos = nxt
    within = job.progress_done / job.progress_total if job.progress_total else 0.0
    frac = sum(w for _, w in STAGES[:pos]) + STAGES[pos][1] * min(within, 1.0)
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
        **fields, language=row.lang,
        asr_se_before=standard_error(row.asr_before, row.n), asr_se_after=standard_error(row.asr_after, row.n),
    )


def render(session: Session, job: EditJob) -> EditOut:
    """to_out, with the phase history a running job's estimate needs."""
    phases = repo.phases_seen(session, job.id) if job.status in ("running", "cancelling") else []
    return to_out(job, phases)

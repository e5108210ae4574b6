"""Edit-job rules: validate, create (idempotently), enqueue after commit, cancel, and delete."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.deps import authenticate, bearer_key
from app.errors import ApiError, not_found
from core.context import Context
from core.db.base import utcnow
from core.db.models import EditJob, JobMetadata
from core.destinations import DestinationError, parse_destination
from core.ids import new_id
from core.jobs import lifecycle
from core.jobs import repository as repo
from core.jobs.config_schema import ConfigInvalid, check_config, server_only_names, to_config
from core.jobs.lifecycle import ACTIVE, API, INITIAL, QUEUED, TERMINAL
from core.jobs.schemas import EditCreate
from core.jobs.view import to_out
from core.netguard import UnsafeURLError, check_webhook_url
from core.queue import dispatch
from core.resolve import UnknownModelError, resolve_model
from core.retention import purge_job
from core.settings import Settings

log = logging.getLogger("lingua_edit.edits")


def check_model(settings: Settings, model: str) -> None:
    # Local paths are not accepted over HTTP, and every unknown name gets the same answer (no probing).
    try:
        resolve_model(settings, model)
    except UnknownModelError as exc:
        raise ApiError(422, exc.code, str(exc), "model") from None


def check_tenant_quota(session: Session, settings: Settings, tenant: str) -> None:
    """At most `tenant_max_queued_jobs` waiting jobs per tenant, so one tenant cannot fill the queue."""
    waiting = repo.count_jobs(session, tenant, (QUEUED,))
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
    """The job's stored config: the request mapped onto EditConfig and checked by the engine's validator (the
    CLI's and the worker's), errors named as the request names the field; never the worker's own settings."""
    config = to_config(body)
    try:
        check_config(config)
    except ConfigInvalid as exc:
        raise ApiError(422, "invalid_request", exc.message, exc.param) from None
    cfg = config.to_dict()
    for k in server_only_names():  # paths, devices and judge endpoints are the worker's business
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


def check_request(ctx: Context, session: Session, tenant: str, body: EditCreate) -> str | None:
    """The rules that need the settings or the database: model name, queue quota, webhook address,
    base_revision, destination. Returns the destination's location (None without one)."""
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
    if not body.destination:
        return None
    try:
        return parse_destination(body.destination, ctx.settings.destination_roots).location
    except DestinationError as exc:
        raise ApiError(422, "invalid_destination", str(exc), "destination") from None


def calibration_dataset(ctx: Context, session: Session, tenant: str, body: EditCreate) -> str | None:
    """The job's dataset id (an uploaded one, or the inline rows stored as one), its languages checked; None:
    the bundled demo set."""
    if body.dataset_id:
        ds = datasets.get_dataset(session, tenant, body.dataset_id)
        datasets.check_dataset_languages(ctx, ds, body.source_language, body.target_languages)
        return ds.id
    if body.calibration_rows:
        return datasets.create_inline(
            ctx, session, tenant, body.calibration_rows, body.source_language, body.target_languages
        ).id
    datasets.check_bundled_languages(body.source_language, body.target_languages)
    return None


def create_edit(
    ctx: Context, session: Session, tenant: str, body: EditCreate, idempotency_key: str | None
) -> tuple[EditJob, bool]:
    """Return (job, created). Validation happens before anything is stored or queued."""
    digest = request_hash(body)
    if idempotency_key:
        existing = repo.get_by_idempotency_key(session, tenant, idempotency_key)
        if existing is not None:
            return _same_or_conflict(existing, digest), False
    config = build_config(body)
    destination = check_request(ctx, session, tenant, body)
    dataset_id = calibration_dataset(ctx, session, tenant, body)
    job = EditJob(
        id=new_id("edit"),
        tenant=tenant,
        status=INITIAL,
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


def enqueue(ctx: Context, session: Session, job: EditJob) -> None:
    """Send the task; only called once the row is committed, so the worker always finds it."""
    try:
        dispatch(ctx, job.id)
    except Exception as exc:  # broker down or not configured
        log.error("could not enqueue %s: %s", job.id, exc)
        lifecycle.move(
            session,
            job.id,
            "enqueue_failed",
            API,
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
    with (ctx.read_engine or ctx.engine).connect() as conn:
        job = repo.read_job(conn, bearer_key(credentials), job_id)
        if job is None:
            authenticate(conn, credentials)  # raises 401 for a bad key
            raise not_found("edit job", "id")
        phases = repo.phases_seen(conn, job.id) if job.status in ACTIVE else []
    return to_out(job, phases).model_dump_json().encode()  # type: ignore[arg-type]


def cancel_edit(session: Session, tenant: str, job_id: str) -> EditJob:
    job = get_edit(session, tenant, job_id)
    now = utcnow()
    if lifecycle.move(session, job.id, "cancel_queued", API, cancel_requested=True, finished_at=now):
        repo.add_event(session, job.id, "cancelled", "cancelled while queued")
    elif lifecycle.move(session, job.id, "request_cancel", API, cancel_requested=True):
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

"""run_edit(job_id): claim the row, run the engine with progress and cancel hooks, publish artifacts.

The row is the source of truth: a task whose row is not claimable (cancelled, finished, or held by a live
worker) does nothing, so duplicate deliveries are harmless.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from celery import shared_task
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.broker import mark_job_alive
from core.context import Context
from core.db.base import utcnow
from core.db.models import Artifact, Dataset, EditJob, LanguageResultRow
from core.jobs import lifecycle
from core.jobs import repository as repo
from core.jobs.lifecycle import ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, WORKER
from core.logs import job_id_var
from core.queue import TASK_NAME
from core.resolve import UnknownModelError, resolve_model
from core.scratch import make_scratch
from core.webhooks import notify
from worker.destination import write_destination
from worker.engine.config import EditConfig
from worker.engine.errors import EditCancelled, ModelNotFoundError, UserError
from worker.engine.progress import Reporter
from worker.hub import fetch_hub_snapshot
from worker.model_cache import ModelCache
from worker.runtime import context, model_cache

log = logging.getLogger("lingua_edit.worker")

# An artifact's kind by file name (model/* files are "model"; charts/* belong to the report).
ARTIFACT_KINDS = {
    "delta.safetensors": "delta", "manifest.json": "manifest", "report.json": "report", "report.html": "report"
}
CONTENT_TYPES = {
    ".json": "application/json",
    ".safetensors": "application/octet-stream",
    ".txt": "text/plain",
    ".jinja": "text/plain",
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".md": "text/markdown",
}


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_edit(self: Any, job_id: str) -> None:
    token = job_id_var.set(job_id)  # every log line of this job carries its id
    try:
        JobRunner(context(), model_cache(), job_id).run()
    finally:
        job_id_var.reset(token)


class Heartbeat(threading.Thread):
    """Touches heartbeat_at while the job runs, also through long engine phases without progress calls."""

    def __init__(self, ctx: Context, job_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.ctx, self.job_id, self.stop_event = ctx, job_id, threading.Event()

    def run(self) -> None:
        job_id_var.set(self.job_id)  # a thread starts with an empty context
        mark_job_alive(self.ctx.settings, self.job_id)
        while not self.stop_event.wait(self.ctx.settings.heartbeat_interval_s):
            mark_job_alive(self.ctx.settings, self.job_id)
            try:
                with self.ctx.sessions() as s:
                    lifecycle.move(s, self.job_id, "heartbeat", WORKER, heartbeat_at=utcnow())
                    s.commit()
            except Exception as exc:
                log.warning("heartbeat failed for %s: %s", self.job_id, str(exc).splitlines()[0] if str(exc) else exc)

    def stop(self) -> None:
        self.stop_event.set()


class JobRunner:
    def __init__(self, ctx: Context, cache: ModelCache, job_id: str) -> None:
        self.ctx, self.cache, self.job_id = ctx, cache, job_id
        self.settings = ctx.settings
        self._last_write = 0.0
        self._last_phase: str | None = None
        self._last_cancel_check = 0.0
        self._cancel = False

    # -- claiming -------------------------------------------------------------------------------------
    def claim(self) -> EditJob | None:
        now = utcnow()
        stale = now.timestamp() - self.settings.stale_after_s
        with self.ctx.sessions() as s:
            job = s.get(EditJob, self.job_id)
            if job is None:
                log.warning("task for unknown job %s ignored", self.job_id)
                return None
            transition = "claim"
            if job.status == RUNNING and job.heartbeat_at and job.heartbeat_at.timestamp() < stale:
                transition = "reclaim"  # redelivered after its worker died
            elif job.status != QUEUED:
                log.info("job %s is %s; nothing to do", job.id, job.status)
                return None
            running = repo.count_jobs(s, job.tenant, ACTIVE)
            if transition == "claim" and running >= self.settings.tenant_max_running_jobs:
                # Left queued without a message: the reaper dispatches it again later (redispatch_lost).
                log.info("job %s deferred: tenant has %d running jobs", job.id, running)
                return None
            ok = lifecycle.move(
                s,
                job.id,
                transition,
                WORKER,
                started_at=job.started_at or now,
                heartbeat_at=now,
                worker_id=worker_id(),
                attempts=job.attempts + 1,
                progress_phase=None,
                progress_done=0,
                progress_total=0,
            )
            if not ok:
                return None
            repo.add_event(s, job.id, "started", f"started on {worker_id()}", {"attempt": job.attempts + 1})
            s.commit()
            s.refresh(job)
        # Files an earlier attempt stored before it died were never recorded: remove them.
        self.ctx.storage.delete_prefix(f"edits/{job.id}")
        return job

    # -- engine hooks -----------------------------------------------------------------------------------
    def progress(self, phase: str, done: int, total: int, message: str | None = None) -> None:
        try:
            self._record_progress(phase, done, total, message)
        except OperationalError as exc:
            # Progress is advisory: a database restart must not fail the job. The heartbeat thread keeps
            # trying; the outcome is written with retries (finish / _record_success).
            log.warning("progress of %s not recorded (%s)", self.job_id, str(exc).splitlines()[0])
            self._last_phase = None  # write the phase event again once the database is back
        stall_for_fault_test(phase)

    def _record_progress(self, phase: str, done: int, total: int, message: str | None) -> None:
        if phase == "warning":
            with self.ctx.sessions() as s:
                repo.add_event(s, self.job_id, "warning", message or "", level="warning")
                s.commit()
            return
        now = time.monotonic()
        changed = phase != self._last_phase
        if not changed and now - self._last_write < 0.5 and done < total:
            return  # throttle row writes during tight batch loops
        self._last_write, self._last_phase = now, phase
        with self.ctx.sessions() as s:
            lifecycle.move(
                s,
                self.job_id,
                "progress",
                WORKER,
                progress_phase=phase,
                progress_done=done,
                progress_total=total,
                heartbeat_at=utcnow(),
            )
            if changed:
                repo.add_event(
                    s,
                    self.job_id,
                    "phase",
                    message or f"phase {phase}",
                    {"phase": phase, "done": done, "total": total},
                )
            elif done >= total and total:
                repo.add_event(
                    s,
                    self.job_id,
                    "progress",
                    message or f"{phase} done",
                    {"phase": phase, "done": done, "total": total},
                )
            s.commit()

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= 0.25:
            self._last_cancel_check = now
            try:
                with self.ctx.sessions() as s:
                    self._cancel = bool(
                        s.scalar(select(EditJob.cancel_requested).where(EditJob.id == self.job_id))
                    )
            except OperationalError:  # database restarting: check again at the next call
                pass
        return self._cancel

    # -- the job --------------------------------------------------------------------------------------
    def run(self) -> None:
        job = self.claim()
        if job is None:
            return
        log.info("running on model %s (attempt %d)", job.model, job.attempts)
        notify(self.ctx, job.id, "edit.running")
        scratch = make_scratch(self.settings.data_dir / "tmp", f"job-{job.id}")
        beat = Heartbeat(self.ctx, job.id)
        beat.start()
        loaded = None
        try:
            try:
                config = self.build_config(job, scratch)
                # torch and transformers: imported by the process that runs a job, not by every worker
                from worker.engine.pipeline import run_edit as engine_run_edit

                reporter = Reporter(progress=self.progress, should_cancel=self.should_cancel)
                self.progress("load", 0, 1, f"loading model {job.model}")
                reporter.check_cancel()
                loaded = self.load_model(job.model, config, reporter)
                reporter.check_cancel()  # loading can take minutes: honour a cancel that came meanwhile
                self.progress("load", 1, 1, "model loaded")
                # The engine records spec/path in manifest.json: give it the public name, not a server path.
                # The model card's base_model is read from the real location first.
                from worker.engine.artifacts import base_hub_id

                public = dataclasses.replace(loaded, spec=job.model, path=job.model, hub_id=base_hub_id(loaded))
                result = engine_run_edit(config, scratch / "out", reporter=reporter, loaded=public)
                self.publish(job, scratch / "out", result)
            except EditCancelled:
                self.finish(CANCELLED, "cancelled", "cancelled by request")
                self._drop(loaded)
            except UserError as exc:
                self.finish(FAILED, "error", exc.message, error=("user", exc.code, exc.message, exc.param))
                self._drop(loaded)
            except Exception as exc:
                if _out_of_space(exc):
                    log.error("job %s: no space left (%s)", job.id, exc)
                    msg = "the server ran out of storage space while running this job; retry later"
                    error = ("system", "insufficient_storage", msg, None)
                else:
                    log.exception("job %s failed", job.id)
                    first = (str(exc).splitlines() or [""])[0][:300]
                    msg = f"internal error in the worker ({type(exc).__name__}: {first})"
                    error = ("system", "internal_error", msg, None)
                self.finish(FAILED, "error", msg, error=error)
                self._drop(loaded)
        finally:
            beat.stop()
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("job finished")
        notify(self.ctx, job.id)

    def load_model(self, name: str, config: Any, reporter: Any) -> Any:
        """Resolve the job's model by the service's rules (never as a path), then load it through the cache."""
        try:
            ref = resolve_model(self.settings, name)
        except UnknownModelError as exc:
            raise ModelNotFoundError(str(exc), param="model") from None
        if ref.source == "hub":
            target = fetch_hub_snapshot(ref.target, self.settings, reporter.check_cancel, config.base_revision)
        else:
            target = ref.target  # "demo" or the registered directory
        return self.cache.get(target, config.device, config.dtype, {})

    def _drop(self, loaded: Any) -> None:
        if loaded is not None:
            self.cache.discard(loaded)

    def build_config(self, job: EditJob, scratch: Path) -> Any:
        fields = dict(job.config)
        if isinstance(fields.get("layer_band"), list):
            fields["layer_band"] = tuple(fields["layer_band"])
        calibration = None
        if job.dataset_id:
            with self.ctx.sessions() as s:
                ds = s.get(Dataset, job.dataset_id)
                key = ds.storage_key if ds else None
            if key is None:
                raise UserError("the calibration dataset no longer exists", param="dataset_id")
            calibration = str(self.ctx.storage.local_path(key, scratch / "data"))
        return EditConfig(
            **fields,
            calibration=calibration,
            device=self.settings.device,
            dtype=self.settings.dtype,
            judge_model=self.settings.judge_model,
            judge_url=self.settings.judge_url,
            judge_api_model=self.settings.judge_api_model,
        )

    def finish(
        self, status: str, event: str, message: str, error: tuple[str, str, str, str | None] | None = None
    ) -> None:
        transition = {CANCELLED: "finish_cancelled", FAILED: "fail"}[status]
        values: dict[str, Any] = {"finished_at": utcnow()}
        if error:
            values.update(
                error_type=error[0], error_code=error[1], error_message=error[2], error_param=error[3]
            )
        # The database may be unwritable (disk full, restarting): keep the outcome and retry until it is
        # recorded. The heartbeat thread keeps saying in Redis that this worker is alive, so the reaper leaves
        # the job alone meanwhile; if this process dies, the reaper re-queues the job as for any dead worker.
        delay, tries = 0.5, 0
        while True:
            try:
                with self.ctx.sessions() as s:
                    if lifecycle.move(s, self.job_id, transition, WORKER, **values):
                        repo.add_event(s, self.job_id, event, message, level="error" if error else "info")
                    s.commit()
                if tries:
                    log.warning("recorded %s for %s after %d failed tries", status, self.job_id, tries)
                return
            except Exception as exc:
                tries += 1
                if not isinstance(exc, OperationalError) and tries >= 5:  # not the database being away: a bug
                    log.exception("gave up recording %s for %s; the reaper will handle it", status, self.job_id)
                    return
                if tries == 1 or tries % 20 == 0:
                    log.error("could not record %s for %s (%s); retrying until storage returns", status,
                              self.job_id, str(exc).splitlines()[0] if str(exc) else exc)
                time.sleep(delay)
                delay = min(delay * 2, self.settings.heartbeat_interval_s)

    def publish(self, job: EditJob, out: Path, result: Any) -> None:
        """Move each output file into storage under a generated key, then record everything in one commit.

        The edited model is stored once, file by file, in Hugging Face layout (`model/README.md`,
        `model/config.json`, `model/model*.safetensors` shards with their index, tokenizer files).
        """
        if job.destination:
            self.write_destination(job, out)
        scrub_manifest(out / "manifest.json", job)
        files = [(p.relative_to(out).as_posix(), p) for p in sorted(out.rglob("*")) if p.is_file()]
        try:
            rows = self._put_artifacts(job, files)
        except BaseException:  # disk full, storage down, killed: no partial artifact set stays behind
            self.ctx.storage.delete_prefix(f"edits/{job.id}")
            raise
        self._record_success(job, rows, result)

    def _put_artifacts(self, job: EditJob, files: list[tuple[str, Path]]) -> list[Artifact]:
        rows = []
        for name, path in files:
            kind = ARTIFACT_KINDS.get(name, "model" if name.startswith("model/") else "other")
            kind = "report" if name.startswith("charts/") else kind  # report.html's PNG charts
            size, digest = path.stat().st_size, _sha256(path)
            key = f"edits/{job.id}/{uuid.uuid4().hex}"
            self.ctx.storage.put_file(path, key)
            rows.append(
                Artifact(
                    job_id=job.id,
                    name=name,
                    kind=kind,
                    storage_key=key,
                    size=size,
                    sha256=digest,
                    content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                )
            )
        return rows

    def _record_success(self, job: EditJob, rows: list[Artifact], result: Any) -> None:
        for delay in (0.5, 1, 2, 4, 8, None):  # the database may be restarting: the files are in storage
            try:
                self._commit_success(job, rows, result)
                return
            except OperationalError as exc:
                if delay is None:
                    raise
                log.warning("could not record the result of %s (%s); retrying", job.id, str(exc).splitlines()[0])
                time.sleep(delay)

    def _commit_success(self, job: EditJob, rows: list[Artifact], result: Any) -> None:
        rows = [_copy_artifact(r) for r in rows]  # fresh objects: a failed attempt's session is gone
        with self.ctx.sessions() as s:
            ok = lifecycle.move(
                s,
                job.id,
                "succeed",
                WORKER,
                finished_at=utcnow(),
                utility=_jsonable(result.utility),
                neurons=_jsonable(result.neurons),
                timings=_jsonable(result.timings),
                peak_memory_mb=_jsonable(result.peak_memory_mb),
                warnings=list(result.warnings or []),
            )
            if not ok:  # reaped or otherwise finished meanwhile: leave no orphan files behind
                s.rollback()
                self.ctx.storage.delete_prefix(f"edits/{job.id}")
                log.warning("job %s changed state while running; results discarded", job.id)
                return
            s.add_all(rows)
            s.add_all(LanguageResultRow(job_id=job.id, flips=_jsonable(result.flips.get(r.lang)) or None,
                                        **_result_columns(r)) for r in result.languages)
            repo.add_event(
                s,
                job.id,
                "finished",
                "edit finished",
                {"artifacts": len(rows), "languages": len(result.languages)},
            )
            s.commit()

    def write_destination(self, job: EditJob, out: Path) -> None:
        """Copy the result to the job's destination; a failure there is an error event, not a failed job
        (the artifacts are still stored and downloadable)."""
        try:
            dest = write_destination(self.settings, job.destination or "", out)
        except Exception as exc:  # DestinationError, OSError, boto errors
            log.warning("job %s: destination not written: %s", job.id, exc)
            with self.ctx.sessions() as s:
                repo.add_event(
                    s, job.id, "destination", f"destination not written: {str(exc)[:300]}", level="error"
                )
                s.commit()
            return
        with self.ctx.sessions() as s:
            repo.add_event(s, job.id, "destination", f"written to {dest.location}", {"location": dest.location})
            s.commit()


# Worker-side settings the engine records in its config; they name server paths and endpoints.
_SERVER_ONLY = ("calibration", "device", "dtype", "judge_model", "judge_url", "judge_api_model")


def scrub_manifest(path: Path, job: EditJob) -> None:
    """Keep server-side paths out of the published manifest: the model by its public name, the
    calibration data by its dataset id."""
    import json

    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    base = manifest.get("base_model") or {}
    base["spec"] = base["path"] = job.model
    manifest["base_model"] = base
    config = manifest.get("config") or {}
    for key in _SERVER_ONLY:
        config.pop(key, None)
    config["model"] = job.model
    config["dataset_id"] = job.dataset_id
    manifest["config"] = config
    path.write_text(json.dumps(manifest, indent=2, default=str))


def _copy_artifact(a: Artifact) -> Artifact:
    return Artifact(
        job_id=a.job_id, name=a.name, kind=a.kind, storage_key=a.storage_key, size=a.size, sha256=a.sha256,
        content_type=a.content_type,
    )


_stalled: set[str] = set()


def _out_of_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also from libraries that wrap it in their own error (safetensors raises SafetensorError
    "I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def stall_for_fault_test(phase: str) -> None:
    """Fault-suite hook (tests/faults): LINGUA_EDIT_FAULT_STALL=phase:seconds makes the worker sleep the
    first time it enters `phase`, so a test can kill it there. Unset in every real deployment."""
    spec = os.environ.get("LINGUA_EDIT_FAULT_STALL")
    if not spec or phase in _stalled:
        return
    name, _, seconds = spec.partition(":")
    if name == phase:
        _stalled.add(phase)
        log.warning("fault test: stalling in phase %s for %s s", phase, seconds)
        time.sleep(float(seconds or 30))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _result_columns(r: Any) -> dict[str, Any]:
    """The engine's LanguageResult as edit_results columns (every field the table has)."""
    cols = set(LanguageResultRow.__table__.columns.keys())
    return {k: v for k, v in asdict(r).items() if k in cols}


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))

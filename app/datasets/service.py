"""Calibration datasets: uploads and inline rows, checked with the engine rules, stored under new names."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.errors import ApiError, not_found
from core.context import Context
from core.db.models import Dataset
from core.ids import new_id
from core.scratch import make_scratch
from worker.engine.config import SUPPORTED_LANGS
from worker.engine.data import demo_calibration, load_calibration, parse_rows, validate, with_bundled_harmless
from worker.engine.errors import UserError

log = logging.getLogger("lingua_edit.datasets")

_PENDING = "lingua_edit_uncommitted_storage"


def claim_storage(session: Session, storage: Any, prefix: str) -> None:
    """Tie a storage prefix to the session's transaction: it stays if the transaction commits, and is
    deleted if it rolls back or the session closes without committing (an idempotent-create race, an
    error later in the request), so no file exists without its row."""
    session.info.setdefault(_PENDING, []).append((storage, prefix))


def release_uncommitted(session: Session) -> None:
    """Delete the storage the session claimed but never committed."""
    for storage, prefix in session.info.pop(_PENDING, []):
        try:
            storage.delete_prefix(prefix)
        except Exception:  # best effort; an orphan is harmless but logged
            log.warning("could not delete uncommitted storage %s", prefix, exc_info=True)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop(_PENDING, None)


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction: nothing of it will be committed
        release_uncommitted(session)


FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


_PARAMS = {"target_langs": "target_languages", "source_lang": "source_language"}


def _calibration_error(
    exc: Exception, prefix: str, path: Path | None = None, display: str = "dataset"
) -> ApiError:
    """Map an engine CalibrationError/UserError to a 422 naming the request field it is about."""
    param = getattr(exc, "param", None)
    field = _PARAMS.get(param or "", prefix)
    message = getattr(exc, "message", str(exc))
    if path is not None:  # server paths stay on the server
        message = message.replace(str(path), display)
    return ApiError(422, getattr(exc, "code", "invalid_calibration"), message, field)


def _languages(cs: Any) -> list[str]:
    langs = getattr(cs, "languages", None)
    if callable(langs):
        langs = langs()
    return list(langs) if langs else []


def _rows(cs: Any) -> int:
    try:
        return len(cs)
    except TypeError:
        return len(getattr(cs, "rows", []) or [])


def _store(
    ctx: Context, session: Session, tenant: str, src: Path, filename: str, fmt: str, cs: Any, inline: bool
) -> Dataset:
    h = hashlib.sha256()
    with open(src, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    size = src.stat().st_size
    ds_id = new_id("ds")
    key = f"datasets/{ds_id}/data.{fmt}"
    claim_storage(session, ctx.storage, f"datasets/{ds_id}")
    try:
        ctx.storage.put_file(src, key)
    except BaseException:
        release_uncommitted(session)
        raise
    row = Dataset(
        id=ds_id,
        tenant=tenant,
        filename=filename[:255],
        format=fmt,
        storage_key=key,
        size=size,
        sha256=h.hexdigest(),
        rows=_rows(cs),
        languages=_languages(cs),
        inline=inline,
    )
    session.add(row)
    session.flush()
    return row


def create_from_upload(
    ctx: Context, session: Session, tenant: str, filename: str, stream: BinaryIO
) -> Dataset:

    fmt = FORMATS.get(Path(filename or "").suffix.lower())
    if fmt is None:
        raise ApiError(422, "invalid_request", "file must be .jsonl or .csv", "file")
    limit = ctx.settings.max_upload_bytes
    scratch = make_scratch(ctx.settings.data_dir / "tmp", "le-upload")
    try:
        tmp = scratch / f"upload.{fmt}"  # generated name: the client's filename never reaches the filesystem
        written = 0
        with open(tmp, "wb") as out:
            while block := stream.read(1 << 20):
                written += len(block)
                if written > limit:
                    raise ApiError(413, "payload_too_large", f"dataset larger than {limit} bytes", "file")
                out.write(block)
        try:
            cs = load_calibration(tmp, max_bytes=limit)
        except UserError as exc:
            raise _calibration_error(exc, "file", tmp, Path(filename).name or "upload") from exc
        check_prompt_lengths(ctx, cs, "file")
        return _store(ctx, session, tenant, tmp, filename, fmt, cs, inline=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def create_inline(
    ctx: Context,
    session: Session,
    tenant: str,
    rows: list[dict[str, Any]],
    source_lang: str,
    target_langs: list[str] | None,
) -> Dataset:

    if len(rows) > ctx.settings.max_inline_rows:
        raise ApiError(
            422,
            "invalid_request",
            f"at most {ctx.settings.max_inline_rows} inline rows; upload a dataset instead",
            "calibration_rows",
        )
    try:
        cs = parse_rows(rows, source="inline")
        check_languages(cs, source_lang, target_langs)
    except UserError as exc:
        raise _calibration_error(exc, "calibration_rows") from exc
    check_prompt_lengths(ctx, cs, "calibration_rows")
    scratch = make_scratch(ctx.settings.data_dir / "tmp", "le-inline")
    try:
        tmp = scratch / "rows.jsonl"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return _store(ctx, session, tenant, tmp, "inline.jsonl", "jsonl", cs, inline=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_prompt_lengths(ctx: Context, cs: Any, field: str) -> None:
    """Every prompt at most max_prompt_chars characters (a prompt costs tokenizer and GPU time)."""
    limit = ctx.settings.max_prompt_chars
    for p in getattr(cs, "prompts", []):
        if len(p.text) > limit:
            where = f"{field}.{p.row - 1}.prompt" if field == "calibration_rows" and p.row else field
            raise ApiError(
                422, "invalid_calibration", f"prompt {p.id!r} ({p.lang}) is longer than {limit} characters", where
            )


def check_languages(cs: Any, source_lang: str, target_langs: list[str] | None) -> None:

    targets = target_langs or [lg for lg in SUPPORTED_LANGS if lg != source_lang]
    # The engine adds its bundled harmless prompts to a set that has none; validate what it will use.
    validate(with_bundled_harmless(cs), source_lang, targets)


def check_dataset_languages(
    ctx: Context, ds: Dataset, source_lang: str, target_langs: list[str] | None
) -> None:

    scratch = make_scratch(ctx.settings.data_dir / "tmp", "le-check")
    try:
        path = ctx.storage.local_path(ds.storage_key, scratch)
        try:
            check_languages(load_calibration(path), source_lang, target_langs)
        except UserError as exc:
            raise _calibration_error(exc, "dataset_id", path, ds.filename) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def get_dataset(session: Session, tenant: str, ds_id: str) -> Dataset:
    row = session.scalar(select(Dataset).where(Dataset.id == ds_id, Dataset.tenant == tenant))
    if row is None:
        raise not_found("dataset", "dataset_id")
    return row


def check_bundled_languages(source_lang: str, target_langs: list[str] | None) -> None:
    """Without a dataset the engine uses its bundled demo set: check it covers the languages asked for."""

    try:
        bundled = demo_calibration()
    except OSError:  # bundled files not installed: the worker reports it as a job error
        return
    try:
        check_languages(bundled, source_lang, target_langs)
    except UserError as exc:
        raise _calibration_error(exc, "target_languages") from exc

"""Tables: the job row is the source of truth for status, progress, cancellation and results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow

# SQLite only autoincrements INTEGER PRIMARY KEY.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key in listings
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # as uploaded; display only, never a path
    format: Mapped[str] = mapped_column(String(8))
    storage_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    languages: Mapped[list[str]] = mapped_column(JSON, default=list)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)  # created from a job's inline rows
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EditJob(Base):
    __tablename__ = "edit_jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_edit_jobs_tenant_idempotency_key"),
        Index("ix_edit_jobs_tenant_created_at", "tenant", "created_at"),
        Index("ix_edit_jobs_status_heartbeat", "status", "heartbeat_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # written only by core.jobs.lifecycle (INITIAL on insert)
    model: Mapped[str] = mapped_column(String(512))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # EditConfig fields, minus paths
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    destination: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # s3://... or a local dir

    progress_phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    error_type: Mapped[str | None] = mapped_column(String(16), nullable=True)  # user | system
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_param: Mapped[str | None] = mapped_column(String(255), nullable=True)

    utility: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    neurons: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    peak_memory_mb: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    warnings: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    metadata_items: Mapped[list[JobMetadata]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="JobMetadata.key"
    )
    results: Mapped[list[LanguageResultRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="LanguageResultRow.id"
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="Artifact.id"
    )


class JobMetadata(Base):
    """One row per metadata pair, so `metadata[key]=value` filters are plain indexed joins on any DB."""

    __tablename__ = "edit_job_metadata"
    __table_args__ = (Index("ix_edit_job_metadata_key_value", "key", "value"),)
    job_id: Mapped[str] = mapped_column(ForeignKey("edit_jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class LanguageResultRow(Base):
    __tablename__ = "edit_results"
    __table_args__ = (UniqueConstraint("job_id", "lang", name="uq_edit_results_job_id_lang"),)
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("edit_jobs.id", ondelete="CASCADE"))
    lang: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer)
    asr_before: Mapped[float] = mapped_column(Float)
    asr_after: Mapped[float] = mapped_column(Float)
    refusal_before: Mapped[float] = mapped_column(Float)
    refusal_after: Mapped[float] = mapped_column(Float)
    # over-refusal and broken output beside every ASR (engine LanguageResult; null for older jobs)
    degenerate_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    degenerate_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    harmless_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    harmless_refusal_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    harmless_refusal_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    harmless_degenerate_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    harmless_degenerate_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    borderline_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    borderline_refusal_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    borderline_refusal_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    borderline_degenerate_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    borderline_degenerate_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    selectivity: Mapped[float | None] = mapped_column(Float, nullable=True)
    second_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    second_asr_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    second_asr_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    # prompt group (harmful, plain, borderline, second) -> prompts whose verdict changed, each way (the net
    # shares above can hide prompts flipping both ways)
    flips: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobEvent(Base):
    __tablename__ = "edit_events"
    __table_args__ = (Index("ix_edit_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("edit_jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))  # queued started phase progress warning finished error ...
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_id_name"),)
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("edit_jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # model | delta | manifest | report
    storage_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookSecret(Base):
    """A tenant's Standard Webhooks signing secret (`whsec_...`). Shown once when created or rotated; the
    previous one keeps signing (a second signature) for a grace period so receivers can switch over."""

    __tablename__ = "webhook_secrets"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

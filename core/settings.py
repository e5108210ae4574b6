"""Every service setting, read from environment variables prefixed LINGUA_EDIT_ (see docs/service.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINGUA_EDIT_", extra="ignore")

    # Where the embedded stack keeps its SQLite file, Redis dump, uploads and artifacts.
    data_dir: Path = Path("./data")
    # None = embedded defaults: SQLite in data_dir, and a Redis started by `lingua-edit serve`.
    database_url: str | None = None
    broker_url: str | None = None
    queue: str = "gpu"
    # Redis redelivers an unacked task after this many seconds; must exceed the longest job.
    visibility_timeout_s: int = 43200

    storage: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None  # default: data_dir/storage
    s3_bucket: str = "lingua-edit"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    # downloads from S3 storage answer 307 to a presigned GET URL valid this long
    s3_presign_expiry_s: int = Field(3600, ge=60, le=7 * 24 * 3600)
    # the endpoint clients reach S3 at, when it differs from the one the service uses (compose: minio:9000
    # inside, localhost:9000 outside); presigned URLs are signed for this host
    s3_public_endpoint_url: str | None = None

    # name -> local model directory (JSON in the environment: {"tiny": "/models/tiny"}).
    model_registry: dict[str, str] = Field(default_factory=dict)
    allow_hub_models: bool = True
    hub_timeout_s: float = 10.0  # per hub metadata request (etag look-up)
    hub_download_timeout_s: float = 1800.0  # a whole hub download; the job fails with model_not_found after
    model_cache_size: int = 1  # models kept loaded per worker process (LRU)
    device: str | None = None
    dtype: str | None = None

    # Roots a job's `destination` may point under: server directories (an NFS mount, say) and/or
    # s3://bucket/prefix entries. Empty = the destination field is refused.
    destination_roots: list[str] = Field(default_factory=list)
    # Artifacts and rows of jobs finished more than this many days ago are deleted by the reaper (0 = keep).
    retention_days: float = Field(0, ge=0)

    max_upload_bytes: int = 20 * 1024 * 1024
    # Every other request body (JSON); answered 413 before the body is read when Content-Length says so.
    max_request_bytes: int = 4 * 1024 * 1024
    max_prompt_chars: int = 8000  # one calibration prompt (inline rows and uploads)
    max_inline_rows: int = 2000
    max_page_size: int = 100

    # Per tenant: queued jobs beyond this are refused (429 + Retry-After); running jobs beyond
    # tenant_max_running_jobs wait in the queue (the worker defers them) so one tenant cannot hold every GPU.
    tenant_max_queued_jobs: int = 50
    tenant_max_running_jobs: int = 2
    tenant_retry_after_s: float = 30.0

    heartbeat_interval_s: float = 5.0
    # A running job without heartbeat this long is reaped; with the reaper period below a dead worker's
    # job is handled within stale_after_s + reaper_interval_s (two reaper periods).
    stale_after_s: float = 15.0
    max_attempts: int = 2  # 2 = a job whose worker died is re-queued once, then failed
    reaper_interval_s: float = 15.0  # 0 disables the API's periodic reaper
    # A queued job whose task message is in neither the broker queue nor its unacked set after this long
    # is dispatched again (the message was lost, e.g. Redis restarted without persistence).
    redispatch_after_s: float = 10.0
    worker_heartbeat_ttl_s: float = 15.0  # /readyz: a worker that has not said so within this is gone

    # Fallback Standard Webhooks secret (`whsec_...`) for tenants without their own (`lingua-edit webhooks
    # rotate-secret`, POST /v1/webhook-secret); deliveries without any secret go out unsigned.
    webhook_secret: str | None = None
    # Whole-request deadline of one delivery attempt (connect, headers, body), and the most response bytes read.
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    webhook_max_response_bytes: int = Field(64 * 1024, ge=0)
    # Failed deliveries are retried with exponential backoff (5 s, 10 s, ... capped at 10 min) for this long.
    webhook_retry_for_s: float = Field(3600.0, ge=0)
    webhook_queue: str = "webhooks"  # consumed by `lingua-edit worker --webhooks` (and by `serve`)
    # Webhooks to loopback/private/link-local/multicast/reserved addresses are refused (at submission and at
    # delivery) unless listed here: CIDRs ("10.20.0.0/16") or exact host names ("hooks.internal").
    webhook_private_allowlist: list[str] = Field(default_factory=list)
    # A rotated secret keeps signing (a second signature) this long, so receivers can switch over.
    webhook_secret_grace_s: float = Field(24 * 3600.0, ge=0)

    judge_model: str | None = None
    judge_url: str | None = None
    judge_api_model: str | None = None

    # /metrics shows every tenant's job counts: served only with this bearer token (unset: 404).
    metrics_token: str | None = None

    log_level: str = "INFO"

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, v: str | None) -> str | None:
        """A Standard Webhooks secret: `whsec_` + base64 (as `lingua-edit webhooks rotate-secret` prints)."""
        if v:
            import base64
            import binascii

            try:
                ok = v.startswith("whsec_") and len(base64.b64decode(v[6:] + "==")) >= 16
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError("LINGUA_EDIT_WEBHOOK_SECRET must be whsec_ followed by base64 of >= 16 bytes")
        return v or None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lingua-edit.db').resolve()}"

    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").resolve()

    def is_embedded_db(self) -> bool:
        return self.database_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()

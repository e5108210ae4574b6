"""Request and response shapes of /v1/edits (modelled on fine-tuning job APIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.netguard import UnsafeURLError, parse_webhook_url
from worker.engine.config import SUPPORTED_LANGS

Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")
Lang = Literal[SUPPORTED_LANGS]  # type: ignore[valid-type]


class Hyperparameters(BaseModel):
    """Unset fields take the engine's defaults (worker/engine/config.py)."""

    # strict: no coercion ("rank": true or "4" is an error, not 1 or 4); numbers must be finite.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    layers: (
        Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(min_length=1, max_length=256)]
        | Literal["auto"]
        | None
    ) = Field(None, description='"auto" or 1-256 distinct layer indices')
    module: Literal["gate", "up", "gate+up", "down", "conditional"] | None = None
    tau_z: float | None = Field(None, ge=0)
    tau_d: float | None = Field(None, ge=0)
    neuron_budget: float | None = Field(None, gt=0)
    positions: Literal["template", "last", "all"] | None = None
    select: Literal["contrast", "refusal_gap"] | None = Field(
        None, description="neuron selection: the spec's z/d contrast or refusal-gap attribution"
    )
    target_scale: float | None = Field(None, gt=0, le=100)
    rank: int | None = Field(None, ge=1, le=65536)
    gamma: float | None = Field(None, ge=0)
    lam: float | None = Field(None, gt=0)
    null_space: Literal["soft", "hard"] | None = None
    max_new_tokens: int | None = Field(None, ge=1, le=2048)
    batch_size: int | None = Field(None, ge=1, le=512)
    max_eval_prompts: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or len(v) > 256):
            raise ValueError("layers must be 'auto' or a non-empty list of distinct layer indices")
        return v


class EditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str = Field(min_length=1, max_length=512)
    source_language: Lang = "en"
    target_languages: list[Lang] | None = Field(None, min_length=1, max_length=len(SUPPORTED_LANGS))
    dataset_id: str | None = Field(None, max_length=64)
    calibration_rows: list[dict[str, Any]] | None = Field(None, min_length=1)
    eval_split: float | None = Field(None, gt=0, lt=1, strict=True)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    judge: Literal["refusal", "guard", "openai"] = "refusal"
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)
    webhook_url: str | None = Field(None, max_length=2048)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not k or len(k) > 64:
                raise ValueError("metadata keys must be 1-64 characters")
            if len(val) > 512:
                raise ValueError("metadata values must be at most 512 characters")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None:
            # The scheme and shape here; the address rules (which need the settings) in the service.
            try:
                parse_webhook_url(v)
            except UnsafeURLError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("target_languages")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("target_languages must not repeat a language")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EditCreate:
        if self.dataset_id and self.calibration_rows:
            raise ValueError("give dataset_id or calibration_rows, not both")
        if self.target_languages and self.source_language in self.target_languages:
            raise ValueError("target_languages must not contain source_language")
        return self


class Progress(BaseModel):
    phase: str | None
    done: int
    total: int


class ErrorInfo(BaseModel):
    code: str
    message: str
    param: str | None
    type: Literal["user", "system"] | None


class LanguageResultOut(BaseModel):
    language: str
    n: int
    asr_before: float
    asr_after: float
    refusal_before: float
    refusal_after: float


class ArtifactOut(BaseModel):
    object: Literal["artifact"] = "artifact"
    name: str
    kind: Literal["model", "delta", "manifest", "report", "other"]
    size: int
    sha256: str
    content_type: str
    created_at: datetime


class EditOut(BaseModel):
    id: str
    object: Literal["edit"] = "edit"
    status: Status
    model: str
    source_language: str
    target_languages: list[str]
    dataset_id: str | None
    eval_split: float
    hyperparameters: dict[str, Any]
    judge: str
    metadata: dict[str, str]
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    estimated_finish: datetime | None
    error: ErrorInfo | None
    results: list[LanguageResultOut]
    utility: dict[str, Any] | None
    neurons: dict[str, Any] | None
    timings: dict[str, Any] | None
    peak_memory_mb: dict[str, Any] | None
    warnings: list[str]
    artifacts: list[ArtifactOut]
    attempts: int


class EditList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EditOut]
    has_more: bool


class EventOut(BaseModel):
    id: int
    object: Literal["edit.event"] = "edit.event"
    type: str
    level: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventOut]
    has_more: bool


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ArtifactOut]

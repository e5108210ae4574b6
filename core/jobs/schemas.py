"""Request and response shapes of /v1/edits (modelled on fine-tuning job APIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.jobs.lifecycle import STATUSES
from core.netguard import UnsafeURLError, parse_webhook_url
from worker.engine.config import SUPPORTED_LANGS
from worker.engine.methods import MODULE_CHOICES

Status = Literal[STATUSES]  # type: ignore[valid-type]
Lang = Literal[SUPPORTED_LANGS]  # type: ignore[valid-type]


class Hyperparameters(BaseModel):
    """Unset fields take the engine's defaults (worker/engine/config.py)."""

    # strict: no coercion ("rank": true or "4" is an error, not 1 or 4); numbers must be finite.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    method: Literal["search", "paper"] | None = Field(
        None, description="search (default): rank sparse closed-form candidates on validation prompts and ship "
        "the winner; paper: the paper's closed form as configured by layers/module/solve knobs",
    )
    search_layers: Literal["auto"] | list[Annotated[int, Field(ge=0, le=1024)]] | None = Field(
        None, description='layers the search tries ("auto": 65%, 80%, 92% of the depth)', max_length=8
    )
    search_gains: list[Annotated[float, Field(gt=0, le=100)]] | None = Field(
        None, min_length=1, max_length=8, description="gain multipliers the search tries"
    )
    confirm_candidates: int | None = Field(None, ge=0, le=8)
    confirm_prompts: int | None = Field(None, ge=1, le=256)
    screen_prompts: int | None = Field(None, ge=1, le=256)
    max_harmless_eval: int | None = Field(None, ge=1)
    max_anchor_prompts: int | None = Field(None, ge=1)
    max_calibration_ids: int | None = Field(None, ge=1)
    second_test_prompts: int | None = Field(None, ge=0)
    layers: (
        Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(min_length=1, max_length=256)]
        | Literal["auto"]
        | None
    ) = Field(None, description='"auto" or 1-256 distinct layer indices')
    module: Literal[MODULE_CHOICES] | None = None  # type: ignore[valid-type]
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
    base_revision: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$",
        description="hub models only: the branch, tag or commit to load; recorded in the manifest and model card",
    )
    destination: str | None = Field(
        None,
        max_length=1024,
        description="where the worker also writes the result in Hugging Face layout when the job succeeds: "
        "s3://bucket/prefix or a server directory, under a root the operator allow-lists "
        "(LINGUA_EDIT_DESTINATION_ROOTS); it must not exist yet",
    )

    @field_validator("base_revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None and (".." in v or v.endswith("/")):
            raise ValueError("base_revision must be a branch, tag or commit id")
        return v

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
    """One language before and after. Harmful prompts: ASR, refusal and degenerate shares (disjoint), with
    binomial standard errors; plain and borderline harmless prompts: refusal (over-refusal) and degenerate
    shares; selectivity = harmful refusal rise minus harmless refusal rise; second_*: ASR on the second test
    set (another style). Null where the job did not measure it (older jobs)."""

    language: str
    n: int
    asr_before: float
    asr_after: float
    asr_se_before: float | None = None
    asr_se_after: float | None = None
    refusal_before: float
    refusal_after: float
    degenerate_before: float | None = None
    degenerate_after: float | None = None
    harmless_n: int | None = None
    harmless_refusal_before: float | None = None
    harmless_refusal_after: float | None = None
    harmless_degenerate_before: float | None = None
    harmless_degenerate_after: float | None = None
    borderline_n: int | None = None
    borderline_refusal_before: float | None = None
    borderline_refusal_after: float | None = None
    borderline_degenerate_before: float | None = None
    borderline_degenerate_after: float | None = None
    selectivity: float | None = None
    second_n: int | None = None
    second_asr_before: float | None = None
    second_asr_after: float | None = None


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
    base_revision: str | None = None
    destination: str | None = None
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

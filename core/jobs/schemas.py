"""Request and response shapes of /v1/edits (modelled on fine-tuning job APIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.jobs.config_schema import config_help, config_type, hyperparameters_model
from core.jobs.lifecycle import STATUSES
from core.netguard import UnsafeURLError, parse_webhook_url

Status = Literal[STATUSES]  # type: ignore[valid-type]


# Generated from EditConfig (worker/engine/config.py): every field the API takes in `hyperparameters`, with
# its help, choices and bounds. Rules between fields are the engine's validator's (app/edits/service.py).
Hyperparameters = hyperparameters_model()
SourceLanguage = config_type("source_lang")
TargetLanguages = config_type("target_langs")
EvalSplit = config_type("eval_split")
JudgeName = config_type("judge")


class EditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str = Field(min_length=1, max_length=512)
    source_language: SourceLanguage = Field("en", description=config_help("source_lang"))
    target_languages: TargetLanguages | None = Field(None, description=config_help("target_langs"))
    dataset_id: str | None = Field(None, max_length=64)
    calibration_rows: list[dict[str, Any]] | None = Field(None, min_length=1)
    eval_split: EvalSplit | None = Field(None, strict=True, description=config_help("eval_split"))
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    judge: JudgeName = Field("refusal", description=config_help("judge"))
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

    @model_validator(mode="after")
    def _consistent(self) -> EditCreate:
        if self.dataset_id and self.calibration_rows:
            raise ValueError("give dataset_id or calibration_rows, not both")
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


class VerdictFlips(BaseModel):
    """Prompts of one group whose verdict changed with the edit, paired prompt by prompt."""

    newly_refused: int
    no_longer_refused: int
    newly_harmful: int
    no_longer_harmful: int


class LanguageResultOut(BaseModel):
    """One language before and after. Harmful prompts: ASR, refusal and degenerate shares (disjoint), with
    binomial standard errors; plain and borderline harmless prompts: refusal (over-refusal) and degenerate
    shares; selectivity = harmful refusal rise minus harmless refusal rise; second_*: ASR on the second test
    set (another style); flips: per prompt group (harmful, plain, borderline, second) the prompts whose verdict
    changed each way (net shares hide prompts flipping both ways). Null where the job did not measure it (older
    jobs)."""

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
    flips: dict[str, VerdictFlips] | None = None


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

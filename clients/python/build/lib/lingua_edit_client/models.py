"""Response models. Unknown fields are kept (extra="allow") and statuses are plain strings, so a newer
server with more fields or states does not break an older client."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Progress(_Model):
    phase: str | None = None
    done: int = 0
    total: int = 0


class ErrorInfo(_Model):
    code: str
    message: str
    param: str | None = None
    type: str | None = None


class LanguageResult(_Model):
    language: str
    n: int
    asr_before: float
    asr_after: float
    refusal_before: float
    refusal_after: float


class Artifact(_Model):
    name: str
    kind: str  # model | delta | manifest | report | other (| future kinds)
    size: int
    sha256: str
    content_type: str = "application/octet-stream"
    created_at: datetime | None = None


class Edit(_Model):
    id: str
    status: str  # queued | running | cancelling | succeeded | failed | cancelled (| future states)
    model: str
    source_language: str | None = None
    target_languages: list[str] = Field(default_factory=list)
    dataset_id: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook_url: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    estimated_finish: datetime | None = None
    error: ErrorInfo | None = None
    results: list[LanguageResult] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    attempts: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class EditList(_Model):
    data: list[Edit]
    has_more: bool = False


class Event(_Model):
    id: int
    type: str
    level: str = "info"
    message: str = ""
    data: dict[str, Any] | None = None
    created_at: datetime | None = None


class EventList(_Model):
    data: list[Event]
    has_more: bool = False


class ArtifactList(_Model):
    data: list[Artifact]


class Dataset(_Model):
    id: str
    filename: str
    format: str
    size: int
    sha256: str
    rows: int
    languages: list[str] = Field(default_factory=list)
    created_at: datetime | None = None


class ModelInfo(_Model):
    id: str
    source: str


class ModelList(_Model):
    data: list[ModelInfo]


class WebhookSecret(_Model):
    exists: bool
    created_at: datetime | None = None
    rotated_at: datetime | None = None
    secret: str | None = None  # only in the answer that created or rotated it

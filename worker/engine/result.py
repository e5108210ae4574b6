"""What an edit returns: plain data, JSON-serialisable through `to_dict`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LanguageResult:
    lang: str
    n: int
    asr_before: float
    asr_after: float
    refusal_before: float
    refusal_after: float


@dataclass
class EditResult:
    languages: list[LanguageResult]
    utility: dict[str, Any]  # kl_mean, kl_per_lang, kl_first_token_*, ppl_before, ppl_after, anchor_change
    neurons: dict[str, Any]  # per "layer.module": count, fraction, jaccard_with_source per language
    timings: dict[str, float]  # seconds per phase
    peak_memory_mb: dict[str, float]
    artifacts: dict[str, Path]  # name -> path inside out_dir: model/, delta.safetensors, manifest.json, report.json
    warnings: list[str] = field(default_factory=list)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # lang -> first answers, verdicts

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifacts"] = {k: str(v) for k, v in self.artifacts.items()}
        return d

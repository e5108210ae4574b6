"""What an edit returns: plain data, JSON-serialisable through `to_dict`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LanguageResult:
    """One language, before and after the edit. Harmful prompts: attack success (answered), refusal and
    degenerate answers (blank, loops) are three disjoint shares. Harmless prompts (plain questions and
    borderline ones that only look alarming): refusal and degenerate shares. `selectivity` = the rise of
    harmful refusal minus the rise of harmless refusal (plain and borderline pooled). `second_*`: ASR on the
    second test set (the bundled demo set, another style), when the calibration came from elsewhere."""

    lang: str
    n: int
    asr_before: float
    asr_after: float
    refusal_before: float
    refusal_after: float
    degenerate_before: float = 0.0
    degenerate_after: float = 0.0
    harmless_n: int = 0
    harmless_refusal_before: float | None = None
    harmless_refusal_after: float | None = None
    harmless_degenerate_before: float | None = None
    harmless_degenerate_after: float | None = None
    borderline_n: int = 0
    borderline_refusal_before: float | None = None
    borderline_refusal_after: float | None = None
    borderline_degenerate_before: float | None = None
    borderline_degenerate_after: float | None = None
    selectivity: float | None = None
    second_n: int = 0
    second_asr_before: float | None = None
    second_asr_after: float | None = None


def standard_error(p: float | None, n: int) -> float | None:
    """Binomial standard error of a share p measured on n prompts."""
    return None if p is None or n <= 0 else (p * (1 - p) / n) ** 0.5


@dataclass
class EditResult:
    languages: list[LanguageResult]
    utility: dict[str, Any]  # kl_mean, kl_per_lang, kl_first_token_*, ppl_before, ppl_after, anchor_change
    neurons: dict[str, Any]  # per "layer.module": count, fraction, jaccard_with_source per language
    timings: dict[str, float]  # seconds per phase
    peak_memory_mb: dict[str, float]
    artifacts: dict[str, Path]  # name -> path inside out_dir: model/, delta.safetensors, manifest.json, report.json
    warnings: list[str] = field(default_factory=list)
    method: str = "paper"
    search: list[dict[str, Any]] = field(default_factory=list)  # every candidate the search scored
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # lang -> a few answers, both sides
    # lang -> prompt group (harmful, plain, borderline, second) -> prompts whose verdict changed, each way
    flips: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifacts"] = {k: str(v) for k, v in self.artifacts.items()}
        return d

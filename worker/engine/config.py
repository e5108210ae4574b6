"""Every knob of an edit job, with the defaults of the paper's method (arXiv:2602.22554; open choices marked)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .methods import MODULE_CHOICES

Module = Literal[MODULE_CHOICES]  # type: ignore[valid-type]  # closed-form modules, then methods/
Positions = Literal["template", "last", "all"]
NullSpace = Literal["soft", "hard"]
Selection = Literal["contrast", "refusal_gap"]
JudgeName = Literal["refusal", "guard", "openai"]
# search: rank sparse closed-form candidates on validation prompts and ship the winner (worker/engine/search.py);
# paper: the paper's closed form exactly as configured by `layers`, `module` and the solve knobs
Method = Literal["search", "paper"]

SUPPORTED_LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


@dataclass
class EditConfig:
    model: str = "demo"  # hub id, local directory, .gguf file, or "demo"
    base_revision: str | None = None  # hub models: the branch, tag or commit to load (recorded in the card)
    calibration: str | None = None  # path to JSONL/CSV; None = the bundled demo set
    source_lang: str = "en"
    target_langs: list[str] = field(default_factory=lambda: [lg for lg in SUPPORTED_LANGS if lg != "en"])
    eval_split: float = 0.3  # share of harmful ids held out for before/after ASR
    val_split: float = 0.2  # share of the calibration ids used to pick layers ("auto")
    max_calibration_ids: int | None = None  # cap on harmful calibration ids (compute budget)
    max_anchor_prompts: int | None = None  # cap per language on harmless anchor prompts (plain and borderline each)
    seed: int = 0
    method: Method = "search"
    # search (method="search"): candidate layers ("auto": 65%, 80% and 92% of the depth), gain multipliers of
    # the English harmful-minus-harmless difference, how many of the best candidates generation on validation
    # confirms and on how many validation ids per language
    search_layers: list[int] | Literal["auto"] = "auto"
    search_gains: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    confirm_candidates: int = 2
    confirm_prompts: int = 8
    # localisation
    layers: list[int] | Literal["auto"] = "auto"
    layer_band: tuple[float, float] = (0.4, 0.8)  # [open] depth band swept by layers="auto"
    module: Module = "gate"  # [open]
    tau_z: float = 2.0
    tau_d: float = 1.0
    neuron_budget: float | None = None  # fraction (<1) or count (>=1) of top-scored neurons; overrides taus
    positions: Positions = "template"  # [open]
    # contrast: the spec's harmful-vs-harmless z/d test; refusal_gap: the top neurons by how much of the
    # English-vs-target refusal gap their activation difference writes (needs neuron_budget, default 5%)
    select: Selection = "contrast"
    # solve
    rank: int = 32
    gamma: float = 1.0  # [open] utility-anchor weight (normalised)
    lam: float = 0.1  # [open] ridge weight (normalised); must stay > 0
    null_space: NullSpace = "soft"
    null_space_threshold: float = 1e-2  # relative eigenvalue threshold of the hard projector
    target_scale: float = 1.0  # >1 overshoots the English target (closes more of the gap per unit fit)
    # evaluation
    judge: JudgeName = "refusal"
    judge_model: str | None = None  # guard model path (judge="guard")
    judge_url: str | None = None  # OpenAI-compatible base URL (judge="openai")
    judge_api_model: str | None = None
    max_new_tokens: int = 48
    batch_size: int = 16
    max_eval_prompts: int | None = None  # per language cap on held-out prompts
    max_harmless_eval: int | None = 10  # per language cap on held-out plain and borderline harmless prompts
    second_test_prompts: int | None = 12  # per language cap on the second test set (bundled demo set)
    screen_prompts: int = 16  # validation ids per language for the layers="auto" refusal screen
    device: str | None = None  # None: cuda (bf16) when present, else cpu (float32)
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""What every method and measure shares: the model, the split, the run settings, the timer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from worker.engine.capture import capture_mlp_inputs
from worker.engine.config import EditConfig
from worker.engine.evaluate import refusal_token_ids
from worker.engine.keys import LayerKeys
from worker.engine.models import LoadedModel
from worker.engine.pipeline import Plan, Screen, collect_keys
from worker.engine.progress import Reporter
from worker.engine.stages import StageTimer

QUICK = "quick"
FULL = "full"


@dataclass
class Settings:
    """Sizes of one benchmark run. `quick` fits 20 minutes on 2 CPU cores; `full` uses the whole split."""

    mode: str
    eval_per_lang: int | None  # held-out harmful prompts per language (None: all)
    max_new_tokens: int
    cal_ids: int | None  # calibration ids used by every method (None: all)
    anchor_per_lang: int | None  # harmless anchor prompts per language (keys, retain set, direction)
    harmless_eval_per_lang: int | None  # held-out harmless prompts per language for KL / perplexity
    arith_per_lang: int  # arithmetic items per language
    arith_tokens: int
    screen_prompts: int  # validation ids per language for the refusal screen
    edit_layers: list[float]  # candidate depths (fractions) for the sparse edit's layer choice
    edit_modules: list[str]
    steer_layers: list[float]  # candidate depths for the steering direction
    steer_scales: list[float]
    lora_lrs: list[float]
    lora_steps: int
    lora_batch: int
    lora_retain_per_lang: int
    solve_dims: list[int]
    batch_size: int = 16

    @staticmethod
    def for_mode(mode: str) -> Settings:
        if mode == QUICK:
            return Settings(
                mode=QUICK, eval_per_lang=6, max_new_tokens=24, cal_ids=24, anchor_per_lang=16,
                harmless_eval_per_lang=4, arith_per_lang=4, arith_tokens=10, screen_prompts=6,
                edit_layers=[0.75], edit_modules=["gate"], steer_layers=[0.5], steer_scales=[0.5, 1.0],
                lora_lrs=[1e-3], lora_steps=12, lora_batch=8, lora_retain_per_lang=2,
                solve_dims=[896, 2048, 4096],
            )
        if mode == FULL:
            return Settings(
                mode=FULL, eval_per_lang=None, max_new_tokens=48, cal_ids=None, anchor_per_lang=None,
                harmless_eval_per_lang=None, arith_per_lang=30, arith_tokens=16, screen_prompts=16,
                edit_layers=[x / 20 for x in range(8, 17)], edit_modules=["gate", "up"],
                steer_layers=[0.4, 0.5, 0.6], steer_scales=[0.25, 0.5, 1.0, 1.5],
                lora_lrs=[3e-4, 1e-3], lora_steps=120, lora_batch=8, lora_retain_per_lang=8,
                solve_dims=[896, 2048, 4096],
            )
        raise ValueError(f"unknown mode {mode!r}")


@dataclass
class Context:
    lm: LoadedModel
    plan: Plan
    config: EditConfig  # the engine's defaults plus this run's decoding settings
    settings: Settings
    timer: StageTimer
    reporter: Reporter = field(default_factory=Reporter)
    token_ids: list[int] = field(default_factory=list)
    _keys: dict[tuple[int, str, bool], LayerKeys] = field(default_factory=dict)
    capture_seconds: dict[tuple[int, str, bool], float] = field(default_factory=dict)  # for the fit times
    _screen: Screen | None = None
    notes: list[str] = field(default_factory=list)
    cal_ids_available: int = 0  # calibration ids of the split before the mode's cap

    @property
    def n_layers(self) -> int:
        from worker.engine.arch import num_layers

        return num_layers(self.lm.model)

    def depth(self, fraction: float) -> int:
        return min(self.n_layers - 1, max(0, round(fraction * self.n_layers)))

    def keys(self, layer: int, config: EditConfig | None = None) -> LayerKeys:
        """Calibration keys of `layer` on the base model, captured once per (layer, positions, resid) and
        shared by every closed-form variant. `config` (default: the run's) sets positions and module."""
        cfg = config or self.config
        key = (layer, cfg.positions, cfg.module == "down")
        if key not in self._keys:
            start = time.perf_counter()
            with self.timer("capture"):
                self._keys[key] = collect_keys(self.lm, self.plan, [layer], cfg, self.reporter)[layer]
            self.capture_seconds[key] = time.perf_counter() - start
        return self._keys[key]

    def capture_time(self, layer: int, config: EditConfig | None = None) -> float:
        cfg = config or self.config
        return self.capture_seconds.get((layer, cfg.positions, cfg.module == "down"), 0.0)

    def screen(self) -> Screen:
        """The engine's first-token refusal screen on the validation slice (base scores measured once)."""
        if self._screen is None:
            self._screen = Screen(self.lm, self.plan, self.config, self.token_ids)
        return self._screen

    def set_refusal_tokens(self, english_refusals: list[str]) -> None:
        self.token_ids = refusal_token_ids(self.lm.tokenizer, english_refusals)

    def eval_prompts(self) -> dict[str, list[str]]:
        ids = self.plan.eval_ids[: self.settings.eval_per_lang] if self.settings.eval_per_lang else self.plan.eval_ids
        return {lg: [self.plan.harmful[i][lg] for i in ids] for lg in self.plan.langs}

    def harmless_eval(self) -> dict[str, list[str]]:
        n = self.settings.harmless_eval_per_lang
        return {lg: (t[:n] if n else t) for lg, t in self.plan.harmless_eval.items()}

    def capture(self, texts: list[str], layers: list[int], positions: str = "template") -> Any:
        return capture_mlp_inputs(self.lm.model, self.lm.tokenizer, texts, layers, positions,
                                  self.config.batch_size)

"""What every method and measure shares: the model, the split, the run settings, the timer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from worker.engine import (
    BaseReference,
    EditConfig,
    Judge,
    LayerKeys,
    LayerScreen,
    LoadedModel,
    Plan,
    Reporter,
    StageTimer,
    base_reference,
    capture_mlp_inputs,
    collect_keys,
    needs_residual,
    refusal_token_ids,
)

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
    overhead_texts: int  # prompts of the capture-overhead measure
    batch_size: int = 16

    @staticmethod
    def for_mode(mode: str) -> Settings:
        if mode == QUICK:
            return Settings(
                mode=QUICK, eval_per_lang=4, max_new_tokens=20, cal_ids=16, anchor_per_lang=10,
                harmless_eval_per_lang=3, arith_per_lang=3, arith_tokens=10, screen_prompts=3,
                edit_layers=[0.75], edit_modules=["gate"], steer_layers=[0.5], steer_scales=[0.5, 1.0],
                lora_lrs=[1e-3], lora_steps=6, lora_batch=8, lora_retain_per_lang=2,
                solve_dims=[896, 2048, 4096], overhead_texts=24,
            )
        if mode == FULL:
            return Settings(
                mode=FULL, eval_per_lang=None, max_new_tokens=48, cal_ids=None, anchor_per_lang=None,
                harmless_eval_per_lang=None, arith_per_lang=30, arith_tokens=16, screen_prompts=16,
                edit_layers=[x / 20 for x in range(8, 17)], edit_modules=["gate", "up"],
                steer_layers=[0.4, 0.5, 0.6], steer_scales=[0.25, 0.5, 1.0, 1.5],
                lora_lrs=[3e-4, 1e-3], lora_steps=120, lora_batch=8, lora_retain_per_lang=8,
                solve_dims=[896, 2048, 4096], overhead_texts=64,
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
    _screen: LayerScreen | None = None
    _kl_refs: dict[str, BaseReference | None] = field(default_factory=dict)
    second_judge: Judge | None = None  # --second-judge: scored beside the offline judge, with agreement
    notes: list[str] = field(default_factory=list)
    cal_ids_available: int = 0  # calibration ids of the split before the mode's cap

    @property
    def n_layers(self) -> int:
        from worker.engine import num_layers

        return num_layers(self.lm.model)

    def depth(self, fraction: float) -> int:
        return min(self.n_layers - 1, max(0, round(fraction * self.n_layers)))

    def keys(self, layer: int, config: EditConfig | None = None) -> LayerKeys:
        """Calibration keys of `layer` on the base model, captured once per (layer, positions) and shared by
        every closed-form variant. `config` (default: the run's) sets positions and whether the residual stream
        is needed; keys holding it serve a request without it."""
        cfg = config or self.config
        for resid in (True,) if needs_residual(cfg) else (False, True):
            if (layer, cfg.positions, resid) in self._keys:
                return self._keys[(layer, cfg.positions, resid)]
        self.prefetch([layer], cfg)
        return self._keys[(layer, cfg.positions, needs_residual(cfg))]

    def prefetch(self, layers: list[int], config: EditConfig | None = None, resid: bool = False) -> None:
        """Capture several layers' keys in one pass (it stops after the deepest): a pass to layer 22 costs
        little more than one to layer 18, so two variants at 18 and 22 share it. Each layer's capture time is
        the whole pass, which the fit times report (conservative: the pass was shared)."""
        cfg = config or self.config
        resid = resid or needs_residual(cfg)
        start = time.perf_counter()
        with self.timer("capture"):
            got = collect_keys(self.lm, self.plan, sorted(set(layers)), cfg, self.reporter, with_resid=resid)
        seconds = time.perf_counter() - start
        for layer, keys in got.items():
            self._keys[(layer, cfg.positions, resid)] = keys
            self.capture_seconds[(layer, cfg.positions, resid)] = seconds

    def capture_time(self, layer: int, config: EditConfig | None = None) -> float:
        cfg = config or self.config
        for resid in (True, False):
            if (layer, cfg.positions, resid) in self.capture_seconds:
                return self.capture_seconds[(layer, cfg.positions, resid)]
        return 0.0

    def kl_reference(self, lang: str) -> BaseReference | None:
        """The base model's side of the harmless KL / perplexity of `lang`, computed once for every method;
        None where the model's logits cannot be recomputed from its output head (each method then runs the base
        passes itself, as without a reference)."""
        if lang not in self._kl_refs:
            try:
                self._kl_refs[lang] = base_reference(self.lm.model, self.lm.tokenizer,
                                                     self.harmless_eval()[lang], self.config.batch_size)
            except ValueError:
                self._kl_refs[lang] = None
        return self._kl_refs[lang]

    def screen(self) -> LayerScreen:
        """The engine's first-token refusal screen on the validation slice (base scores measured once)."""
        if self._screen is None:
            self._screen = LayerScreen(self.lm, self.plan, self.config, self.token_ids)
        return self._screen

    def set_refusal_tokens(self, english_refusals: list[str]) -> None:
        self.token_ids = refusal_token_ids(self.lm.tokenizer, english_refusals)

    def eval_prompts(self) -> dict[str, list[str]]:
        ids = self.plan.eval_ids[: self.settings.eval_per_lang] if self.settings.eval_per_lang else self.plan.eval_ids
        return {lg: [self.plan.harmful[i][lg] for i in ids] for lg in self.plan.langs}

    def _capped(self, by_lang: dict[str, list[str]]) -> dict[str, list[str]]:
        n = self.settings.harmless_eval_per_lang
        return {lg: (t[:n] if n else t) for lg, t in by_lang.items()}

    def harmless_eval(self) -> dict[str, list[str]]:
        return self._capped(self.plan.harmless_eval)

    def borderline_eval(self) -> dict[str, list[str]]:
        """Held-out safe prompts that sound alarming (the bundled borderline set), as many as the plain ones."""
        return self._capped({lg: t for lg, t in self.plan.borderline_eval.items() if t})

    def capture(self, texts: list[str], layers: list[int], positions: str = "template") -> Any:
        return capture_mlp_inputs(self.lm.model, self.lm.tokenizer, texts, layers, positions,
                                  self.config.batch_size)

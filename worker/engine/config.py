"""Every knob of an edit job, defined once: its type (choices are the Literal types), default, help and bounds.

The defaults are those of the paper's method (arXiv:2602.22554; open choices marked [open]). Each field's
metadata (written with `knob(...)`) is the single source the rest of the house reads:
- `worker/engine/cli.py` generates the `lingua-edit edit` / `eval` flags (and the demo's) from it;
- `core/jobs/schemas.py` generates the API's `hyperparameters` schema (and the bounds of the request's
  top-level config fields) from it, so the OpenAPI document carries the same help and bounds;
- `validate_config` below is the one validator the CLI, the API and the engine all run.

Bounds (`ge`, `gt`, `le`, `lt`) apply to the number a field holds or to each number of its list; `min_items`,
`max_items` and `unique` to its list. `api` says where the HTTP API takes the field: "hyperparameters"
(default), "body:NAME" (a top-level request field NAME), "fixed" (not settable over HTTP: the engine's
default) or "server" (the worker's business, never the client's: removed from a job's stored config).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Literal

from .errors import UserError
from .methods import LAYER_METHODS, MODULE_CHOICES

if typing.TYPE_CHECKING:
    from .methods.gated import ReadoutSettings

SUPPORTED_LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")

Lang = Literal[SUPPORTED_LANGS]  # type: ignore[valid-type]
Module = Literal[MODULE_CHOICES]  # type: ignore[valid-type]  # closed-form modules, then methods/
Positions = Literal["template", "last", "all"]
NullSpace = Literal["soft", "hard"]
Selection = Literal["contrast", "refusal_gap"]
JudgeName = Literal["refusal", "guard", "openai"]
# search: rank sparse closed-form candidates on validation prompts and ship the winner (worker/engine/search.py);
# paper: the paper's closed form exactly as configured by `layers`, `module` and the solve knobs
Method = Literal["search", "paper"]

BOUNDS = ("ge", "gt", "le", "lt")
API_PLACES = ("hyperparameters", "fixed", "server")  # or "body:NAME"


def knob(default: Any = MISSING, *, help: str, factory: Any = MISSING, api: str = "hyperparameters",  # noqa: A002
         ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
         min_items: int | None = None, max_items: int | None = None, unique: bool = False) -> Any:
    """A field of EditConfig with its help, where the API takes it, and its bounds (only those given)."""
    if api not in API_PLACES and not api.startswith("body:"):
        raise ValueError(f"api must be one of {API_PLACES} or body:NAME, not {api!r}")
    meta = {"help": help, "api": api, "unique": unique}
    meta.update({k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("min_items", min_items),
                                   ("max_items", max_items)) if v is not None})
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EditConfig:
    model: str = knob("demo", api="body:model", help="hub id, local directory, .gguf file, or 'demo'")
    base_revision: str | None = knob(
        None, api="body:base_revision",
        help="hub models: the branch, tag or commit to load (recorded in the manifest and model card)")
    calibration: str | None = knob(
        None, api="server", help="JSONL or CSV calibration file (default: the bundled demo set)")
    source_lang: Lang = knob("en", api="body:source_language", help="the language whose refusals are the target")
    target_langs: list[Lang] = knob(
        factory=lambda: [lg for lg in SUPPORTED_LANGS if lg != "en"], api="body:target_languages",
        min_items=1, max_items=len(SUPPORTED_LANGS), unique=True,
        help="languages to edit (default: every supported language but English)")
    eval_split: float = knob(0.3, api="body:eval_split", gt=0, lt=1,
                             help="share of the harmful ids held out for the before/after evaluation")
    val_split: float = knob(0.2, api="fixed", ge=0, lt=1,
                            help="share of the calibration ids kept for validation (layer and candidate choice)")
    max_calibration_ids: int | None = knob(None, ge=1, help="cap on harmful calibration ids (compute budget)")
    max_anchor_prompts: int | None = knob(
        None, ge=1, help="cap per language on harmless anchor prompts (plain and borderline each)")
    dev_harmless_prompts: int = knob(
        40, ge=0, le=40, help="bundled development-only harmless prompts per language (0-40), plain and borderline "
        "each, added to the read-outs' negatives (three quarters) and the validation screen (a quarter); never held "
        "out. Default 40: held out, with confirm_candidates 3, a 43.7% cut with 11 harmless prompts newly refused "
        "against 41.4% and 13 at 0 (BENCHMARKS.md §1v); 0 gives back the earlier default's anchor and screen "
        "(4 GiB less peak memory on the demo model)")
    seed: int = knob(0, ge=0, help="seed of the calibration/validation/evaluation split")
    method: Method = knob(
        "search", help="search (default): rank sparse closed-form candidates on validation prompts and ship the "
        "winner; paper: the paper's closed form exactly as layers, module and the solve knobs say")
    # search (method="search")
    search_layers: list[int] | Literal["auto"] = knob(
        "auto", ge=0, le=1024, min_items=1, max_items=8,
        help='layers the search tries: "auto" (65%, 80% and 92% of the depth) or layer indices')
    search_gains: list[float] = knob(
        factory=lambda: [1.0, 2.0, 4.0], gt=0, le=100, min_items=1, max_items=8,
        help="gain multipliers of the gated neurons' write (gated_write) the search tries")
    ladder_layers: int = knob(
        0, ge=0, le=8, help="the gain ladder: how many of the best screened layers also get every gain generated on "
        "validation prompts and a gain per language chosen from those answers (0: none; BENCHMARKS.md §1g)")
    stack_fit: Literal["base", "in_order", "pruned"] = knob(
        "base", help="how the search's every-layer stack is fitted: base (default), every layer on the base "
        "model's keys; pruned adds the stack without each of its layers and the stack with each language's "
        "neuron removed at the layer whose removal raised that language's selectivity most on the screen "
        "(a deeper gate can go quiet on harm under the shallower neurons and keep writing on harmless "
        "questions, BENCHMARKS.md §1v; up to four more screen passes, minutes): the best on validation prompts, held "
        "out 42.3% against the default's 43.7% with as many harmless refusals and half the harmless KL (§1w); "
        "in_order adds a candidate whose deeper layers' gates are fitted on keys captured with the shallower "
        "layers' neurons applied (under them the base-fitted deeper gates go quiet on harmful prompts: §1p); "
        "where its harmless rise passes the tolerance in some languages, their gains are halved, then 0, on "
        "the screen. On the demo model, with bn and jv halved, it screened best but the generation check kept "
        "the base stack by one validation prompt; shipped once, it cut 33% held out against the default's 41% "
        "with fewer harmless refusals (§1s). Its two recaptures add 21-32 minutes on 2 CPU cores (§1q, §1r)")
    confirm_candidates: int = knob(
        3, ge=0, le=8, help="best search candidates confirmed by generation on validation prompts (0: screen only; "
        "3: with the development-only prompts the three-layer stack screens third and wins the confirmation, "
        "BENCHMARKS.md §1v)")
    confirm_prompts: int = knob(10, ge=1, le=256,
                                help="validation ids per language generated on in the confirmation")
    confirm_harmless_prompts: int = knob(
        4, ge=1, le=256, help="validation harmless prompts per language generated on in the confirmation, plain "
        "and borderline each (a single newly refused one flags the language; 256 takes every one, about 7 and 7 "
        "per language on the demo model's split; held out it cut less and over-refusal only partly, BENCHMARKS.md §1n)")
    confirm_mend: Literal["language", "neuron"] = knob(
        "language", help="how the confirmation mends a language whose harmless refusal rose past the tolerance "
        "on validation prompts: language (default), half its gain at every layer, then 0; neuron, first only its "
        "neuron with the largest harmless share (largest write on the language's validation harmless prompts "
        "over its mean write on its validation harmful ones, with the candidate applied), keeping its push at "
        "the other layers, then half, then 0 (one generation pass more at most per candidate). Held out on the "
        "demo model with confirm_harmless_prompts 8 it cut 38.1% against the default's 43.7%: Javanese went to "
        "gain 0 and one prompt worse (BENCHMARKS.md §1x)")
    readout_gamma: float = knob(
        4.0, gt=0, le=100, help="weight of harmless prompts in the gated neurons' harmfulness read-out: higher fires "
        "on fewer harmless prompts and on fewer harmful ones (BENCHMARKS.md §1f)")
    readout_lam: float = knob(0.01, gt=0, le=100, help="ridge weight (normalised) of that read-out")
    readout_borderline_weight: float = knob(
        1.0, gt=0, le=100, help="weight of a borderline-harmless anchor prompt (alarming topic, benign intent) "
        "against a plain one in that read-out and in the neurons' language read-out (BENCHMARKS.md §1h)")
    readout_scope: Literal["pooled", "per_language"] = knob(
        "per_language", help="per_language (default): one neuron per target language, each gated by that "
        "language's own read-out, shut on source-language harm; pooled: one read-out for every language "
        "(BENCHMARKS.md §1h-§1i, §1l)")
    readout_focus_weight: float = knob(
        4.0, gt=0, le=100, help="with readout_scope per_language: weight of a language's own harmless anchor "
        "prompts against the other languages' in its read-out")
    readout_answer_ids: int = knob(
        16, ge=0, le=256, help="calibration ids per language whose base-model answers (and a fixed refusal), "
        "teacher-forced, are negatives of the gates' read-out: the neurons then write where the answer is decided, "
        "not on generated tokens, where a high gain lowers English refusal and breaks answers (0: none; "
        "BENCHMARKS.md §1k)")
    readout_threshold: float = knob(
        0.0, ge=0, lt=1, help="the gates open only where their read-out scores above this (its harmful target is "
        "+1), writes rescaled so a +1 input writes as before: cuts the writes on harmless prompts the read-out "
        "half-confuses with harm more than the harmful ones' (0: none; BENCHMARKS.md §1p)")
    gated_write: Literal["push", "to_source"] = knob(
        "to_source", help="what the gated neurons write: to_source (default), one neuron per language writing the "
        "source-minus-that-language harmful difference (the largest cut on held-out prompts: BENCHMARKS.md §1l, "
        "§1); push, the English harmful-minus-harmless difference")
    # localisation (method="paper")
    layers: list[int] | Literal["auto"] = knob(
        "auto", ge=0, le=1024, min_items=1, max_items=256, unique=True,
        help='"auto" (the layer screen over layer_band) or distinct layer indices')
    layer_band: tuple[float, float] = knob(
        (0.4, 0.8), api="fixed", ge=0, le=1, help="[open] depth band (fractions) swept by layers auto")
    module: Module = knob(
        "gate", help="[open] the MLP projection the closed form edits (gate, up, gate+up, down), or a registered "
        "method: conditional repurposes neuron_budget (default 1) least-used neurons as a harmful-input-gated "
        "refusal writer (beyond the paper)")
    tau_z: float = knob(2.0, ge=0, help="z-score threshold of the harmful-vs-harmless neuron contrast")
    tau_d: float = knob(1.0, ge=0, help="activation-difference threshold of the neuron contrast")
    neuron_budget: float | None = knob(
        None, gt=0, help="fraction (<1) or count (>=1) of the top-scored neurons; overrides tau_z and tau_d")
    positions: Positions = knob(
        "template", help="[open] token positions whose MLP inputs are edited: the chat template's, the last, all")
    select: Selection = knob(
        "contrast", help="neuron selection: the spec's z/d contrast, or the top neurons by how much of the "
        "English-vs-target refusal gap they write (refusal_gap; neuron_budget, default 5%)")
    # solve
    rank: int = knob(32, ge=1, le=65536, help="rank of the closed-form edit")
    gamma: float = knob(1.0, ge=0, help="[open] utility-anchor weight (normalised)")
    lam: float = knob(0.1, gt=0, help="[open] ridge weight (normalised); must stay > 0 (without it the edit "
                      "breaks the model)")
    null_space: NullSpace = knob("soft", help="utility constraint: soft (anchor penalty) or hard (projector)")
    null_space_threshold: float = knob(1e-2, api="fixed", gt=0,
                                       help="relative eigenvalue threshold of the hard projector")
    target_scale: float = knob(1.0, gt=0, le=100,
                               help=">1 overshoots the English target (closes more of the gap per unit fit)")
    # evaluation
    judge: JudgeName = knob("refusal", api="body:judge", help="who judges the answers: the offline refusal "
                            "matcher, a guard model (judge_model) or an OpenAI-compatible API (judge_url)")
    judge_model: str | None = knob(None, api="server", help="guard model path (judge guard)")
    judge_url: str | None = knob(None, api="server", help="OpenAI-compatible base URL (judge openai)")
    judge_api_model: str | None = knob(None, api="server", help="model name at judge_url (judge openai)")
    max_new_tokens: int = knob(48, ge=1, le=2048, help="tokens generated per answer")
    batch_size: int = knob(16, ge=1, le=512, help="prompts per forward pass")
    max_eval_prompts: int | None = knob(None, ge=1, help="cap per language on held-out harmful prompts")
    max_harmless_eval: int | None = knob(
        10, ge=1, help="cap per language on held-out plain and borderline harmless prompts")
    second_test_prompts: int | None = knob(
        12, ge=0, help="prompts per language of the second test set (the bundled demo set; 0 to skip)")
    screen_prompts: int = knob(16, ge=1, le=256,
                               help="validation ids per language of the first-token refusal screen")
    device: str | None = knob(None, api="server", help="cuda or cpu (default: cuda in bf16 when present, "
                              "else cpu in float32)")
    dtype: str | None = knob(None, api="server", help="torch dtype, e.g. bfloat16 (default: by device)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def readout(self) -> ReadoutSettings:
        """The readout_* knobs as the gated method takes them."""
        from .methods.gated import ReadoutSettings  # torch comes with it; the API imports this module without

        return ReadoutSettings(self.readout_gamma, self.readout_lam, self.readout_borderline_weight,
                               self.readout_scope, self.readout_focus_weight, self.readout_answer_ids,
                               self.gated_write, self.readout_threshold)


def config_fields() -> list[Field]:
    """EditConfig's fields, in order."""
    return list(fields(EditConfig))


def field_types() -> dict[str, Any]:
    """Each field's resolved type (the annotations are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(EditConfig)


def choices_of(tp: Any) -> tuple[Any, ...] | None:
    """The values of a Literal type, also as a list's item type or inside Optional; None otherwise (a union
    with another member, such as list[int] | Literal["auto"], has no choices)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return typing.get_args(tp)
    if origin in (list, tuple):
        return choices_of(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return choices_of(members[0]) if len(members) == 1 else None
    return None


def accepts_auto(tp: Any) -> bool:
    """Whether the field also takes the string "auto" (a list of layers or "auto")."""
    return any(typing.get_origin(a) is Literal and "auto" in typing.get_args(a) for a in typing.get_args(tp))


def _matches(v: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return v is None
    if origin is Literal:
        return v in args
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, a) for a in args)
    if origin is list:
        return isinstance(v, list) and all(_matches(x, args[0]) for x in v)
    if origin is tuple:
        return (isinstance(v, tuple | list) and len(v) == len(args)
                and all(_matches(x, a) for x, a in zip(v, args, strict=True)))
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, tp)


_OPS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b), "le": ("<=", lambda v, b: v <= b),
        "lt": ("<", lambda v, b: v < b)}


def _bound_error(v: float, meta: Any) -> str | None:
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number"
    for key, (op, ok) in _OPS.items():
        if key in meta and not ok(v, meta[key]):
            return f"must be {op} {meta[key]:g}"
    return None


def field_error(v: Any, tp: Any, meta: Any) -> str | None:
    """What is wrong with one value against its field's type (choices included) and metadata, or None."""
    items = list(v) if isinstance(v, list | tuple) else [v]
    choices = choices_of(tp)
    if not _matches(v, tp):
        if choices is not None:
            wrong = next((x for x in items if x not in choices), v)
            return f"{wrong!r} is not one of {', '.join(map(str, choices))}"
        return f"{v!r} is not {_describe(tp)}"
    if v is None or (v == "auto" and accepts_auto(tp)):
        return None
    if isinstance(v, list | tuple):
        if len(v) < meta.get("min_items", 0):
            return f"needs at least {meta['min_items']} item(s)" + (' (or "auto")' if accepts_auto(tp) else "")
        if len(v) > meta.get("max_items", len(v)):
            return f"takes at most {meta['max_items']} items"
        if meta.get("unique") and len(set(v)) != len(v):
            return "must not repeat an item"
    for x in items:
        if isinstance(x, int | float) and not isinstance(x, bool):
            why = _bound_error(x, meta)
            if why:
                return why
    return None


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(args[0], _describe(args[0]))
    if origin is tuple:
        return f"{len(args)} numbers"
    return {int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(tp, str(tp))


def validate_config(config: EditConfig, n_layers: int | None = None) -> None:
    """Reject bad hyperparameters before any heavy work (UserError naming the parameter).

    Every field against its type and metadata (choices, bounds, list length, distinct items), then the rules
    between fields; with `n_layers` (once the model is loaded) the layer indices against the model's depth."""
    types_ = field_types()
    for f in config_fields():
        why = field_error(getattr(config, f.name), types_[f.name], f.metadata)
        if why:
            raise UserError(f"{f.name}: {why}", param=f.name)
    _check_rules(config, n_layers)


def _check_rules(config: EditConfig, n_layers: int | None) -> None:
    """The rules between fields, and the layer indices against the model's depth."""
    def bad(param: str, why: str) -> UserError:
        return UserError(f"{param}: {why}", param=param)

    if config.source_lang in config.target_langs:
        raise bad("target_langs", "the source language cannot also be a target")
    method = LAYER_METHODS.get(config.module)
    if (config.module == "down" or (method and method.fixed_positions)) and config.positions == "all":
        raise bad("positions", f"the {config.module} variant needs fixed positions (template or last)")
    if config.select == "refusal_gap" and config.positions == "all":
        raise bad("positions", "refusal_gap selection needs fixed positions (template or last)")
    if n_layers is not None:
        if config.search_layers != "auto" and any(not 1 <= int(x) < n_layers for x in config.search_layers):
            raise bad("search_layers", f"layer indices must be in [1, {n_layers})")
        if config.layers != "auto" and any(not 0 <= int(x) < n_layers for x in config.layers):
            raise bad("layers", f"layer indices must be in [0, {n_layers})")

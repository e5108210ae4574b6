"""EditConfig is the one definition of an edit's knobs: the CLI flags and the API schema are generated from it
and agree with it field by field (flag, choices, default, bounds), and one validator serves all three."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest
from pydantic import ValidationError

from core.jobs.config_schema import (
    ConfigInvalid,
    api_param,
    api_place,
    check_config,
    server_only_names,
    to_config,
)
from core.jobs.schemas import EditCreate, Hyperparameters
from worker.engine.cli import add_config_flags, config_from_args
from worker.engine.config import (
    BOUNDS,
    EditConfig,
    accepts_auto,
    choices_of,
    config_fields,
    field_types,
    validate_config,
)
from worker.engine.errors import UserError

FIELDS = config_fields()
TYPES = field_types()
NAMES = [f.name for f in FIELDS]
SCHEMA_KEYS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum",
               "min_items": "minItems", "max_items": "maxItems"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return p


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in _parser()._actions if a.dest != "help"}


def _constraints(node: Any, out: dict[str, set] | None = None) -> dict[str, set]:
    """Every bound, length and enum value anywhere in a JSON schema node."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            if k in SCHEMA_KEYS.values():
                out.setdefault(k, set()).add(v)
            elif k == "enum":
                out.setdefault("enum", set()).update(v)
            elif k == "const":
                out.setdefault("enum", set()).add(v)
            else:
                _constraints(v, out)
    elif isinstance(node, list):
        for x in node:
            _constraints(x, out)
    return out


def _expected(name: str) -> dict[str, set]:
    meta = next(f.metadata for f in FIELDS if f.name == name)
    want = {SCHEMA_KEYS[k]: {meta[k]} for k in (*BOUNDS, "min_items", "max_items") if k in meta}
    choices = set(choices_of(TYPES[name]) or ()) | ({"auto"} if accepts_auto(TYPES[name]) else set())
    if choices:
        want["enum"] = choices
    return want


def _api_schema(name: str) -> dict[str, Any]:
    place = api_place(name)
    if place == "hyperparameters":
        return Hyperparameters.model_json_schema()["properties"][name]
    return EditCreate.model_json_schema()["properties"][place.removeprefix("body:")]


def test_every_field_has_help_and_a_known_api_place() -> None:
    for f in FIELDS:
        assert f.metadata.get("help"), f.name
        place = f.metadata["api"]
        assert place in ("hyperparameters", "fixed", "server") or place.startswith("body:"), f.name


@pytest.mark.parametrize("name", NAMES)
def test_cli_flag_matches_the_field(name: str) -> None:
    action = _actions().get(name)
    assert action is not None, f"EditConfig.{name} has no CLI flag"
    assert action.option_strings == ["--" + name.replace("_", "-")]
    assert action.default == getattr(EditConfig(), name)
    assert action.help and action.help.startswith(
        next(f.metadata["help"] for f in FIELDS if f.name == name).replace("%", "%%"))
    choices = choices_of(TYPES[name])
    if choices is not None and action.choices is not None:  # scalar Literal: argparse checks the choice
        assert list(action.choices) == list(choices)
    elif choices is not None:  # a list of choices (target_langs): its parser refuses others
        with pytest.raises(argparse.ArgumentTypeError):
            action.type("xx-not-a-choice")


def test_cli_defaults_give_the_default_config() -> None:
    assert config_from_args(_parser().parse_args([])) == EditConfig()


def test_cli_parses_every_kind_of_field() -> None:
    a = _parser().parse_args(["--target-langs", "zh,sw", "--layers", "3,5", "--search-layers", "auto",
                              "--search-gains", "1,2.5", "--layer-band", "0.3,0.7", "--neuron-budget", "8",
                              "--module", "down", "--rank", "4"])
    cfg = config_from_args(a)
    assert cfg.target_langs == ["zh", "sw"] and cfg.layers == [3, 5] and cfg.search_layers == "auto"
    assert cfg.search_gains == [1.0, 2.5] and cfg.layer_band == (0.3, 0.7)
    assert cfg.neuron_budget == 8 and isinstance(cfg.neuron_budget, int)  # a count
    assert cfg.module == "down" and cfg.rank == 4
    validate_config(cfg)


@pytest.mark.parametrize("name", NAMES)
def test_api_schema_matches_the_field(name: str) -> None:
    place = api_place(name)
    hyper = set(Hyperparameters.model_fields)
    body = set(EditCreate.model_fields) - {"hyperparameters"}
    if place in ("fixed", "server"):  # not settable over HTTP
        assert name not in hyper and place not in body
        return
    schema = _api_schema(name)
    if place == "hyperparameters":  # (model and base_revision keep the API's own words: what HTTP accepts)
        assert schema.get("description") == next(f.metadata["help"] for f in FIELDS if f.name == name)
    got = _constraints(schema)
    assert got == _expected(name), f"{name}: API schema {got} != EditConfig {_expected(name)}"


def test_api_takes_no_field_outside_editconfig() -> None:
    places = {api_place(n) for n in NAMES}
    assert set(Hyperparameters.model_fields) == {n for n in NAMES if api_place(n) == "hyperparameters"}
    config_body = {p.removeprefix("body:") for p in places if p.startswith("body:")}
    assert config_body <= set(EditCreate.model_fields)


def _numeric_cases() -> list[tuple[str, Any, bool]]:
    """For each numeric bound: a value on it and one just past it, with whether it is allowed."""
    cases = []
    for f in FIELDS:
        meta, tp = f.metadata, TYPES[f.name]
        is_list = any(getattr(a, "__origin__", None) in (list, tuple) for a in (tp, *getattr(tp, "__args__", ())))
        is_int = int in (tp, *getattr(tp, "__args__", ())) or "list[int]" in str(tp)
        step = 1 if is_int else 1e-6
        for key in BOUNDS:
            if key not in meta:
                continue
            b = meta[key]
            on, past = (b, b - step) if key == "ge" else (b, b + step) if key == "le" else \
                (b + step, b) if key == "gt" else (b - step, b)
            for v, ok in ((on, True), (past, False)):
                v = int(v) if is_int else float(v)
                value = (v, v) if f.name == "layer_band" else [v] if is_list else v
                cases.append((f.name, value, ok))
    return cases


@pytest.mark.parametrize(("name", "value", "ok"), _numeric_cases())
def test_engine_and_api_agree_on_every_bound(name: str, value: Any, ok: bool) -> None:
    """The engine's validator and (for API fields) the generated schema accept and refuse the same values."""
    try:
        validate_config(EditConfig(**{name: value}))
        engine_ok = True
    except UserError as exc:
        assert exc.param == name
        engine_ok = False
    assert engine_ok == ok, (name, value)
    place = api_place(name)
    if place == "hyperparameters":
        try:
            Hyperparameters(**{name: value})
            api_ok = True
        except ValidationError:
            api_ok = False
        assert api_ok == ok, (name, value)


@pytest.mark.parametrize(("field", "value"), [
    ("lam", 0.0), ("gamma", -1.0), ("rank", 0), ("module", "attn"), ("positions", "first"),
    ("target_langs", ["xx"]), ("target_langs", ["en"]), ("target_langs", ["zh", "zh"]), ("eval_split", 1.5),
    ("layers", []), ("layers", [2, 2]), ("layers", "all"), ("select", "random"), ("gamma", math.nan),
    ("search_gains", []), ("rank", True), ("batch_size", 2.0),
])
def test_bad_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(UserError) as err:
        validate_config(EditConfig(**{field: value}))
    assert err.value.param == field and err.value.message.startswith(f"{field}: ")


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"module": "down", "positions": "all"}, "positions"),
    ({"module": "conditional", "positions": "all"}, "positions"),
    ({"select": "refusal_gap", "positions": "all"}, "positions"),
    ({"source_lang": "zh", "target_langs": ["zh", "sw"]}, "target_langs"),
])
def test_rules_between_fields(kwargs: dict, param: str) -> None:
    with pytest.raises(UserError) as err:
        validate_config(EditConfig(**kwargs))
    assert err.value.param == param


def test_layer_indices_against_the_depth() -> None:
    validate_config(EditConfig(layers=[0, 3], search_layers=[1, 3]), n_layers=4)
    for kwargs, param in (({"layers": [4]}, "layers"), ({"search_layers": [0]}, "search_layers")):
        with pytest.raises(UserError) as err:
            validate_config(EditConfig(**kwargs), n_layers=4)
        assert err.value.param == param


def test_api_request_maps_onto_the_config_and_names_errors_as_the_api_does() -> None:
    body = EditCreate(model="tiny", target_languages=["zh"], eval_split=0.4, judge="refusal",
                      hyperparameters={"layers": [1, 2], "rank": 4})
    cfg = to_config(body)
    assert (cfg.model, cfg.target_langs, cfg.eval_split, cfg.layers, cfg.rank) == ("tiny", ["zh"], 0.4, [1, 2], 4)
    assert cfg.module == EditConfig().module  # unset: the engine's default
    check_config(cfg)
    cases = [
        (EditCreate(model="tiny", hyperparameters={"layers": [1, 1]}), "hyperparameters.layers"),
        (EditCreate(model="tiny", hyperparameters={"module": "down", "positions": "all"}),
         "hyperparameters.positions"),
        (EditCreate(model="tiny", target_languages=["en"]), "target_languages"),
        (EditCreate(model="tiny", target_languages=["zh", "zh"]), "target_languages"),
    ]
    for req, param in cases:
        with pytest.raises(ConfigInvalid) as err:
            check_config(to_config(req))
        assert err.value.param == param and err.value.message.startswith(f"{param}: ")
    assert api_param("source_lang") == "source_language" and api_param("rank") == "hyperparameters.rank"
    assert set(server_only_names()) == {"calibration", "judge_model", "judge_url", "judge_api_model", "device",
                                        "dtype"}


def test_demo_flags_are_editconfig_flags_with_the_demo_defaults() -> None:
    from app.demo import DEMO_DEFAULTS, DEMO_FIELDS, add_arguments, build_request

    p = argparse.ArgumentParser()
    add_arguments(p)
    demo = {a.dest: a for a in p._actions}
    edit = _actions()
    for name in DEMO_FIELDS:
        assert demo[name].help == edit[name].help and demo[name].choices == edit[name].choices
        assert demo[name].default == DEMO_DEFAULTS[name]
    body = build_request(p.parse_args(["--method", "paper", "--layers", "1,2", "--neuron-budget", "8"]))
    assert body["hyperparameters"]["layers"] == [1, 2] and body["hyperparameters"]["neuron_budget"] == 8.0
    Hyperparameters(**body["hyperparameters"])  # the demo's request passes the API's schema


def test_demo_search_request_leaves_out_the_development_only_prompts_the_default_adds() -> None:
    # the default reads 40 per language (BENCHMARKS.md §1v); the demo's 15-minute sizing (§1c) was measured at 0
    from app.demo import add_arguments, build_request

    p = argparse.ArgumentParser()
    add_arguments(p)
    hp = build_request(p.parse_args(["--method", "search"]))["hyperparameters"]
    assert EditConfig().dev_harmless_prompts > 0
    assert hp["dev_harmless_prompts"] == 0 and hp["confirm_candidates"] == 1
    Hyperparameters(**hp)


def test_demo_search_on_the_demo_model_keeps_two_of_the_default_search_layers() -> None:
    # the demo drops the shallowest depth for time (BENCHMARKS.md §1c, session 28); what it keeps must be layers
    # the full default searches on the same model, or the demo would show an edit `lingua-edit edit` never tries
    from app.demo import add_arguments, build_request
    from worker.engine.stages.select import search_layers

    p = argparse.ArgumentParser()
    add_arguments(p)
    hp = build_request(p.parse_args(["--method", "search"]))["hyperparameters"]
    default_layers = search_layers(EditConfig(), n_layers=24)  # Qwen2.5-0.5B, the demo model, has 24 layers
    assert len(hp["search_layers"]) == 2 and set(hp["search_layers"]) < set(default_layers)
    assert "search_layers" not in build_request(p.parse_args(["--model", "other"]))["hyperparameters"]
    Hyperparameters(**hp)

"""The API's side of EditConfig (worker/engine/config.py), generated from its fields: the pydantic types of the
`hyperparameters` object and of the request's top-level config fields (help, choices and bounds included, so
the OpenAPI document carries them), the mapping of a request onto an EditConfig, and the engine's validator
with its errors named as the API names the fields."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from worker.engine.config import BOUNDS, EditConfig, config_fields, field_types, validate_config
from worker.engine.errors import UserError

FIELDS = {f.name: f for f in config_fields()}
_TYPES = field_types()
_LENGTHS = (("min_items", "min_length"), ("max_items", "max_length"))


def _constrained(tp: Any, meta: Any) -> Any:
    """`tp` with the field's bounds on its numbers (or its list's numbers) and its list length; no None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [_constrained(a, meta) for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else typing.Union[tuple(members)]  # noqa: UP007
    if origin is list:
        item = _constrained(typing.get_args(tp)[0], meta)
        length = {name: meta[key] for key, name in _LENGTHS if key in meta}
        return Annotated[list[item], Field(**length)] if length else list[item]  # type: ignore[valid-type]
    if tp in (int, float):
        bounds = {k: meta[k] for k in BOUNDS if k in meta}
        return Annotated[tp, Field(**bounds)] if bounds else tp
    return tp  # a Literal (its choices) or str


def config_type(name: str) -> Any:
    """The pydantic type of EditConfig field `name` (without None)."""
    return _constrained(_TYPES[name], FIELDS[name].metadata)


def config_help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def api_place(name: str) -> str:
    """Where the API takes EditConfig field `name`: "hyperparameters", "body:NAME", "fixed" or "server"."""
    return FIELDS[name].metadata["api"]


def api_param(name: str) -> str:
    """The request field that carries EditConfig field `name` (as errors name it)."""
    place = api_place(name)
    return place[len("body:"):] if place.startswith("body:") else f"hyperparameters.{name}"


def hyperparameter_names() -> list[str]:
    return [name for name in FIELDS if api_place(name) == "hyperparameters"]


def server_only_names() -> list[str]:
    """Fields the worker sets (paths, devices, judge endpoints): never taken from, or stored for, a client."""
    return [name for name in FIELDS if api_place(name) == "server"]


def hyperparameters_model() -> type[BaseModel]:
    """The `hyperparameters` object: every EditConfig field the API takes there, optional (unset: the
    engine's default), strictly typed (no coercion: "rank": true or "4" is an error) with finite numbers."""
    fields: dict[str, Any] = {
        name: (config_type(name) | None, Field(None, description=config_help(name)))
        for name in hyperparameter_names()
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        "Hyperparameters",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
        __doc__="Unset fields take the engine's defaults (worker/engine/config.py).",
        **fields,
    )


def to_config(body: Any) -> EditConfig:
    """The EditConfig of a request (`EditCreate`): its top-level config fields and its hyperparameters, unset
    ones at the engine's defaults."""
    values: dict[str, Any] = {}
    for name in FIELDS:
        place = api_place(name)
        if place.startswith("body:"):
            v = getattr(body, place[len("body:"):])
        elif place == "hyperparameters":
            v = getattr(body.hyperparameters, name)
        else:
            continue
        if v is not None:
            values[name] = list(v) if isinstance(v, list) else v
    return EditConfig(**values)


class ConfigInvalid(Exception):
    """The engine's validator refused a request's config; `param` names the request field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


def check_config(config: EditConfig) -> None:
    """The engine's validator (the one the CLI and the worker run), its error named as the API names the
    field: ConfigInvalid("hyperparameters.layers", "hyperparameters.layers: must not repeat an item")."""
    try:
        validate_config(config)
    except UserError as exc:
        name = exc.param or ""
        if name not in FIELDS:
            raise ConfigInvalid(name, exc.message) from None
        why = exc.message.removeprefix(f"{name}: ")
        param = api_param(name)
        raise ConfigInvalid(param, f"{param}: {why}") from None

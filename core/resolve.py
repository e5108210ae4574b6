"""Which model names a job may ask for, and what the worker loads for each.

Accepted: `demo`, a name in LINGUA_EDIT_MODEL_REGISTRY, and (when LINGUA_EDIT_ALLOW_HUB_MODELS) a
syntactically valid hub id `owner/name`. A hub id is never read as a filesystem path, and every other name
gets the same error, so answers do not depend on the server's file layout. Checked by the API at
submission and again by the worker before it loads anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from core.settings import Settings

# worker.engine.models.DEMO_NAME; not imported, because that module imports torch (the API never needs it)
DEMO_NAME = "demo"
# owner/name as the hub spells repository ids; no "..", "--" edges, or a leading/trailing "." or "-".
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")

UNKNOWN_MODEL = "unknown model: use 'demo', a registered model name (GET /v1/models) or a hub id owner/name"


class UnknownModelError(ValueError):
    code = "model_not_found"

    def __init__(self) -> None:
        super().__init__(UNKNOWN_MODEL)


@dataclass(frozen=True)
class ModelRef:
    """`name`: what the client asked for (public); `source`: where it comes from; `target`: the registry
    entry (a server path, never shown) or the hub id."""

    name: str
    source: Literal["demo", "registered", "hub"]
    target: str


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name)) and ".." not in name


def resolve_model(settings: Settings, name: str) -> ModelRef:
    if not isinstance(name, str) or "\x00" in name:
        raise UnknownModelError()
    if name == DEMO_NAME:
        return ModelRef(name, "demo", DEMO_NAME)
    if name in settings.model_registry:
        return ModelRef(name, "registered", settings.model_registry[name])
    if settings.allow_hub_models and is_hub_id(name):
        return ModelRef(name, "hub", name)
    raise UnknownModelError()

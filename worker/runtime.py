"""The worker process's handles, built lazily in the process that runs tasks (the prefork child, never the
parent): the core context (database, storage, queue) and the LRU of loaded models."""

from __future__ import annotations

from functools import lru_cache

from core.context import Context, make_context
from core.settings import get_settings
from worker.model_cache import ModelCache


@lru_cache
def context() -> Context:
    return make_context(get_settings())


@lru_cache
def model_cache() -> ModelCache:
    return ModelCache(get_settings().model_cache_size)

"""Loaded models kept per worker process across jobs (LRU, bounded), so repeated jobs skip the load."""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger("lingua_edit.worker")


class ModelCache:
    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    def get(
        self,
        spec: str,
        device: str | None,
        dtype: str | None,
        registry: dict[str, str],
        revision: str | None = None,
    ) -> Any:
        from worker.engine.models import load_model

        key = (spec, registry.get(spec), device, dtype, revision)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if self.size:
            while len(self._items) >= self.size:  # free memory before loading the next one
                self._evict_oldest()
        loaded = load_model(spec, device=device, dtype=dtype, registry=registry, revision=revision)
        if self.size:
            self._items[key] = loaded
        return loaded

    def discard(self, loaded: Any) -> None:
        """Drop a model whose in-place edit may not have been reverted (the job failed mid-edit)."""
        for k, v in list(self._items.items()):
            if v is loaded:
                del self._items[k]
        _free()

    def _evict_oldest(self) -> None:
        key, _ = self._items.popitem(last=False)
        log.info("evicting model %s from the cache", key[0])
        _free()


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass

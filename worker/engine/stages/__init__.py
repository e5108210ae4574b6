"""Wall time and peak memory per pipeline stage."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class StageTimer:
    """Accumulates seconds per stage; peak memory is the process's RSS high-water mark (and the CUDA peak
    when a GPU is used) seen at the end of each stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
            peak = _rss_peak_mb()
            if torch.cuda.is_available():
                self.peak_mb[f"{stage}_cuda"] = max(self.peak_mb.get(f"{stage}_cuda", 0.0),
                                                    torch.cuda.max_memory_allocated() / 2**20)
            self.peak_mb[stage] = max(self.peak_mb.get(stage, 0.0), peak)

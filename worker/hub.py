"""Hub downloads for jobs: bounded in time, cancellable, and never retried for minutes.

huggingface_hub does the work (etag look-up with a timeout, the local cache, offline mode); it runs in a
daemon thread so the job's cancel check and the deadline are honoured while it waits on the network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from core.resolve import UNKNOWN_MODEL
from core.settings import Settings
from worker.engine.errors import ModelNotFoundError

log = logging.getLogger("lingua_edit.worker")

# What a causal LM needs; skips other frameworks' weights, images, and the like.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


def fetch_hub_snapshot(repo_id: str, settings: Settings, check_cancel: Callable[[], None],
                       revision: str | None = None) -> str:
    """The local directory of `repo_id` (from the cache or downloaded). Raises ModelNotFoundError with the
    one message every unknown model gets, or EditCancelled (via `check_cancel`) while waiting."""
    from huggingface_hub import snapshot_download

    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            outcome["path"] = snapshot_download(
                repo_id, revision=revision, etag_timeout=settings.hub_timeout_s, allow_patterns=ALLOW_PATTERNS
            )
        except Exception as exc:  # not found, gated, offline without a cache, network: one answer
            outcome["error"] = exc

    worker = threading.Thread(target=fetch, daemon=True, name=f"hub-{repo_id}")
    worker.start()
    deadline = time.monotonic() + settings.hub_download_timeout_s
    while worker.is_alive():
        worker.join(0.25)
        check_cancel()  # raises EditCancelled; the download thread is abandoned (daemon)
        if time.monotonic() > deadline:
            raise ModelNotFoundError(
                f"model download did not finish within {settings.hub_download_timeout_s:g} s", param="model"
            )
    if "error" in outcome:
        log.info("hub model %s unavailable: %s", repo_id, outcome["error"])
        raise ModelNotFoundError(UNKNOWN_MODEL, param="model")
    return str(outcome["path"])

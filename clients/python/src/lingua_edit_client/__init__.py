"""lingua-edit-client: a light client for a remote lingua-edit server (httpx + pydantic only).

    from lingua_edit_client import Client

    with Client("https://lingua-edit.example", api_key) as le:
        job = le.create_edit("demo", target_languages=["zh", "sw"])
        job = le.wait(job.id, on_progress=lambda j: print(j.status, j.progress.phase))
        le.download_model(job.id, "edited-model")  # every file sha256-checked
"""

from ._common import __version__
from .async_client import AsyncClient
from .client import Client
from .errors import APIError, ChecksumMismatchError, LinguaEditError
from .models import TERMINAL, Artifact, Dataset, Edit, Event, LanguageResult, ModelInfo, Progress
from .retry import RetryPolicy
from .webhooks import verify_webhook

__all__ = [
    "TERMINAL",
    "APIError",
    "Artifact",
    "AsyncClient",
    "ChecksumMismatchError",
    "Client",
    "Dataset",
    "Edit",
    "Event",
    "LanguageResult",
    "LinguaEditError",
    "ModelInfo",
    "Progress",
    "RetryPolicy",
    "__version__",
    "verify_webhook",
]

"""Verify a lingua-edit webhook (Standard Webhooks) with the `standardwebhooks` package
(`pip install 'lingua-edit-client[webhooks]'`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> dict[str, Any]:
    """Check `webhook-signature` over `webhook-id.webhook-timestamp.body` with the tenant's `whsec_` secret
    (and that the timestamp is within 5 minutes) and return the parsed payload
    `{"type": "edit.succeeded", "timestamp": ..., "data": {...the job...}}`.

    Raises standardwebhooks.WebhookVerificationError when the signature or timestamp is wrong.
    """
    from standardwebhooks import Webhook

    return Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})

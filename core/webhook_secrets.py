"""Per-tenant Standard Webhooks signing secrets: created or rotated on request, shown once, never logged."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import WebhookSecret

PREFIX = "whsec_"


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (the format standardwebhooks.Webhook accepts)."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def rotate(session: Session, tenant: str) -> WebhookSecret:
    """Create the tenant's secret, or replace it; the previous one keeps signing for the grace period.
    The caller commits and shows `row.secret` once."""
    now = utcnow()
    row = session.get(WebhookSecret, tenant)
    if row is None:
        row = WebhookSecret(tenant=tenant, secret=new_secret(), created_at=now)
        session.add(row)
    else:
        row.previous_secret, row.secret, row.rotated_at = row.secret, new_secret(), now
    session.flush()
    return row


def signing_secrets(session: Session, tenant: str, grace_s: float, fallback: str | None) -> list[str]:
    """The secrets a delivery is signed with right now: the tenant's current one, its previous one while
    the grace period lasts, else the operator's fallback; empty = send unsigned."""
    row = session.get(WebhookSecret, tenant)
    if row is None:
        return [fallback] if fallback else []
    out = [row.secret]
    if row.previous_secret and row.rotated_at and utcnow() - row.rotated_at < timedelta(seconds=grace_s):
        out.append(row.previous_secret)
    return out

"""The caller's webhook signing secret: see whether one exists, create or rotate it (shown once)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.deps import SessionDep, TenantDep
from core import webhook_secrets
from core.db.models import WebhookSecret

router = APIRouter(prefix="/v1/webhook-secret", tags=["webhooks"])


class WebhookSecretInfo(BaseModel):
    object: str = "webhook_secret"
    exists: bool
    created_at: datetime | None
    rotated_at: datetime | None


class WebhookSecretCreated(WebhookSecretInfo):
    secret: str = Field(description="`whsec_...`: shown only in this response; verify with standardwebhooks")


@router.get("", response_model=WebhookSecretInfo)
def get_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecretInfo:
    row = session.get(WebhookSecret, tenant)
    return WebhookSecretInfo(
        exists=row is not None,
        created_at=row.created_at if row else None,
        rotated_at=row.rotated_at if row else None,
    )


@router.post("", response_model=WebhookSecretCreated, status_code=201)
def rotate_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecretCreated:
    """Create the secret, or rotate it: the previous one still signs (a second `v1,` signature) for
    `LINGUA_EDIT_WEBHOOK_SECRET_GRACE_S`, so receivers can switch without dropping deliveries."""
    row = webhook_secrets.rotate(session, tenant)
    session.commit()
    return WebhookSecretCreated(exists=True, created_at=row.created_at, rotated_at=row.rotated_at, secret=row.secret)

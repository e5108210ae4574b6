"""API keys: random, shown once, stored as sha256 (a 256-bit random key needs no slow hash)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import ApiKey

PREFIX = "le_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: str) -> str:
    if not tenant or len(tenant) > 128:
        raise ValueError("tenant must be 1-128 characters")
    key = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), prefix=key[:10]))
    session.flush()
    return key


def tenant_for_key(session: Session | Connection, key: str) -> str | None:
    # One column, no ORM object: this runs on every request.
    return session.scalar(
        select(ApiKey.tenant).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


def list_keys(session: Session, tenant: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.tenant == tenant).order_by(ApiKey.id)))


def revoke_key(session: Session, tenant: str, key_id: int) -> ApiKey | None:
    """Revoke one of the tenant's keys (at once: every request looks the key up). None if not the
    tenant's. Revoking twice keeps the first time."""
    row = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant == tenant))
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row

"""GET /v1/keys and DELETE /v1/keys/{id}: a tenant lists and revokes its own API keys (never the secret)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel

from app.deps import SessionDep, TenantDep
from app.errors import not_found
from core import apikeys

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyOut(BaseModel):
    id: int
    object: Literal["api_key"] = "api_key"
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]


def _out(row: object) -> KeyOut:
    return KeyOut(id=row.id, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at)  # type: ignore[attr-defined]


@router.get("", response_model=KeyList)
def list_keys(session: SessionDep, tenant: TenantDep) -> KeyList:
    return KeyList(data=[_out(k) for k in apikeys.list_keys(session, tenant)])


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(
    session: SessionDep, tenant: TenantDep, key_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> KeyOut:
    row = apikeys.revoke_key(session, tenant, key_id)
    if row is None:
        raise not_found("API key", "key_id")
    session.commit()
    return _out(row)

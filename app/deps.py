"""Request dependencies: database session, the caller's tenant, pagination."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.datasets.service import release_uncommitted
from app.errors import ApiError
from core.apikeys import tenant_for_key
from core.context import Context
from core.db.session import session_scope


async def get_ctx(request: Request) -> Context:
    # async: a plain attribute read must not cost a trip through the thread pool
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def get_session(ctx: CtxDep) -> Iterator[Session]:
    holder: list[Session] = []
    try:
        with session_scope(ctx.sessions) as session:
            holder.append(session)
            yield session
    finally:
        for session in holder:
            release_uncommitted(session)  # files stored for rows that were never committed


SessionDep = Annotated[Session, Depends(get_session)]


_bearer = HTTPBearer(auto_error=False, description="an API key from `lingua-edit keys create`")


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials.strip() or None if credentials and credentials.credentials else None


def authenticate(session: Session | Connection, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The tenant of a valid, unrevoked key (looked up on every request, so revocation is immediate)."""
    key = bearer_key(credentials)
    tenant = tenant_for_key(session, key) if key else None
    if tenant is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or invalid API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


def get_tenant(session: SessionDep, credentials: BearerDep) -> str:
    return authenticate(session, credentials)


TenantDep = Annotated[str, Depends(get_tenant)]


@dataclass
class Page:
    after: str | None
    limit: int


def get_page(
    ctx: CtxDep,
    after: Annotated[
        str | None, Query(max_length=64, description="cursor: the id of the last item of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="page size (at most the server's max_page_size)")] = 20,
) -> Page:
    if limit > ctx.settings.max_page_size:
        raise ApiError(422, "invalid_request", f"limit must be <= {ctx.settings.max_page_size}", "limit")
    return Page(after=after, limit=limit)


PageDep = Annotated[Page, Depends(get_page)]

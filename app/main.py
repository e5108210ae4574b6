"""create_app(): routers, error envelope, metrics, schema check, and the periodic reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI

from app import errors
from app.apikeys.router import router as keys_router
from app.artifacts.router import router as artifacts_router
from app.dashboard.router import router as dashboard_router
from app.datasets.router import router as datasets_router
from app.edits.router import router as edits_router
from app.guard import RequestGuard, install_log_scrubber
from app.health import router as health_router
from app.metrics import LatencyMiddleware, make_registry
from app.models.router import router as models_router
from app.webhooks.router import router as webhooks_router
from core.context import Context, make_context
from core.db.migrate import check_current
from core.logs import JobIdMiddleware
from core.reaper import reap
from core.retention import purge_expired
from core.scratch import clean_orphans
from core.settings import Settings, get_settings

log = logging.getLogger("lingua_edit.api")


async def _reaper_loop(ctx: Context) -> None:
    while True:
        await asyncio.sleep(ctx.settings.reaper_interval_s)
        try:
            await asyncio.to_thread(reap, ctx)
        except Exception:
            log.exception("reaper run failed")
        try:
            await asyncio.to_thread(purge_expired, ctx)
        except Exception:
            log.exception("retention run failed")


# The polling read runs on the event loop (app/edits/router.py): no PostgreSQL statement of the API may hold
# the loop longer than this (its reaper and retention runs are one small statement per job).
API_STATEMENT_TIMEOUT_MS = 5000


def create_app(
    settings: Settings | None = None, ctx: Context | None = None, check_schema: bool = True
) -> FastAPI:
    settings = settings or get_settings()
    ctx = ctx or make_context(settings, pool_pre_ping=False, statement_timeout_ms=API_STATEMENT_TIMEOUT_MS)
    if check_schema:
        check_current(ctx.engine)  # refuse to serve on a database that is behind

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        clean_orphans(settings.data_dir / "tmp")  # uploads a killed API process left half-written
        task = asyncio.create_task(_reaper_loop(ctx)) if settings.reaper_interval_s > 0 else None
        yield
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = _fastapi(lifespan)
    app.state.ctx = ctx
    registry, latency = make_registry(ctx)
    app.state.metrics_registry = registry
    app.add_middleware(LatencyMiddleware, histogram=latency)
    app.add_middleware(JobIdMiddleware)
    app.add_middleware(RequestGuard, settings=settings)
    install_log_scrubber()
    return app


def _fastapi(lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None) -> FastAPI:
    """The routes and error handlers; no database, broker or storage behind them yet."""
    app = FastAPI(
        title="lingua-edit",
        version="0.1.0",
        lifespan=lifespan,
        description="Sparse closed-form safety edits for multilingual chat LLMs, as a job API. "
        "Every error is {\"error\": {\"code\", \"message\", \"param\"}}.",
    )
    errors.install(app)
    app.include_router(health_router)
    app.include_router(dashboard_router)  # HTML pages, not part of the OpenAPI document
    for r in (edits_router, artifacts_router, datasets_router, models_router, webhooks_router, keys_router):
        app.include_router(r, responses=errors.ERROR_RESPONSES)
    return app


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document, built without settings, database or servers (`lingua-edit openapi`)."""
    return _fastapi().openapi()

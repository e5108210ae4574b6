from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.deps import CtxDep
from app.errors import ApiError
from core.broker import live_workers, ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(ctx: CtxDep) -> JSONResponse:
    """200 only when the database and the broker answer and at least one worker is alive (its heartbeat
    key in Redis is fresher than worker_heartbeat_ttl_s)."""
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        db = "ok"
    except Exception:
        db = "unreachable"
    broker = "ok" if ping(ctx.settings) else "unreachable"
    workers = live_workers(ctx.settings) if broker == "ok" else None
    worker = "ok" if workers else "none"
    ok = db == "ok" and broker == "ok" and worker == "ok"
    body: dict = {
        "status": "ok" if ok else "unavailable",
        "database": db,
        "broker": broker,
        "workers": len(workers or []),
    }
    if not ok:
        body["error"] = {
            "code": "unavailable",
            "message": f"database {db}, broker {broker}, live workers {len(workers or [])}",
            "param": None,
        }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(request: Request, ctx: CtxDep) -> Response:
    """Prometheus metrics (job counts of every tenant): only with `Authorization: Bearer
    <LINGUA_EDIT_METRICS_TOKEN>`; 404 when no token is configured."""
    token = ctx.settings.metrics_token
    if not token:
        raise ApiError(404, "not_found", "metrics are disabled (set LINGUA_EDIT_METRICS_TOKEN)")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "metrics need the metrics token", headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

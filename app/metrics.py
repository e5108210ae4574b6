"""Prometheus metrics. Job counts, phase durations and queue depth are read from the database and broker
at scrape time (the worker is another process); HTTP latency is measured here."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Receive, Scope, Send

from core.broker import queue_depth
from core.context import Context
from core.db.models import EditJob
from core.jobs.lifecycle import STATUSES, SUCCEEDED


class JobCollector(Collector):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily | SummaryMetricFamily]:
        jobs = GaugeMetricFamily("lingua_edit_jobs", "Edit jobs by status", labels=["status"])
        phases = SummaryMetricFamily(
            "lingua_edit_phase_duration_seconds", "Engine phase durations of finished jobs", labels=["phase"]
        )
        try:
            with self.ctx.sessions() as s:
                counts = dict(s.execute(select(EditJob.status, func.count()).group_by(EditJob.status)).all())
                timings = s.scalars(
                    select(EditJob.timings)
                    .where(EditJob.status == SUCCEEDED, EditJob.timings.is_not(None))
                    .order_by(EditJob.finished_at.desc())
                    .limit(1000)
                ).all()
        except Exception:  # a scrape must not fail because the database is down; /readyz says so
            counts, timings = {}, []
        for st in STATUSES:
            jobs.add_metric([st], counts.get(st, 0))
        yield jobs
        agg: dict[str, list[float]] = {}
        for t in timings:
            for phase, secs in (t or {}).items():
                if isinstance(secs, int | float):
                    agg.setdefault(phase, []).append(float(secs))
        for phase, vals in sorted(agg.items()):
            phases.add_metric([phase], count_value=len(vals), sum_value=sum(vals))
        yield phases
        depth = queue_depth(self.ctx.settings)
        q = GaugeMetricFamily(
            "lingua_edit_queue_depth", "Tasks waiting in the broker queue", labels=["queue"]
        )
        if depth is not None:
            q.add_metric([self.ctx.settings.queue], depth)
        yield q


def make_registry(ctx: Context) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    registry.register(JobCollector(ctx))
    latency = Histogram(
        "lingua_edit_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route", "status"],
        registry=registry,
    )
    return registry, latency


class LatencyMiddleware:
    """Pure ASGI middleware (streams untouched); labels by route template to keep cardinality bounded."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.histogram.labels(scope["method"], path, str(status["code"])).observe(
                time.perf_counter() - start
            )

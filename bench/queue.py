"""Queue benchmark: N jobs queued at once, one worker, every job accounted for.

The production shape on real processes (the fault suite's harness): the API under `lingua-edit serve
--no-worker` with its periodic reaper, one `lingua-edit worker` (Celery, one job at a time), a redis-server
of its own (AOF) and a fresh PostgreSQL database. N cheap tiny-model jobs (the paper's closed form at one
layer, one evaluation prompt, one new token: every phase of a real job, seconds of work) are submitted over
HTTP before the worker starts; then, once every job is terminal, each is checked:

- terminal (`succeeded` or `failed` with an error code), `attempts == 1`;
- exactly one `started` event, one `finished` event if it succeeded (none if it failed);
- every listed artifact downloads with its sha256, storage holds exactly the listed files, no scratch left;
- the database holds exactly N jobs of the tenant and N `started` events (nothing lost, nothing twice).

    .venv/bin/python -m bench.queue --jobs 200 [--json FILE]

Needs PostgreSQL (LINGUA_EDIT_TEST_PG) and `redis-server` on PATH.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any


def job_body() -> dict[str, Any]:
    return {
        "model": "tiny",
        "target_languages": ["zh"],
        "hyperparameters": {"method": "paper", "layers": [1], "max_new_tokens": 1, "max_eval_prompts": 1,
                            "rank": 2, "batch_size": 8},
    }


def _pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1], 1) if len(values) > 1 else round(values[0], 1)


def account(stack: Any, ids: list[str], database_url: str) -> dict[str, Any]:
    """Every job checked one by one, then the database counted: the accounting the benchmark reports."""
    from datetime import datetime

    from sqlalchemy import create_engine, text

    jobs = [stack.job(i) for i in ids]
    problems: list[str] = []
    for j in jobs:
        try:
            assert j["attempts"] == 1, f"attempts {j['attempts']}"
            stack.check_outcome(j)  # terminal with a code, artifacts intact, no orphan, one `finished` at most
            with stack.client() as c:
                events = c.get(f"/v1/edits/{j['id']}/events", params={"limit": 100}).json()["data"]
            assert [e["type"] for e in events].count("started") == 1, "started events"
        except AssertionError as exc:
            problems.append(f"{j['id']}: {exc}")
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM edit_jobs")).scalar_one()
        started = conn.execute(text("SELECT count(*) FROM edit_events WHERE type = 'started'")).scalar_one()
        finished = conn.execute(text("SELECT count(*) FROM edit_events WHERE type = 'finished'")).scalar_one()
    engine.dispose()

    def ts(v: str) -> float:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()

    waits = [ts(j["started_at"]) - ts(j["created_at"]) for j in jobs if j.get("started_at")]
    runs = [ts(j["finished_at"]) - ts(j["started_at"]) for j in jobs if j.get("started_at") and j.get("finished_at")]
    return {
        "statuses": dict(Counter(j["status"] for j in jobs)),
        "errors": dict(Counter((j.get("error") or {}).get("code") for j in jobs if j["status"] == "failed")),
        "job_rows": rows, "started_events": started, "finished_events": finished,
        "problems": problems[:20], "problem_count": len(problems),
        "run_s_p50": _pct(runs, 50) if runs else None, "run_s_p95": _pct(runs, 95) if runs else None,
        "queue_wait_s_max": round(max(waits), 1) if waits else None,
    }


def drain(stack: Any, ids: list[str], deadline: float) -> set[str]:
    """Poll until every job is terminal or the monotonic clock passes `deadline`; the ids still not terminal."""
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        with stack.client() as c:
            for jid in list(pending):
                if c.get(f"/v1/edits/{jid}").json()["status"] in ("succeeded", "failed", "cancelled"):
                    pending.discard(jid)
                else:
                    break  # one worker runs them in order: the rest are still waiting too
        time.sleep(1)
    return pending


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for the queue to drain")
    ap.add_argument("--json", help="write the report to this file too")
    args = ap.parse_args(argv)

    import signal

    from tests.faults.conftest import FaultStack, RedisServer
    from tests.service.conftest import create_pg_database
    from tests.tiny import make_tiny_model

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the processes it started
    tmp = Path(tempfile.mkdtemp(prefix="le-queue-bench-"))
    url, drop = create_pg_database()
    redis = RedisServer(tmp / "redis", persistent=True)
    redis.start()
    tiny = make_tiny_model(tmp / "tiny", family="qwen2")
    # Production reaper timing (settings defaults), a tenant queue limit above N.
    stack = FaultStack(tmp, url, redis.url, tiny, extra={
        "LINGUA_EDIT_STALE_AFTER_S": "15", "LINGUA_EDIT_REAPER_INTERVAL_S": "15",
        "LINGUA_EDIT_REDISPATCH_AFTER_S": "10", "LINGUA_EDIT_WORKER_HEARTBEAT_TTL_S": "15",
        "LINGUA_EDIT_TENANT_MAX_QUEUED_JOBS": str(args.jobs + 10),
        # a tiny model: one torch thread (spinning OpenMP threads only lose time on shared cores)
        "OMP_NUM_THREADS": "1",
    })
    try:
        stack.prepare()
        stack.start_api()
        t0 = time.monotonic()
        ids = [stack.submit(job_body())["id"] for _ in range(args.jobs)]
        submit_s = time.monotonic() - t0
        assert len(set(ids)) == args.jobs
        t1 = time.monotonic()
        stack.start_worker()
        pending = drain(stack, ids, t1 + args.timeout)
        drain_s = time.monotonic() - t1
        report: dict[str, Any] = {
            "jobs": args.jobs, "submit_s": round(submit_s, 1),
            "drain_s_incl_worker_start": round(drain_s, 1),
            "jobs_per_min": round(args.jobs / drain_s * 60, 1), "not_terminal": len(pending),
        }
        report.update(account(stack, ids, url))
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        ok = (not pending and report["problem_count"] == 0 and report["job_rows"] == args.jobs
              and report["started_events"] == args.jobs)
        return 0 if ok else 1
    finally:
        stack.close()
        redis.stop()
        drop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Queue benchmark: N jobs queued at once, one worker, every job accounted for.

Submits N tiny-model jobs through the API (PostgreSQL + Redis, in-process app), starts one real worker,
waits until every job is terminal, then checks each job ran exactly once (attempts == 1, one `started` and
one `finished` event) and prints jobs/min and the time to drain.

    .venv/bin/python -m bench.queue --jobs 200
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)

    from tests.service.conftest import REDIS_BASE, create_pg_database, make_stack
    from tests.tiny import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="le-queue-bench-"))
    url, drop = create_pg_database()
    tiny = make_tiny_model(tmp / "tiny", family="qwen2")
    stack = make_stack(
        tmp, url, f"{REDIS_BASE}/{secrets.randbelow(15) + 1}", tiny,
        LINGUA_EDIT_TENANT_MAX_QUEUED_JOBS=str(args.jobs + 10),
    )
    worker = None
    try:
        body = {"model": "tiny", "target_languages": ["zh"],
                "hyperparameters": {"layers": [1], "max_new_tokens": 1, "max_eval_prompts": 1, "rank": 2,
                                    "batch_size": 8}}
        t0 = time.monotonic()
        ids = [stack.submit(body)["id"] for _ in range(args.jobs)]
        submit_s = time.monotonic() - t0
        worker = stack.start_worker("queue-bench")
        t1 = time.monotonic()
        pending = set(ids)
        while pending and time.monotonic() - t1 < args.timeout:
            for jid in list(pending)[:50]:
                if stack.client.get(f"/v1/edits/{jid}").json()["status"] in ("succeeded", "failed", "cancelled"):
                    pending.discard(jid)
            time.sleep(1)
        drain_s = time.monotonic() - t1
        jobs = [stack.client.get(f"/v1/edits/{jid}").json() for jid in ids]
        statuses = Counter(j["status"] for j in jobs)
        twice = []
        for j in jobs:
            ev = [e["type"] for e in stack.client.get(f"/v1/edits/{j['id']}/events",
                                                      params={"limit": 100}).json()["data"]]
            if j["attempts"] != 1 or ev.count("started") != 1 or ev.count("finished") > 1:
                twice.append(j["id"])
        report = {
            "jobs": args.jobs, "submitted_in_s": round(submit_s, 1), "drained_in_s": round(drain_s, 1),
            "jobs_per_min": round(args.jobs / drain_s * 60, 1), "statuses": dict(statuses),
            "not_terminal": len(pending), "run_more_than_once": len(twice),
        }
        print(json.dumps(report, indent=2))
        return 0 if not pending and not twice and statuses.get("succeeded", 0) == args.jobs else 1
    finally:
        if worker:
            worker.stop()
        stack.ctx.engine.dispose()
        drop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""CPU cost of one `GET /v1/edits/{id}` in the API process, without the network and the load generator.

Builds the app on a fresh PostgreSQL database (the checkout given with --code, to compare commits), inserts
one queued job, then sends N requests through the ASGI app in-process (httpx ASGITransport, sequential) and
reports the process CPU time per request (the client's share included) and the wall time. CPU time is
what a shared, loaded machine distorts least.

    .venv/bin/python -m bench.get_cpu --requests 2000 [--code /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r'''
import asyncio, json, os, sys, time, secrets
import httpx
from core.settings import Settings
from app.main import create_app
from core.db.migrate import upgrade
from core.apikeys import create_key
sys.path.insert(0, os.environ["BENCH_ROOT"])
from bench.load import _insert_job

url = os.environ["BENCH_DB"]
upgrade(url)
settings = Settings(database_url=url, broker_url=os.environ["BENCH_REDIS"], data_dir=os.environ["BENCH_TMP"],
                    reaper_interval_s=0)
app = create_app(settings)
with app.state.ctx.sessions() as s:
    key = create_key(s, "bench")
    s.commit()
job = _insert_job(url)

async def main(n):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(200):  # warm-up
            (await c.get(f"/v1/edits/{job}")).raise_for_status()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            (await c.get(f"/v1/edits/{job}")).raise_for_status()
        return (time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000

cpu_ms, wall_ms = asyncio.run(main(int(os.environ["BENCH_N"])))
print(json.dumps({"cpu_ms_per_request": round(cpu_ms, 3), "wall_ms_per_request": round(wall_ms, 3)}))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--code", default=str(ROOT), help="checkout whose app/ is measured")
    args = ap.parse_args(argv)
    import secrets
    import tempfile

    from tests.service.conftest import REDIS_BASE, create_pg_database

    url, drop = create_pg_database()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINGUA_EDIT_")}
        env.update(BENCH_DB=url, BENCH_REDIS=f"{REDIS_BASE}/{secrets.randbelow(15) + 1}",
                   BENCH_TMP=tempfile.mkdtemp(prefix="le-getcpu-"), BENCH_N=str(args.requests),
                   BENCH_ROOT=str(ROOT))
        out = subprocess.run([sys.executable, "-c", _CHILD], cwd=args.code, env=env, capture_output=True,
                             text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(code=args.code, requests=args.requests)
        print(json.dumps(result))
    finally:
        drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load benchmark: GET /v1/edits/{id} behind an API key, on PostgreSQL, under `wrk`.

Starts the API the production way (`lingua-edit serve --no-worker --workers N`, PostgreSQL + Redis),
creates a key and one job, then drives wrk at each concurrency and prints one table row per run:
requests/s, requests/s per server core, p50/p99 and errors. The server and wrk are pinned to disjoint
CPU sets with `taskset` when the machine has more than one core (PostgreSQL is not pinned).

    .venv/bin/python -m bench.load --workers 1 --server-cpus 0 --wrk-cpus 1 --concurrency 1 10 50 100

Needs: wrk (Debian package `wrk`), PostgreSQL (LINGUA_EDIT_TEST_PG, default the local test server) and
Redis (LINGUA_EDIT_TEST_REDIS). Uses its own throwaway database and Redis db index.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LINGUA_EDIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("LINGUA_EDIT_TEST_REDIS", "redis://127.0.0.1:6379")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def parse_wrk(out: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else float("nan")
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = float(errors)
    return res


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its descendants that are still running."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(stat.parent.name)
        stats[p] = fields
        children.setdefault(int(fields[1]), []).append(p)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / tick
        todo += children.get(p, [])
    return total


def _insert_job(url: str) -> str:
    """One queued job of tenant `bench` with a metadata pair (what a polling client reads)."""
    from datetime import datetime, timezone

    from sqlalchemy import create_engine, text

    job_id = "edit_" + secrets.token_hex(12)
    engine = create_engine(url)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    config = {"model": "demo", "source_lang": "en", "target_langs": ["zh"], "judge": "refusal", "rank": 32}
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO edit_jobs (id, tenant, status, model, config, request_hash, progress_done, "
                 "progress_total, cancel_requested, attempts, created_at, updated_at) VALUES (:id, 'bench', "
                 "'queued', 'demo', :config, 'bench', 0, 0, false, 0, :now, :now)"),
            {"id": job_id, "config": json.dumps(config), "now": now},
        )
        conn.execute(text("INSERT INTO edit_job_metadata (job_id, key, value) VALUES (:id, 'team', 'bench')"),
                     {"id": job_id})
    engine.dispose()
    return job_id


def _pin(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--server-cpus", help="taskset CPU list for the API (e.g. 0)")
    ap.add_argument("--wrk-cpus", help="taskset CPU list for wrk (e.g. 1)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50, 100])
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--json", help="write the rows to this file too")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose app/ is served (to compare commits)")
    ap.add_argument("--profile", help="py-spy: record the server for 10 s under c=10 into this collapsed-stack file")
    # Production (docker-compose.yml): JSON logs at INFO, so uvicorn writes one access-log line per request.
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--log-format", default="json", choices=["json", "text"])
    return ap.parse_args(argv)


CLI = [sys.executable, "-m", "app.cli"]


def start_server(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen, str, str]:
    """Migrate, create a key, start `lingua-edit serve --no-worker` and wait for /healthz: (server, base, key)."""
    subprocess.run([*CLI, "db", "upgrade"], env=env, cwd=args.code, check=True, capture_output=True)
    key = subprocess.run(
        [*CLI, "keys", "create", "--tenant", "bench"], env=env, cwd=args.code, check=True, capture_output=True,
        text=True,
    ).stdout.strip()
    port = _port()
    server = subprocess.Popen(
        [*_pin(args.server_cpus), *CLI, "serve", "--no-worker", "--port", str(port),
         *(["--workers", str(args.workers)] if args.workers > 1 else []), "--log-level", args.log_level,
         "--log-format", args.log_format],
        env=env, cwd=args.code, stdout=open(tmp / "serve.log", "wb"), stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return server, base, key
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.terminate()
            raise RuntimeError((tmp / "serve.log").read_text()[-2000:])
        time.sleep(0.2)


def drive(args: argparse.Namespace, server: subprocess.Popen, key: str, target: str) -> list[dict[str, float]]:
    """Warm up (and profile, if asked), then one wrk run per concurrency, printed as a table row each."""
    wrk = [*_pin(args.wrk_cpus), "wrk"]
    auth = ["-H", f"Authorization: Bearer {key}"]
    cores = len(args.server_cpus.split(",")) if args.server_cpus else os.cpu_count() or 1
    subprocess.run([*wrk, "-t1", "-c10", "-d2s", *auth, target], capture_output=True)  # pools, imports
    if args.profile:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "-d", "10", "-r", "200",
                                "--format", "raw", "-o", args.profile, "--subprocesses", "--gil"])
        time.sleep(1)
        subprocess.run([*wrk, "-t1", "-c10", "-d12s", *auth, target], capture_output=True)
        spy.wait(30)
    print("| concurrency | req/s | req/s per server core | requests per API CPU-second | p50 ms | p99 ms "
          "| errors / requests |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for c in args.concurrency:
        cpu0 = _tree_cpu_s(server.pid)
        out = subprocess.run(
            [*wrk, f"-t{min(c, 2)}", f"-c{c}", f"-d{args.duration}s", "--latency", "--timeout", "5s", *auth,
             target],
            capture_output=True, text=True, check=True,
        ).stdout
        cpu = _tree_cpu_s(server.pid) - cpu0
        r = parse_wrk(out)
        # Requests per CPU-second of the API processes: comparable on a shared, loaded machine.
        r.update(concurrency=c, per_core=r["rps"] / cores, per_cpu_s=r["requests"] / cpu if cpu else 0.0)
        rows.append(r)
        print(f"| {c} | {r['rps']:.0f} | {r['per_core']:.0f} | {r['per_cpu_s']:.0f} | {r['p50_ms']:.2f} "
              f"| {r['p99_ms']:.2f} | {r['errors']:.0f} / {r['requests']:.0f} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not shutil.which("wrk"):
        print("bench.load: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    db = f"le_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="le-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINGUA_EDIT_")}
    env.update(
        LINGUA_EDIT_DATABASE_URL=url,
        LINGUA_EDIT_BROKER_URL=f"{REDIS_BASE}/{secrets.randbelow(15) + 1}",
        LINGUA_EDIT_QUEUE=f"bench-{secrets.token_hex(4)}",
        LINGUA_EDIT_DATA_DIR=str(tmp),
    )
    server = None
    try:
        server, base, key = start_server(args, env, tmp)
        job_id = _insert_job(url)  # a queued job written directly: the benchmark needs no broker or worker
        target = f"{base}/v1/edits/{job_id}"
        assert httpx.get(target, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        rows = drive(args, server, key, target)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

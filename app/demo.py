"""`lingua-edit demo`: the whole product in one command, through the HTTP API like any client."""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="./lingua-edit-demo", help="embedded database, Redis and artifacts")
    p.add_argument(
        "--model", default="demo", help="'demo' (Qwen2.5-Coder-0.5B-Instruct) or a registered name"
    )
    # Defaults sized to finish in about 10 minutes on 2 CPU cores; `--target-languages all --layers auto`
    # runs the full method (much longer on CPU).
    p.add_argument(
        "--target-languages",
        default="zh,sw",
        help="comma-separated codes, or 'all' for the nine non-English languages",
    )
    p.add_argument(
        "--layers",
        default="18",
        help="'auto' (sweep a depth band, slow on CPU) or comma-separated layer indices",
    )
    p.add_argument("--max-eval-prompts", type=int, default=6, help="held-out harmful prompts per language")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--neuron-budget", type=float, default=None)
    p.add_argument(
        "--out", default=None, help="where to save the downloaded delta (default: DATA_DIR/download)"
    )
    p.add_argument("--skip-model-download", action="store_true", help="download only the delta")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--log-level", default="WARNING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    hp: dict[str, Any] = {"max_eval_prompts": args.max_eval_prompts, "max_new_tokens": args.max_new_tokens}
    if args.layers:
        hp["layers"] = "auto" if args.layers == "auto" else [int(x) for x in args.layers.split(",")]
    if args.neuron_budget is not None:
        hp["neuron_budget"] = args.neuron_budget
    body: dict[str, Any] = {"model": args.model, "hyperparameters": hp, "metadata": {"source": "demo"}}
    if args.target_languages and args.target_languages != "all":
        body["target_languages"] = args.target_languages.split(",")
    return body


def download(client: Any, url: str, dest: Path, sha256: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with client.stream("GET", url) as r, open(dest, "wb") as f:
        r.raise_for_status()
        for block in r.iter_bytes(1 << 20):
            h.update(block)
            f.write(block)
    if h.hexdigest() != sha256:
        raise RuntimeError(f"sha256 mismatch for {dest.name}: {h.hexdigest()} != {sha256}")


def print_table(job: dict[str, Any]) -> None:
    print(
        f"\n{'lang':<6}{'n':>5}{'ASR before':>12}{'ASR after':>11}{'refusal before':>16}{'refusal after':>15}"
    )
    for r in job["results"]:
        print(
            f"{r['language']:<6}{r['n']:>5}{r['asr_before']:>12.3f}{r['asr_after']:>11.3f}"
            f"{r['refusal_before']:>16.3f}{r['refusal_after']:>15.3f}"
        )
    util = job.get("utility") or {}
    if "kl_mean" in util:
        print(f"\nmean KL on harmless prompts: {util['kl_mean']:.4f}")


def follow(client: Any, job_id: str, timeout: float) -> dict[str, Any]:
    """Poll the job and draw one bar per engine phase (phases can repeat: evaluate runs before and after)."""
    from tqdm import tqdm

    bar = tqdm(total=1, bar_format="{desc:<30}|{bar:30}| {n_fmt}/{total_fmt} [{elapsed}]", file=sys.stdout)
    deadline = time.monotonic() + timeout
    phase = None
    try:
        while True:
            job = client.get(f"/v1/edits/{job_id}").json()
            p = job["progress"]
            if p["phase"] != phase:
                phase = p["phase"]
                bar.reset(total=max(1, p["total"]))
            bar.total = max(1, p["total"])
            bar.n = min(p["done"], bar.total)
            bar.set_description_str(f"{job['status']}: {phase or 'waiting for a worker'}")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                client.post(f"/v1/edits/{job_id}/cancel")
                raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f}s; cancelled")
            time.sleep(1.0)
    finally:
        bar.close()


def run_demo(args: argparse.Namespace) -> int:
    import httpx
    import uvicorn

    from app.embedded import prepare_embedded, start_worker, stop_redis, stop_worker
    from app.keys.service import create_key
    from app.main import create_app
    from app.settings import get_settings

    data_dir = Path(args.data_dir).resolve()
    print(f"starting the embedded stack in {data_dir} (SQLite, Redis, API, one worker)")
    redis_server = prepare_embedded(data_dir)
    settings = get_settings()
    worker_log = data_dir / "worker.log"
    worker = start_worker(log_level=args.log_level, log_file=worker_log)
    print(f"worker log: {worker_log}")
    app = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with app.state.ctx.sessions() as s:
            key = create_key(s, "demo")
            s.commit()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for _ in range(100):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            body = build_request(args)
            r = client.post("/v1/edits", json=body)
            if r.status_code != 202:
                print(f"submit failed: {r.status_code} {r.text}", file=sys.stderr)
                return 1
            job = r.json()
            print(
                f"submitted {job['id']} on model {job['model']} "
                f"({len(job['target_languages'])} target languages); first run prepares the demo model"
            )
            job = follow(client, job["id"], args.timeout)
            if job["status"] != "succeeded":
                err = job.get("error") or {}
                print(f"job {job['status']}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
                return 1
            print_table(job)
            out = Path(args.out) if args.out else data_dir / "download" / job["id"]
            for a in job["artifacts"]:
                wanted = a["kind"] in ("delta", "manifest", "report") or (
                    a["kind"] == "model" and not args.skip_model_download
                )
                if wanted:
                    download(
                        client, f"/v1/edits/{job['id']}/artifacts/{a['name']}", out / a["name"], a["sha256"]
                    )
                    print(f"downloaded {a['name']:<28} {a['size']:>12,} bytes  sha256 ok")
            print(f"\nartifacts in {out}")
        return 0
    finally:
        server.should_exit = True
        thread.join(10)
        stop_worker(worker)
        if redis_server is not None:
            stop_redis(redis_server)

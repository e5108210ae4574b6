"""`lingua-edit demo`: the whole product in one command, through the HTTP API with the light client like any user."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from worker.engine.cli import add_config_flags

DEMO_FIELDS = ("method", "layers", "max_eval_prompts", "max_harmless_eval", "max_new_tokens", "neuron_budget")
# unset (None): the engine's default; layers only matters with --method paper
DEMO_DEFAULTS = {"method": "search", "layers": None, "max_eval_prompts": 4, "max_harmless_eval": 3,
                 "max_new_tokens": 16, "neuron_budget": None}
# On the demo model the demo searches the deeper two of the default's three depths (layers 19 and 22 of 24, not
# 16): every demo run since session 17 confirmed their stack on validation prompts (BENCHMARKS.md §1c runs D-G),
# and without the four candidates with layer 16 the search stage took 459 s (546 s with them in session 27, not one
# run), printing the same table (§1c, session 28; the whole demo still took 19 min on the slower 2-core machine)
DEMO_MODEL_SEARCH_LAYERS = [19, 22]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="./lingua-edit-demo", help="embedded database, Redis and artifacts")
    p.add_argument(
        "--model", default="demo", help="'demo' (Qwen2.5-Coder-0.5B-Instruct) or a registered name"
    )
    # Sized to finish in about 15 minutes on 2 CPU cores: the default method (the search) on all nine target
    # languages, few prompts per language (the numbers are noisy: BENCHMARKS.md has the measured run)
    p.add_argument(
        "--target-languages",
        default="all",
        help="comma-separated codes, or 'all' for the nine non-English languages",
    )
    # method, layers, max_eval_prompts, max_harmless_eval, max_new_tokens, neuron_budget: flags read from
    # EditConfig (worker/engine/config.py) like `lingua-edit edit`'s, with the demo's smaller defaults
    add_config_flags(p, only=DEMO_FIELDS, defaults=DEMO_DEFAULTS)
    p.add_argument(
        "--out", default=None, help="where to save the downloads (default: DATA_DIR/download/JOB_ID)"
    )
    p.add_argument(
        "--skip-model-download", action="store_true", help="skip the model folder (delta, manifest, report only)"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--log-level", default="WARNING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    hp: dict[str, Any] = {"max_eval_prompts": args.max_eval_prompts, "max_new_tokens": args.max_new_tokens,
                          "max_harmless_eval": args.max_harmless_eval, "method": args.method}
    # a small search, sized for about 15 minutes on 2 CPU cores (measured: 10 on an Intel Xeon, 12.5-19 on an AMD
    # EPYC, BENCHMARKS.md §1c): one gain multiplier (per language 0 or 1; on the demo set every x3 candidate was
    # rejected, §1c), one confirmed candidate, the answers of 8 calibration ids per language as the gates'
    # negatives (16 took 3 of the demo's 17-18 minutes, §1c run E), no development-only harmless prompts (their
    # larger screen would not fit the 15 minutes; §1v)
    if args.method == "search":
        hp.update(search_gains=[1.0], screen_prompts=4, confirm_candidates=1, confirm_prompts=2,
                  confirm_harmless_prompts=2, max_anchor_prompts=12, readout_answer_ids=8, dev_harmless_prompts=0)
        if args.model == "demo":
            hp["search_layers"] = DEMO_MODEL_SEARCH_LAYERS
    if args.layers:
        hp["layers"] = args.layers  # "auto" or a list of indices (parsed by the flag)
    if args.neuron_budget is not None:
        hp["neuron_budget"] = float(args.neuron_budget)
    body: dict[str, Any] = {"model": args.model, "hyperparameters": hp, "metadata": {"source": "demo"}}
    if args.target_languages and args.target_languages != "all":
        body["target_languages"] = args.target_languages.split(",")
    return body


def print_table(job: dict[str, Any]) -> None:
    from worker.engine.cli import format_flips, format_table

    print()
    print(format_table([{**r, "lang": r["language"]} for r in job["results"]]))
    flips = format_flips({r["language"]: r["flips"] for r in job["results"] if r.get("flips")})
    if flips:
        print(flips)
    util = job.get("utility") or {}
    if "kl_mean" in util:
        print(f"\nmean KL on harmless prompts: {util['kl_mean']:.4f}")
    for w in job.get("warnings") or []:
        if w.startswith("search winner") or "no edit is shipped" in w:
            print(w)


class ProgressBar:
    """One tqdm bar redrawn from each polled job state (phases repeat: evaluate runs before and after)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1, bar_format="{desc:<30}|{bar:30}| {n_fmt}/{total_fmt} [{elapsed}]", file=sys.stdout)
        self.phase: str | None = None

    def __call__(self, job: Any) -> None:
        p = job.progress
        if p.phase != self.phase:
            self.phase = p.phase
            self.bar.reset(total=max(1, p.total))
        self.bar.total = max(1, p.total)
        self.bar.n = min(p.done, self.bar.total)
        self.bar.set_description_str(f"{job.status}: {self.phase or 'waiting for a worker'}")

    def close(self) -> None:
        self.bar.close()


def submit_and_download(client: Any, args: argparse.Namespace, data_dir: Path) -> int:
    """Submit the demo job, follow it with a progress bar, print its table and download its artifacts."""
    from lingua_edit_client import APIError

    try:
        job = client.create_edit(**build_request(args))
    except APIError as exc:
        print(f"submit failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"submitted {job.id} on model {job.model} "
        f"({len(job.target_languages)} target languages); first run prepares the demo model"
    )
    bar = ProgressBar()
    try:
        job = client.wait(job.id, poll_interval=1.0, on_progress=bar, timeout=args.timeout)
    except TimeoutError:
        client.cancel_edit(job.id)
        print(f"job {job.id} did not finish in {args.timeout:.0f}s; cancelled", file=sys.stderr)
        return 1
    finally:
        bar.close()
    if job.status != "succeeded":
        err = job.error
        print(
            f"job {job.status}: {err.code if err else None}: {err.message if err else None}",
            file=sys.stderr,
        )
        return 1
    print_table(job.model_dump(mode="json"))
    out = Path(args.out) if args.out else data_dir / "download" / job.id
    for a in job.artifacts:  # delta, manifest, report
        if a.kind in ("delta", "manifest", "report"):
            client.download_artifact(job.id, a.name, out / a.name, artifact=a)
            print(f"downloaded {a.name:<28} {a.size:>12,} bytes  sha256 ok")
    if not args.skip_model_download:  # the model folder in Hugging Face layout, file by file
        model_dir = client.download_model(job.id, out / "model")
        print(f"edited model in {model_dir} (model card, sharded safetensors; loads with from_pretrained)")
    print(f"\nartifacts in {out}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import uvicorn
    from lingua_edit_client import Client

    from app.embedded import prepare_embedded, start_worker, stop_redis, stop_worker
    from app.main import create_app
    from core.apikeys import create_key
    from core.settings import get_settings

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
        with Client(f"http://127.0.0.1:{port}", key, timeout=60) as client:
            for _ in range(100):
                if client.ready():
                    break
                time.sleep(0.2)
            return submit_and_download(client, args, data_dir)
    finally:
        server.should_exit = True
        thread.join(10)
        stop_worker(worker)
        if redis_server is not None:
            stop_redis(redis_server)

"""Write a succeeded job's result to its `destination` in Hugging Face layout: the model folder's files
(model card, config, safetensors shards and index, tokenizer) at the top, with delta.safetensors,
manifest.json and report.json beside them. Local directories appear atomically (a temporary sibling renamed
into place); S3 objects are uploaded under the prefix, the index and card last."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from core.destinations import Destination, DestinationError, parse_destination
from core.settings import Settings


def layout(out: Path) -> list[tuple[str, Path]]:
    """(relative name in the destination, file) for every output file."""
    files = []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(out).as_posix()
        files.append((rel.removeprefix("model/"), p))
    # readers look for the index and the card: make them the last objects to appear on S3
    return sorted(files, key=lambda f: (f[0] in ("README.md", "model.safetensors.index.json"), f[0]))


def write_destination(settings: Settings, value: str, out: Path) -> Destination:
    # checked again here: the operator may have narrowed the roots since submission (DestinationError)
    dest = parse_destination(value, settings.destination_roots)
    files = layout(out)
    if dest.kind == "local":
        _write_local(Path(dest.location), files)
    else:
        _write_s3(settings, dest, files)
    return dest


def _write_local(target: Path, files: list[tuple[str, Path]]) -> None:
    if target.exists():
        raise DestinationError(f"{target} already exists; destinations are never overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        for rel, src in files:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        tmp.chmod(0o755)
        os.rename(tmp, target)  # fails rather than replace a directory created meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_s3(settings: Settings, dest: Destination, files: list[tuple[str, Path]]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    for rel, src in files:
        client.upload_file(str(src), dest.bucket, f"{dest.prefix}/{rel}")

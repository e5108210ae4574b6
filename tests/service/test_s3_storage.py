"""S3Storage against a real S3-compatible HTTP endpoint (moto's server on a local port, spoken to over HTTP
by boto3, in this process and in a real worker subprocess): put, size and sha256, ranged reads, local copies,
deletes, and one job run end to end with storage=s3."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.storage import S3Storage
from tests.ci import skip_or_fail
from tests.service.conftest import Stack, fast_job, make_stack

pytestmark = pytest.mark.service

try:
    import moto.server as moto_server
except ImportError:
    skip_or_fail("moto[server] not installed (pip install -e .[dev])", allow_module_level=True)

BUCKET = "lingua-edit-test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def storage(s3_endpoint: str, tmp_path: Path) -> S3Storage:
    settings = Settings(
        data_dir=tmp_path,
        storage="s3",
        s3_bucket=BUCKET,
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_prefix="pfx/",
    )
    return S3Storage(settings)


def _object_keys(st: S3Storage) -> list[str]:
    out = st.client.list_objects_v2(Bucket=BUCKET, Prefix="pfx/")
    return sorted(o["Key"] for o in out.get("Contents", []))


def test_s3_storage_interface(storage: S3Storage, tmp_path: Path) -> None:
    # 9 MiB: above boto3's 8 MiB threshold, so upload_file goes multipart
    data = os.urandom(9 * 1024 * 1024 + 123)
    src = tmp_path / "artifact.bin"
    src.write_bytes(data)
    storage.put_file(src, "edits/e1/aaa")
    assert not src.exists()  # moved, like the local storage
    small = tmp_path / "small.json"
    small.write_bytes(b'{"ok": true}')
    storage.put_file(small, "edits/e1/bbb")
    other = tmp_path / "other.txt"
    other.write_text("x")
    storage.put_file(other, "edits/e2/ccc")
    assert _object_keys(storage) == ["pfx/edits/e1/aaa", "pfx/edits/e1/bbb", "pfx/edits/e2/ccc"]

    head = storage.client.head_object(Bucket=BUCKET, Key="pfx/edits/e1/aaa")
    assert head["ContentLength"] == len(data)
    whole = b"".join(storage.open_range("edits/e1/aaa", 0, len(data) - 1))
    assert hashlib.sha256(whole).hexdigest() == hashlib.sha256(data).hexdigest()
    assert b"".join(storage.open_range("edits/e1/aaa", 100, 1099)) == data[100:1100]
    tail = b"".join(storage.open_range("edits/e1/aaa", len(data) - 10, len(data) - 1))
    assert tail == data[-10:]
    assert b"".join(storage.open_range("edits/e1/bbb", 0, 0)) == b"{"

    local = storage.local_path("edits/e1/bbb", tmp_path / "scratch")
    assert local.read_bytes() == b'{"ok": true}' and local.is_relative_to(tmp_path / "scratch")

    for bad in ("../x", "/abs", "a/../../b", "a\\b", ""):
        with pytest.raises(ValueError):
            storage.open_range(bad, 0, 1)

    storage.delete_prefix("edits/e1")
    assert _object_keys(storage) == ["pfx/edits/e2/ccc"]
    storage.delete_prefix("edits/e2")
    assert _object_keys(storage) == []


@pytest.fixture(scope="module")
def s3_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, redis_url: str, tiny_model: Path, s3_endpoint: str
) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path_factory.mktemp("s3"),
        pg_database,
        redis_url,
        tiny_model,
        LINGUA_EDIT_STORAGE="s3",
        LINGUA_EDIT_S3_BUCKET=BUCKET,
        LINGUA_EDIT_S3_ENDPOINT_URL=s3_endpoint,
        LINGUA_EDIT_S3_REGION="us-east-1",
        LINGUA_EDIT_S3_PREFIX="jobs",
        LINGUA_EDIT_DESTINATION_ROOTS=f'["s3://{BUCKET}/registry"]',
        # what clients reach: another name for the same server, so the presigned URLs must be signed for it
        LINGUA_EDIT_S3_PUBLIC_ENDPOINT_URL=s3_endpoint.replace("127.0.0.1", "localhost"),
    )
    stack.env.update(AWS_ENV)  # the worker subprocess's credentials
    yield stack
    stack.ctx.engine.dispose()


def test_job_end_to_end_on_s3(s3_stack: Stack) -> None:
    rows = [
        {"id": f"{k}{i}", "lang": lg, "prompt": f"{k} prompt number {i} in {lg}", "kind": kind}
        for i in range(6)
        for lg in ("en", "zh")
        for k, kind in (("h", "harmful"), ("s", "harmless"))
    ]
    worker = s3_stack.start_worker("s3-worker")
    try:
        # inline rows become a dataset in S3, which the worker fetches with local_path
        job = s3_stack.submit(
            fast_job(target_languages=["zh"], calibration_rows=rows, destination=f"s3://{BUCKET}/registry/run-1")
        )
        done = s3_stack.wait_terminal(job["id"])
        assert done["status"] == "succeeded", (done["error"], worker.log.read_text()[-4000:])
    finally:
        worker.stop()
    st = s3_stack.ctx.storage
    assert isinstance(st, S3Storage)
    keys = [o["Key"] for o in st.client.list_objects_v2(Bucket=BUCKET, Prefix="jobs/").get("Contents", [])]
    assert any(k.startswith(f"jobs/edits/{job['id']}/") for k in keys)
    # the destination: the model folder in Hugging Face layout under the allowed prefix
    dest = {o["Key"] for o in st.client.list_objects_v2(Bucket=BUCKET, Prefix="registry/run-1/").get("Contents", [])}
    assert {f"registry/run-1/{n}" for n in ("README.md", "config.json", "model.safetensors", "manifest.json")} <= dest
    for a in done["artifacts"]:
        url = f"/v1/edits/{job['id']}/artifacts/{a['name']}"
        # downloads are handed to S3: a 307 to a presigned URL, which works without the API key
        r = s3_stack.client.get(url, follow_redirects=False)
        assert r.status_code == 307 and r.headers["etag"] == f'"{a["sha256"]}"', r.text
        presigned = r.headers["location"]
        assert presigned.startswith(s3_stack.settings.s3_public_endpoint_url) and "Signature" in presigned
        body = httpx.get(presigned).content
        assert hashlib.sha256(body).hexdigest() == a["sha256"] and len(body) == a["size"], a["name"]
        part = httpx.get(presigned, headers={"Range": "bytes=10-49"})
        assert part.status_code == 206 and part.content == body[10:50]
        assert part.headers["content-range"] == f"bytes 10-49/{a['size']}"
    assert s3_stack.other.get(f"/v1/edits/{job['id']}/artifacts/report.json", follow_redirects=False).status_code == 404

"""The webhook SSRF guard: at submission (422 naming webhook_url) and again at delivery (DNS rebinding)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from standardwebhooks import Webhook

from core import netguard
from core.netguard import UnsafeURLError, check_webhook_url
from tests.service.conftest import Stack, fast_job
from tests.service.webhook_server import WebhookSink
from worker.webhook import send

pytestmark = pytest.mark.service

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

BLOCKED = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[ff02::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[2002:7f00:1::]/hook",  # 6to4 wrapping 127.0.0.1
]


@pytest.fixture
def strict(pg_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The stack as deployed by default: private webhook targets refused."""
    monkeypatch.setattr(pg_stack.settings, "webhook_private_allowlist", [])
    return pg_stack


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("name does not resolve")
        return answers[host]

    monkeypatch.setattr(netguard, "_resolve", resolve)


@pytest.mark.parametrize("url", BLOCKED)
def test_submission_rejects_internal_targets(strict: Stack, url: str) -> None:
    before = strict.client.get("/v1/edits", params={"limit": 100}).json()["data"]
    r = strict.client.post("/v1/edits", json=fast_job(webhook_url=url))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "webhook_url" and err["code"] == "invalid_webhook_url", err
    assert len(strict.client.get("/v1/edits", params={"limit": 100}).json()["data"]) == len(before)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://h/", "http:///nohost", "http://u:p@1.1.1.1/"]
)
def test_scheme_and_shape(strict: Stack, url: str) -> None:
    r = strict.client.post("/v1/edits", json=fast_job(webhook_url=url))
    assert r.status_code == 422 and r.json()["error"]["param"] == "webhook_url", r.text


def test_names_resolving_to_private_or_nothing(strict: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(
        monkeypatch,
        {
            "internal.example": ["10.0.0.7"],
            "mixed.example": ["93.184.215.14", "192.168.0.2"],  # one bad answer is enough
            "public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        },
    )
    for url in ("https://internal.example/h", "https://mixed.example/h", "https://nxdomain.example/h"):
        r = strict.client.post("/v1/edits", json=fast_job(webhook_url=url))
        assert r.status_code == 422 and r.json()["error"]["param"] == "webhook_url", (url, r.text)
    r = strict.client.post("/v1/edits", json=fast_job(webhook_url="https://public.example/hook?t=1"))
    assert r.status_code == 202, r.text
    strict.client.post(f"/v1/edits/{r.json()['id']}/cancel")


def test_public_literal_accepted_and_private_allowed_by_setting(
    pg_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pg_stack allow-lists 127.0.0.0/8: loopback is accepted there, other private ranges are not
    ok = pg_stack.client.post("/v1/edits", json=fast_job(webhook_url="http://127.0.0.1:9/hook"))
    assert ok.status_code == 202, ok.text
    pg_stack.client.post(f"/v1/edits/{ok.json()['id']}/cancel")
    r = pg_stack.client.post("/v1/edits", json=fast_job(webhook_url="http://10.1.2.3/hook"))
    assert r.status_code == 422 and r.json()["error"]["param"] == "webhook_url"
    monkeypatch.setattr(pg_stack.settings, "webhook_private_allowlist", [])
    pub = pg_stack.client.post("/v1/edits", json=fast_job(webhook_url="https://93.184.215.14:8443/h"))
    assert pub.status_code == 202, pub.text
    pg_stack.client.post(f"/v1/edits/{pub.json()['id']}/cancel")


def test_allowlist_by_network_and_by_host(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"hooks.internal": ["10.20.1.5"], "other.internal": ["10.30.0.1"]})
    assert check_webhook_url("http://10.20.3.4/h", ["10.20.0.0/16"]).address.compressed == "10.20.3.4"
    with pytest.raises(UnsafeURLError):
        check_webhook_url("http://10.21.0.1/h", ["10.20.0.0/16"])
    assert check_webhook_url("http://hooks.internal/h", ["hooks.internal"]).address.compressed == "10.20.1.5"
    with pytest.raises(UnsafeURLError):
        check_webhook_url("http://other.internal/h", ["hooks.internal"])
    with pytest.raises(UnsafeURLError):  # an IPv4-mapped form of a listed network is the same address
        check_webhook_url("http://[::ffff:10.40.0.1]/h", ["10.20.0.0/16"])
    assert check_webhook_url("http://[::ffff:10.20.0.1]/h", ["10.20.0.0/16"])


def test_delivery_rechecks_and_pins_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = WebhookSink()
    port = urlsplit(sink.url).port
    try:
        # DNS rebinding: the name was public at submission, points at loopback by delivery time
        _fake_dns(monkeypatch, {"hooks.example": ["93.184.215.14"]})
        url = f"http://hooks.example:{port}/hook?token=x"
        assert check_webhook_url(url).address.compressed == "93.184.215.14"
        _fake_dns(monkeypatch, {"hooks.example": ["127.0.0.1"]})
        body = json.dumps({"type": "edit.succeeded", "data": {"id": "edit_x"}})
        assert not send(url, "msg_1", body, [SECRET], 5).ok
        assert sink.received == []
        with pytest.raises(UnsafeURLError):
            check_webhook_url(url)
        # a literal loopback URL is refused at delivery too
        refused = send(sink.url, "msg_1", body, [SECRET], 5)
        assert not refused.ok and refused.error.startswith("refused")
        assert sink.received == []

        # allowed: the POST goes to the resolved (checked) address, keeping the name in the Host header
        assert send(url, "msg_1", body, [SECRET], 5, allowlist=["127.0.0.1/32"]).ok
        headers, got = sink.received[0]
        assert headers["Host"] == f"hooks.example:{port}"
        assert got.decode() == body and headers["webhook-id"] == "msg_1"
        # Standard Webhooks: the receiver verifies with the standardwebhooks library
        assert Webhook(SECRET).verify(got, {k.lower(): v for k, v in headers.items()}) == json.loads(body)
        assert headers["webhook-signature"].startswith("v1,")
    finally:
        sink.close()

"""SSRF guard for webhook URLs: http(s) only, and only hosts that resolve to public addresses.

Checked when a job is submitted (422 naming `webhook_url`) and again at delivery, where the worker connects
to the very address it checked (DNS rebinding cannot swap in an internal one between check and connect).
Receivers on private networks are allowed only where the operator lists them explicitly
(`LINGUA_EDIT_WEBHOOK_PRIVATE_ALLOWLIST`: CIDRs such as `10.20.0.0/16` or exact host names).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURLError(ValueError):
    """The URL may not be used as a webhook; the message says why (safe to show to the client)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written in the URL (used for Host and TLS SNI)
    port: int
    address: IPAddress  # the checked address the connection goes to


def _resolve(host: str, port: int) -> list[str]:
    """All addresses of `host` (the system resolver); tests replace this to simulate DNS answers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address is not a public unicast one, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None:
            reason = blocked_reason(mapped)
            if reason:
                return reason
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return name
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), documentation and benchmark ranges
        return "non-public"
    return None


def parse_webhook_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL with a host; UnsafeURLError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"webhook_url is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError("webhook_url must be an http(s) URL")
    if not parts.hostname:
        raise UnsafeURLError("webhook_url must name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("webhook_url must not carry credentials before the host")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def _allowed(host: str, ip: IPAddress, allowlist: Iterable[str]) -> bool:
    """True when the operator's allow-list names this host exactly or a network that holds this address."""
    for entry in allowlist:
        entry = entry.strip()
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if entry.lower().rstrip(".") == host.lower().rstrip("."):
                return True
            continue
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False


def check_webhook_url(url: str, allowlist: Iterable[str] = ()) -> Target:
    """Resolve the URL's host and return the address to connect to; UnsafeURLError if it is not allowed.

    Every address the host resolves to must be public (an attacker's name could list a public and a private
    one), unless the operator's `allowlist` names the host or a network holding the address.
    """
    allowlist = list(allowlist)
    scheme, host, port = parse_webhook_url(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in _resolve(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise UnsafeURLError(f"webhook_url host {host!r} does not resolve") from None
        if not addresses:
            raise UnsafeURLError(f"webhook_url host {host!r} does not resolve")
    for ip in addresses:
        reason = blocked_reason(ip)
        if reason and not _allowed(host, ip, allowlist):
            raise UnsafeURLError(
                f"webhook_url host {host!r} resolves to a {reason} address ({ip}); "
                "webhooks go to public addresses only (operators: LINGUA_EDIT_WEBHOOK_PRIVATE_ALLOWLIST)"
            )
    return Target(scheme=scheme, host=host, port=port, address=addresses[0])

"""Checks for URLs that users hand the server to call back (webhooks, an MLflow
`tracking_uri`): the shape, at registration, and the address, when the server connects.

A URL must be http(s), with a host whose IDNA form is valid (labels of at most 63
characters, 253 in all) and a port in 1-65535. Unless the deployment allows it
(`allow_private_targets`, for local development), the server refuses to connect to
loopback, link-local (the cloud metadata service at 169.254.169.254), private, shared,
multicast, reserved and unspecified addresses, IPv4-mapped IPv6 forms included: otherwise a
key could make the server probe or post to the network behind it. Names are resolved at
send time and the connection is pinned to the checked address, so a name that resolves to
a public address when checked and to a private one a moment later (DNS rebinding) is
refused or never reached.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedTargetError(ValueError):
    """The URL's host is, or resolves to, an address the server does not call."""


def _idna_host(host: str) -> str:
    """The host's ASCII (IDNA) form; ValueError if it has none (an empty label, a label of
    more than 63 characters, more than 253 in all)."""
    if not host:
        raise ValueError("has no host")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"host {host[:80]!r} is not a valid domain name ({exc})") from None
    if len(ascii_host.rstrip(".")) > 253:
        raise ValueError("host is longer than 253 characters")
    return ascii_host


def ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_http_url(url: str) -> str:
    """`url` if it is an http(s) URL the sender can use; ValueError naming what is wrong."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError outside 0-65535
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if port == 0:
        raise ValueError("port must be in 1-65535")
    host = parts.hostname or ""
    if ip_literal(host) is None:
        _idna_host(host)
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    return url


def is_public(address: Address) -> bool:
    """Globally routable unicast: not loopback, link-local, private, shared (100.64/10),
    multicast, reserved or unspecified; an IPv4-mapped IPv6 address is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_literal_host(url: str) -> None:
    """At registration: refuse a URL whose host is a non-public IP address or `localhost`
    (names are resolved, and checked again, at send time)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    address = ip_literal(host)
    if host == "localhost" or host.endswith(".localhost") or (
            address is not None and not is_public(address)):
        raise BlockedTargetError(
            f"host {host!r} is a loopback, private or link-local address, which this server "
            "does not call (SAGETRAIN_ALLOW_PRIVATE_TARGETS=true allows it)")


@dataclass(frozen=True)
class PinnedTarget:
    """Where to connect for a URL: `url` with its host replaced by the checked address,
    and the headers and extensions that keep the original name for Host and TLS."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, str]


def resolve_public(url: str, *, allow_private: bool = False) -> PinnedTarget:
    """Resolve the URL's host once, check every address it has, and pin the connection to
    the first. BlockedTargetError if any address is not public (unless `allow_private`);
    OSError if the name does not resolve."""
    parsed = httpx.URL(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = ip_literal(host)
    if literal is not None:
        addresses: list[Address] = [literal]
    else:
        infos = socket.getaddrinfo(_idna_host(host), port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise OSError(f"{host} has no address")
    if not allow_private:
        blocked = [a for a in addresses if not is_public(a)]
        if blocked:
            raise BlockedTargetError(
                f"{host} resolves to {blocked[0]}, a loopback, private or link-local "
                "address, which this server does not call")
    if literal is not None:
        return PinnedTarget(parsed, {}, {})
    pinned = parsed.copy_with(host=str(addresses[0]))
    host_header = host if parsed.port is None else f"{host}:{parsed.port}"
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return PinnedTarget(pinned, {"Host": host_header}, extensions)

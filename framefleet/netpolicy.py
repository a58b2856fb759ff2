"""Which addresses a URL a user gives may make a worker connect to: public ones only.

Loopback, link-local (169.254.x.x, the cloud metadata address), private, shared (100.64/10),
reserved and multicast addresses are refused, unless FRAMEFLEET_ALLOW_PRIVATE_URLS allows
them: `1`/`true`/`all` for every address, or a comma-separated list of networks
(`10.0.0.0/8,127.0.0.1/32`). A host name is resolved once and every address it resolves to
must be allowed; the connection is then made to the checked address (so a name cannot
resolve to a public address for the check and a private one for the connection), and each
redirect is checked the same way. IPv6 addresses that stand for IPv4 ones (mapped, 6to4,
Teredo, NAT64) are judged by those. `check_url` is the one place the policy is written: the
workers check it on every fetch, and the enqueue API (next issue) is to call it too.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit


class URLRefused(ValueError):
    """The URL names a host the policy refuses (`cls` forbidden) or no usable host
    (bad_uri); `lookup` when its name did not resolve (the URL itself may be fine), and
    `temporary` when that may pass (another try may succeed)."""

    def __init__(
        self, reason: str, cls: str, temporary: bool = False, lookup: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason, self.cls, self.temporary, self.lookup = reason, cls, temporary, lookup


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Policy:
    allow_all: bool = False
    networks: tuple[Network, ...] = ()

    def allows(self, address: Address) -> bool:
        if self.allow_all or any(address in net for net in self.networks):
            return True
        inner = _embedded_ipv4(address)
        if inner is not None:  # a v6 address that reaches a v4 one: judged by that one
            return self.allows(inner)
        return address.is_global and not address.is_multicast


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, 6to4, Teredo, NAT64, compatible."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@lru_cache(maxsize=16)
def policy(allow_private: str) -> Policy:
    """FRAMEFLEET_ALLOW_PRIVATE_URLS as a Policy (ValueError for a network it cannot read)."""
    text = allow_private.strip().lower()
    if text in ("1", "true", "yes", "all"):
        return Policy(allow_all=True)
    if text in ("", "0", "false", "no"):
        return Policy()
    return Policy(networks=tuple(ipaddress.ip_network(n.strip()) for n in text.split(",")))


def check_url(url: str, allow_private: str = "") -> list[tuple[Address, int]]:
    """The (address, port) pairs an http(s) URL may be fetched from, all allowed by the
    policy; URLRefused (forbidden) when any address it names or resolves to is not."""
    try:
        parts = urlsplit(url)
        host_name = parts.hostname
    except ValueError as exc:  # an unbalanced or bad [IPv6] host
        raise URLRefused(f"not a valid URL: {url}: {exc}", "bad_uri") from None
    if parts.scheme not in ("http", "https") or not host_name:
        raise URLRefused(f"not an http(s) URL with a host: {url}", "bad_uri")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise URLRefused(f"bad port in {url}", "bad_uri") from None
    host = host_name
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError as exc:  # a label empty or over 63 characters: never a name
            raise URLRefused(f"not a valid host name in {url}: {exc}", "bad_uri") from None
        except OSError as exc:
            temporary = getattr(exc, "errno", None) in (socket.EAI_AGAIN, socket.EAI_FAIL)
            raise URLRefused(f"cannot resolve {host}: {exc}", "bad_uri", temporary, True) from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))
    rules = policy(allow_private)
    refused = [str(a) for a in addresses if not rules.allows(a)]
    if refused:
        raise URLRefused(
            f"{url}: {host} is a private, loopback or link-local address ({', '.join(refused)}):"
            " refused (FRAMEFLEET_ALLOW_PRIVATE_URLS allows such networks)",
            "forbidden",
        )
    return [(a, port) for a in addresses]


def refusal(
    uri: str, allow_private: str, allowed_roots: Sequence[Path], hosts: dict[str, str | None]
) -> str | None:
    """Why the workers would refuse to fetch `uri` for where it points, or None: an http(s)
    URL the policy refuses, or a local path outside `allowed_roots` (FRAMEFLEET_ALLOWED_ROOTS).
    What the enqueue API and `framefleet enqueue` check before they write. A name that does
    not resolve now is left to the fetch. `hosts` keeps each host's verdict for the rest of a
    batch (one lookup a host, not an item)."""
    if uri.startswith(("http://", "https://")):
        try:
            host = urlsplit(uri).netloc
        except ValueError as exc:  # an unbalanced or bad [IPv6] host
            return f"{uri}: {exc}"
        if host not in hosts:
            try:
                check_url(uri, allow_private)
                hosts[host] = None
            except URLRefused as exc:
                hosts[host] = None if exc.lookup else str(exc)
        return hosts[host]
    if uri.startswith(("/", "file://")):
        path = Path(unquote(urlsplit(uri).path) if uri.startswith("file://") else uri)
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
            return f"{path}: {exc}"
        roots = [root.resolve() for root in allowed_roots]
        if not any(resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(map(str, roots)) or "none configured (FRAMEFLEET_ALLOWED_ROOTS)"
            return f"{path} is outside the allowed roots ({allowed})"
    return None


class PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to the address check_url checked, whatever the URL's host name
    resolves to now (the Host header stays the name). `open_socket` makes its socket."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def open_socket(self) -> socket.socket:
        return socket.create_connection((self.address, self.port), self.timeout)

    def connect(self) -> None:
        self.sock = self.open_socket()


class PinnedHTTPS(http.client.HTTPSConnection):
    """The same over TLS: the certificate is checked against the URL's host name.
    `before_handshake` sees the TLS socket before its handshake (a deadline to watch it)."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def open_socket(self) -> socket.socket:
        return socket.create_connection((self.address, self.port), self.timeout)

    def before_handshake(self, tls: ssl.SSLSocket) -> None:
        """Nothing here; a subclass may watch it."""

    def connect(self) -> None:
        sock = self.open_socket()
        tls = self._context.wrap_socket(  # type: ignore[attr-defined]
            sock, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.before_handshake(tls)
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()  # not ours to keep: the connection never had it
            raise
        self.sock = tls

"""Which addresses a webhook may reach: the submitter names the URL, a worker inside
the operator's network makes the request.

Without a policy a webhook is a request forgery tool: ``http://169.254.169.254/`` reads
cloud credentials, ``http://10.0.0.5:6379/`` talks to internal services. So a webhook
host is resolved once, every address it resolves to is checked, and the request goes
to the checked address (``net.Target(connect_host=...)``), never to a second lookup a
rebinding DNS server could answer differently. The check is on the resolved address,
not on the URL's text, so numeric tricks (``0x7f000001``, ``2130706433``,
``0177.0.0.1``, ``[::ffff:127.0.0.1]``) are caught like ``127.0.0.1``.

Refused unless allowed: addresses that are not globally routable (loopback, private,
link-local, unique-local, shared 100.64/10, reserved, unspecified, documentation),
multicast, and IPv6 forms that carry such an IPv4 address (mapped, NAT64, 6to4,
Teredo). ``DISPATCHER_WEBHOOK_ALLOW`` lists the CIDRs and host names a user trusts.
No ``dispatcher`` import: validation (at submit) and the webhooks (at delivery) share it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING = "DISPATCHER_WEBHOOK_ALLOW"

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class LookupFailed(Exception):
    """The host did not resolve (or not in time)."""


def host_name_error(host: str) -> str | None:
    """Why ``host`` (a URL's host, lowercased) is not a host name or IP literal, or None."""
    if not host:
        return "has no host"
    if literal_address(host) is not None:
        return None
    name = (host[:-1] if host.endswith(".") else host).lower()
    if len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        return f"host {host[:80]!r} is not a valid host name"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a numeric host means, as the system resolver reads it (``inet_aton``'s
    forms too: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refused_kind(ip: IPAddress) -> str | None:
    """What kind of address ``ip`` is if a webhook may not go there by default, else None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            kind = refused_kind(inner)
            if kind is not None:
                return kind
        if ip.ipv4_mapped is not None:
            return None
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "shared (100.64.0.0/10)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL, "unique-local"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "non-global"),
    )
    return next((kind for hit, kind in checks if hit), None)


@dataclass(frozen=True)
class AllowList:
    """The receivers a user trusts past the default refusals: networks and exact host
    names (an allowed name may resolve to any address: its owner vouches for it)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def parse(text: str) -> AllowList:
        """``10.0.0.0/8,hooks.internal``; raises ValueError naming a bad item."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in (text or "").split(","):
            item = raw.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = item.rstrip(".")
            if not name or host_name_error(name) is not None or literal_address(name):
                raise ValueError(f"{raw.strip()[:80]!r} is neither a CIDR (10.0.0.0/8, "
                                 "fd00::/8, 192.0.2.7) nor a host name")
            hosts.add(name)
        return AllowList(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows(self, ip: IPAddress) -> bool:
        forms: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        return any(f.version == n.version and f in n for f in forms for n in self.networks)

    def refusal(self, ip: IPAddress) -> str | None:
        """The kind of a refused address (after the allow-list), or None if allowed."""
        return None if self.allows(ip) else refused_kind(ip)


def a_kind(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def refusal_text(kind: str) -> str:
    """The detail for a refused address: names the setting that lets it through, and
    not the address itself (what an internal name resolves to is not the submitter's)."""
    return (f"refused: the webhook host resolves to {a_kind(kind)} address; "
            f"list trusted receivers in {ALLOW_SETTING}")


_lookups = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                 thread_name_prefix="dispatcher-dns")


def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, within ``timeout``.

    getaddrinfo cannot be interrupted, so it runs in a small pool and is abandoned at the
    deadline (the lookup ends on its own, within the resolver's timeouts)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    future = _lookups.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(0.001, timeout))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise LookupFailed("DNS lookup timed out") from None
    except (OSError, UnicodeError) as e:
        raise LookupFailed("DNS lookup failed") from e
    out: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]))
        except ValueError:
            continue
        if ip not in out:
            out.append(ip)
    if not out:
        raise LookupFailed("DNS lookup failed")
    return out

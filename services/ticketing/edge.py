"""Who the client is behind reverse proxies, and the key its joins are rate-limited under.

Only the proxies in ``WAITROOM_TICKETING_TRUSTED_PROXIES`` may speak for a client. A request whose
peer (the TCP connection's other end) is not one of them comes from that peer, whatever its
``X-Forwarded-For`` says. From a trusted peer, ``X-Forwarded-For`` is read from the right: each
proxy appends the address it received the request from, so the right-most hop that is not itself
a trusted proxy is the client; anything to its left was written by that client and proves nothing.

uvicorn's own proxy-header handling is off (``proxy_headers=False`` in the composition root), so
``request.client`` is always the peer and this module alone decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv6 clients are limited per /64: one subscriber usually holds a whole /64 and can pick any address in it
IPV6_BUCKET_PREFIX = 64
#: at most this many ``X-Forwarded-For`` hops are looked at, however long the header
MAX_HOPS = 32


def parse_networks(entries: Iterable[str]) -> list[IPNetwork]:
    """CIDRs (or single addresses) as networks; host bits are allowed and dropped. Raises ValueError."""
    networks: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip()
        if text:
            networks.append(ipaddress.ip_network(text, strict=False))
    return networks


def parse_address(text: str) -> IPAddress | None:
    """One address as a proxy writes it (``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``,
    ``[2001:db8::1]:443``), IPv4-mapped IPv6 as IPv4; ``None`` for anything else."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(text.split("%", 1)[0])
    return address


class TrustedProxies:
    """The proxies allowed to name the client in ``X-Forwarded-For``; empty trusts none."""

    def __init__(self, networks: Sequence[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        return cls(parse_networks(entries))

    def trusts(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)

    def client(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> IPAddress | str:
        """The client's address: the peer unless it is trusted, else the right-most untrusted hop.

        ``forwarded_for`` is every ``X-Forwarded-For`` header line in order. A hop that is not an
        address ends the walk at the trusted proxy that passed it on: the request is counted
        against that proxy, never against a value further left that the client could have
        written. A peer that is not an address at all (a Unix socket, a test client) is returned
        as it is.
        """
        if peer is None:
            return "unknown"
        current = parse_address(peer)
        if current is None:
            return peer
        if not self.networks or not self.trusts(current):
            return current
        hops = [hop for line in forwarded_for for hop in line.split(",")]
        for hop in reversed(hops[-MAX_HOPS:]):
            address = parse_address(hop)
            if address is None:
                return current
            current = address
            if not self.trusts(current):
                return current
        return current  # every hop was a trusted proxy: the farthest one looked at


def rate_limit_key(client: IPAddress | str) -> str:
    """The bucket of a client: its IPv4 address, or its IPv6 address's /64."""
    if isinstance(client, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((client, IPV6_BUCKET_PREFIX), strict=False))
    return str(client)

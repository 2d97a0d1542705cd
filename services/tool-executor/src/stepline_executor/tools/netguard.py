"""Which network addresses a tool may reach: no private, loopback, link-local, CGNAT, multicast
or cloud-metadata address unless explicitly allowed; DNS answers are checked, not host names."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "IPAddress",
    "NetworkPolicy",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Blocks non-public addresses; `allow` lists networks reachable anyway (tests, demo)."""

    allow: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> NetworkPolicy:
        """A policy allowing these CIDR networks (e.g. `127.0.0.1/32`)."""
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached, or None when it may."""
        if any(address.version == n.version and address in n for n in self.allow):
            return None
        if address in _METADATA:
            return f"{address} is a cloud metadata address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = self.refusal(embedded)
            return f"{address} embeds {reason}" if reason else None
        checks = (
            (address.is_loopback, "loopback"),
            (address.is_unspecified, "unspecified"),
            (address.is_link_local, "link-local"),
            (address.is_multicast, "multicast"),
            (address.version == 4 and address in _CGNAT, "carrier-grade NAT"),
            (address.is_private, "private"),
            (address.is_reserved, "reserved"),
            (not address.is_global, "not a public address"),
        )
        for hit, what in checks:
            if hit:
                return (
                    f"{address} is {what if what.startswith('not') else 'a ' + what + ' address'}"
                )
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class Resolver(Protocol):
    """Outbound port: host name → addresses."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        """Every address of `host`; raise `OSError` when it does not resolve."""


class SystemResolver:
    """`Resolver` over the system resolver (getaddrinfo)."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        """Every address of `host`."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        found: dict[IPAddress, None] = {}
        for _family, _type, _proto, _name, sockaddr in infos:
            found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
        return list(found)


class StaticResolver:
    """`Resolver` twin: a fixed table (tests simulate any DNS answer with it)."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {h.lower(): [ipaddress.ip_address(a) for a in v] for h, v in table.items()}

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        """The addresses in the table, or `OSError`."""
        try:
            return self._table[host.lower()]
        except KeyError:
            raise OSError(f"name {host!r} does not resolve") from None

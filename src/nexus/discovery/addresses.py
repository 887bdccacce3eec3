"""IP addresses of discovered servers: which one to use, how to write it in a URL, and how
to compare two of them (zone ids and IPv4-mapped forms name the same host)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def url_host(address: IPAddress) -> str:
    """An address as the host part of a URL: IPv6 bracketed, a zone id %-escaped."""
    if isinstance(address, ipaddress.IPv6Address):
        text = str(address)
        if "%" in text:
            addr, zone = text.split("%", 1)
            text = f"{addr}%25{zone}"
        return f"[{text}]"
    return str(address)


def _address_rank(address: IPAddress) -> int:
    if isinstance(address, ipaddress.IPv4Address):
        return 2 if address.is_link_local else 0
    if address.ipv4_mapped is not None:
        return 0
    return 3 if address.is_link_local else 1


def pick_address(addresses: Iterable[IPAddress]) -> IPAddress | None:
    """The address to reach a server by: IPv4, then global IPv6, then link-local ones."""
    ranked = sorted(addresses, key=_address_rank)
    return ranked[0] if ranked else None


def plain(address: IPAddress) -> IPAddress:
    """Drop an IPv6 zone id and unwrap IPv4-mapped addresses, for comparisons."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address

"""Which local addresses zeroconf binds: the configured interfaces, or every address of
this host that can carry multicast."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable

import ifaddr


def default_interfaces() -> list[str]:
    """Every address of this host for zeroconf, except IPv6 loopback: ``lo`` carries
    IPv4 multicast but, on Linux, not IPv6 multicast (sending there only fails)."""
    out: list[str] = []
    with contextlib.suppress(OSError):
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    out.append(ip.ip)
                elif not ipaddress.ip_address(ip.ip[0]).is_loopback:
                    out.append(ip.ip[0])
    return list(dict.fromkeys(out))


def resolve_interfaces(entries: Iterable[str]) -> list[str]:
    """Config ``interfaces`` -> IP addresses for zeroconf. An interface name (``eth0``)
    stands for its addresses. Raises ValueError naming an entry that is neither."""
    out: list[str] = []
    adapters: list[ifaddr.Adapter] | None = None
    for entry in entries:
        entry = entry.strip()
        try:
            out.append(str(ipaddress.ip_address(entry)))
            continue
        except ValueError:
            pass
        if adapters is None:
            adapters = list(ifaddr.get_adapters())
        match = [a for a in adapters if entry in (a.name, a.nice_name)]
        if not match:
            raise ValueError(f"{entry!r} is neither an IP address nor a network interface")
        for adapter in match:
            for ip in adapter.ips:
                out.append(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return list(dict.fromkeys(out))

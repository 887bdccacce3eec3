"""Endpoint identity: is a discovered service the same server as a configured backend?

"Same address" compares (host, port, path prefix), with every name of this host
(``localhost``, loopback, the host name, the addresses of its interfaces) folded into one,
so a server advertised as ``gpu-box.local`` is recognised as the static
``http://127.0.0.1:11434`` it also is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import ifaddr

from nexus.discovery.addresses import IPAddress, plain
from nexus.discovery.records import base_path

EndpointKey = tuple[str, int, str]  # (host key, port, path prefix)
LOCAL = "<this host>"
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True, slots=True)
class LocalHost:
    """Every name and address by which this host reaches itself."""

    names: frozenset[str]
    addresses: frozenset[IPAddress]

    @classmethod
    def scan(cls) -> LocalHost:
        names = set(LOCAL_NAMES)
        hostname = socket.gethostname().lower().rstrip(".")
        if hostname:
            short = hostname.split(".")[0]
            names |= {hostname, short, short + ".local"}
        addresses: set[IPAddress] = set()
        with contextlib.suppress(OSError):
            for adapter in ifaddr.get_adapters():
                for ip in adapter.ips:
                    raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
                    with contextlib.suppress(ValueError):
                        addresses.add(plain(ipaddress.ip_address(raw)))
        return cls(frozenset(names), frozenset(addresses))

    def host_key(self, host: str | IPAddress) -> str:
        if isinstance(host, str):
            name = host.strip().strip("[]").lower().rstrip(".")
            try:
                host = ipaddress.ip_address(name)
            except ValueError:
                return LOCAL if name in self.names else name
        address = plain(host)
        if address.is_loopback or address.is_unspecified or address in self.addresses:
            return LOCAL
        return str(address)

    def url_key(self, url: str) -> EndpointKey | None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        if not parts.hostname:
            return None
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        return (self.host_key(parts.hostname), port, base_path(parts.path))

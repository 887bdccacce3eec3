"""A resolved mDNS service reduced to what makes a backend: its URL, type, metadata, and
the endpoint keys it is recognised by."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo

from nexus.discovery.addresses import IPAddress, pick_address
from nexus.discovery.hosts import EndpointKey, LocalHost
from nexus.discovery.records import (
    NEEDS_TXT_HINT,
    backend_type,
    base_path,
    build_url,
    parse_models,
    parse_txt,
)

# The metadata keys discovery owns on a backend; anything else there is someone else's.
METADATA_KEYS = frozenset({"mdns_service", "mdns_host", "version", "api_path", "models"})


@dataclass(frozen=True, slots=True)
class Advert:
    """A resolved mDNS service, reduced to what makes a backend."""

    name: str  # full service name, e.g. "gpu-box._ollama._tcp.local."
    service_type: str
    server: str  # host name from the SRV record, e.g. "gpu-box.local."
    addresses: tuple[IPAddress, ...]
    port: int
    txt: Mapping[str, str]

    @property
    def kind(self) -> str:
        return backend_type(self.service_type, self.txt)

    @property
    def url(self) -> str:
        address = pick_address(self.addresses)
        assert address is not None
        return build_url(address, self.port, self.txt.get("api_path", ""), self.kind)

    @property
    def acceptable(self) -> bool:
        if not self.addresses or not self.port:
            return False
        if self.service_type.lower() in NEEDS_TXT_HINT:
            return "type" in self.txt or "api_path" in self.txt
        return True

    def metadata(self) -> dict[str, str]:
        meta = {"mdns_service": self.name, "mdns_host": self.server.rstrip(".")}
        for key in ("version", "api_path"):
            if self.txt.get(key):
                meta[key] = self.txt[key]
        models = parse_models(self.txt.get("models", ""))
        if models:
            meta["models"] = ",".join(models)
        return meta

    def keys(self, local: LocalHost) -> set[EndpointKey]:
        path = base_path(self.txt.get("api_path", ""), self.kind)
        keys = {(local.host_key(a), self.port, path) for a in self.addresses}
        server = self.server.lower().rstrip(".")
        if server:
            keys.add((local.host_key(server), self.port, path))
            if server.endswith(".local"):
                keys.add((local.host_key(server[: -len(".local")]), self.port, path))
        return keys


def advert_from_info(info: AsyncServiceInfo, service_type: str) -> Advert:
    addresses: list[IPAddress] = []
    for text in info.parsed_scoped_addresses(IPVersion.All):
        with contextlib.suppress(ValueError):
            addresses.append(ipaddress.ip_address(text))
    return Advert(
        name=info.name,
        service_type=service_type,
        server=info.server or "",
        addresses=tuple(addresses),
        port=int(info.port or 0),
        txt=parse_txt(info.properties),
    )

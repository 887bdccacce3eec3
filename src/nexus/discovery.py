"""mDNS discovery (F05): LLM servers on the LAN become backends, with no configuration.

One ``AsyncZeroconf`` browses the configured service types in the background; start-up
never waits for it and requests never touch it. Each service the browser reports is
resolved in its own task, then:

* resolved -> a :class:`~nexus.registry.Backend` with ``DiscoverySource.MDNS`` is added
  (or the existing one updated) and probed right away;
* removed -> status Unknown, probes paused, removed ``grace_period_seconds`` later unless
  the service comes back, in which case the *same* Backend object (id, counters, history)
  is kept and probed at once.

A backend from the config file or added by hand always wins: a service whose address is
one of theirs is never added, and a discovered backend that a static or manual one comes to
shadow is retired (a sweep every :data:`RECONCILE_SECONDS` notices backends added through the
admin API). "Same address" compares (host, port, path prefix) with every name of this host
(``localhost``, loopback, the host name, the addresses of its interfaces) folded into one.

If mDNS cannot run (no usable interface, socket errors), discovery logs a single WARN line
and stays off; static backends are unaffected. zeroconf's own warnings are demoted to DEBUG
while discovery runs so a broken network does not spam tracebacks.

zeroconf is imported here only: this module is imported only when discovery is enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nexus.config import BACKEND_TYPES, DiscoveryConfig, normalize_choice
from nexus.health import HealthChecker
from nexus.registry import Backend, BackendStatus, DiscoverySource, Registry, backend_id

log = logging.getLogger("nexus.discovery")

RESOLVE_TIMEOUT_MS = 3000
RESOLVE_ATTEMPTS = 3
RECONCILE_SECONDS = 2.0
INTERFACE_RESCAN_SECONDS = 60.0
START_TIMEOUT_SECONDS = 10.0

METADATA_KEYS = frozenset({"mdns_service", "mdns_host", "version", "api_path", "models"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EndpointKey = tuple[str, int, str]  # (host key, port, path prefix)
LOCAL = "<this host>"
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

# Service types whose label is not a backend type and that carry no hint of their own:
# only adverts with a TXT ``type`` or ``api_path`` are taken from them (printers are not LLMs).
NEEDS_TXT_HINT = frozenset({"_http._tcp.local."})
_SERVICE_TYPE_RE = re.compile(r"^_[A-Za-z0-9-]{1,63}\._(tcp|udp)\.local\.$")


# -- pure helpers (unit tested) ---------------------------------------------------------


def normalize_service_type(value: str) -> str:
    """``"_llm._tcp.local"`` / ``"_llm._tcp.local."`` / ``"_llm._tcp"`` -> ``"_llm._tcp.local."``.

    Raises ValueError for something that is not a DNS-SD service type.
    """
    name = value.strip().rstrip(".")
    if not name.lower().endswith(".local"):
        name += ".local"
    name += "."
    if not _SERVICE_TYPE_RE.match(name):
        raise ValueError(f"not an mDNS service type: {value!r}")
    return name


def parse_txt(properties: Mapping[Any, Any]) -> dict[str, str]:
    """TXT properties as text: keys lower-cased (they are case-insensitive), values stripped."""
    out: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key
        if isinstance(raw_value, bytes):
            value = raw_value.decode("utf-8", "replace")
        else:
            value = raw_value or ""
        key = key.strip().lower()
        if key and key not in out:  # RFC 6763 6.4: the first occurrence wins
            out[key] = value.strip()
    return out


def parse_models(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def default_type(service_type: str) -> str:
    """``_ollama._tcp`` -> ollama, ``_vllm._tcp`` -> vllm, anything else -> generic."""
    label = service_type.split(".", 1)[0].lstrip("_")
    return normalize_choice(label, BACKEND_TYPES) or "generic"


def backend_type(service_type: str, txt: Mapping[str, str]) -> str:
    hinted = txt.get("type", "")
    return (normalize_choice(hinted, BACKEND_TYPES) if hinted else None) or default_type(
        service_type
    )


def base_path(api_path: str, kind: str = "generic") -> str:
    """The path prefix of the server root, given where its API lives.

    Nexus builds every request as ``url + "/v1/..."`` (and Ollama probes as ``url +
    "/api/tags"``), so the backend URL must stop before ``/v1``: ``/v1`` -> ``""``,
    ``/proxy/v1/`` -> ``"/proxy"``, ``/v1/chat/completions`` -> ``""``; for Ollama,
    ``/api`` -> ``""``. A path without ``/v1`` is taken as the prefix ``/v1`` lives under.
    """
    parts = [p for p in api_path.strip().split("/") if p]
    if "v1" in parts:
        parts = parts[: len(parts) - 1 - parts[::-1].index("v1")]
    elif kind == "ollama" and parts and parts[-1] == "api":
        parts = parts[:-1]
    return "".join("/" + p for p in parts)


def url_host(address: IPAddress) -> str:
    """An address as the host part of a URL: IPv6 bracketed, a zone id %-escaped."""
    if isinstance(address, ipaddress.IPv6Address):
        text = str(address)
        if "%" in text:
            addr, zone = text.split("%", 1)
            text = f"{addr}%25{zone}"
        return f"[{text}]"
    return str(address)


def build_url(
    address: IPAddress | str, port: int, api_path: str = "", kind: str = "generic"
) -> str:
    if isinstance(address, str):
        address = ipaddress.ip_address(address)
    return f"http://{url_host(address)}:{port}{base_path(api_path, kind)}"


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


def instance_label(name: str, service_type: str) -> str:
    """``"GPU Box._ollama._tcp.local."`` -> ``"GPU-Box"`` (a readable backend name)."""
    suffix = "." + service_type
    label = name[: -len(suffix)] if name.lower().endswith(suffix.lower()) else name.split(".")[0]
    label = re.sub(r"\s+", "-", label.replace("\\032", " ").strip())
    return label or "mdns-backend"


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
                        addresses.add(_plain(ipaddress.ip_address(raw)))
        return cls(frozenset(names), frozenset(addresses))

    def host_key(self, host: str | IPAddress) -> str:
        if isinstance(host, str):
            name = host.strip().strip("[]").lower().rstrip(".")
            try:
                host = ipaddress.ip_address(name)
            except ValueError:
                return LOCAL if name in self.names else name
        address = _plain(host)
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


def _plain(address: IPAddress) -> IPAddress:
    """Drop an IPv6 zone id and unwrap IPv4-mapped addresses, for comparisons."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


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


# -- the service --------------------------------------------------------------------------


class _DemoteZeroconfWarnings(logging.Filter):
    """zeroconf warns (with tracebacks) about every socket problem; while discovery runs,
    its first warning becomes Nexus's one WARN line and everything goes to DEBUG."""

    def __init__(self, owner: Discovery) -> None:
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.owner._warn_once("mDNS problem: %s", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            log.debug("zeroconf: %s", record.exc_info[1], exc_info=record.exc_info)
        return False


class Discovery:
    def __init__(self, registry: Registry, config: DiscoveryConfig, health: HealthChecker) -> None:
        self.registry = registry
        self.config = config
        self.health = health
        self.available = False  # zeroconf is up and browsing
        self.local = LocalHost(frozenset(LOCAL_NAMES), frozenset())
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._main: asyncio.Task[None] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._adverts: dict[str, Advert] = {}  # present and resolved, by lower-cased name
        self._backends: dict[str, Backend] = {}  # ours, by lower-cased service name
        self._lost: dict[str, asyncio.Task[None]] = {}  # grace timers, by service name
        self._dismissed: set[str] = set()  # removed by a person while still advertised
        self._skipped: dict[str, str] = {}  # why a service has no backend (logged once)
        self._warned = False
        self._where = "all interfaces"
        self._filter = _DemoteZeroconfWarnings(self)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns at once: zeroconf comes up and browses in a background task."""
        logging.getLogger("zeroconf").addFilter(self._filter)
        self._main = asyncio.create_task(self._run(), name="discovery")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._resolving.values()) if t]
        tasks += self._lost.values()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._main = None
        self._resolving.clear()
        self._lost.clear()
        await self._close_zeroconf()
        logging.getLogger("zeroconf").removeFilter(self._filter)

    async def _close_zeroconf(self) -> None:
        self.available = False
        browser, self._browser = self._browser, None
        aiozc, self._aiozc = self._aiozc, None
        with contextlib.suppress(Exception):
            if browser is not None:
                await browser.async_cancel()
        with contextlib.suppress(Exception):
            if aiozc is not None:
                await aiozc.async_close()

    def _warn_once(self, message: str, *args: object) -> None:
        if self._warned:
            log.debug(message, *args)
        else:
            self._warned = True
            log.warning(message, *args)

    async def _run(self) -> None:
        types: list[str] = []
        for value in self.config.service_types:
            try:
                types.append(normalize_service_type(value))
            except ValueError as exc:
                log.info("discovery: ignoring service type: %s", exc)
        types = list(dict.fromkeys(types))
        if not types:
            self._warn_once("mDNS discovery off: no valid service type configured")
            return
        self.local = LocalHost.scan()
        try:
            await self._open_zeroconf()
        except Exception as exc:
            log.debug("zeroconf start-up failed", exc_info=True)
            self._warn_once(
                "mDNS discovery unavailable on %s (%s); using static backends only",
                self._where,
                _describe(exc),
            )
            await self._close_zeroconf()
            return
        assert self._aiozc is not None
        try:
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, types, handlers=[self._on_service_state_change]
            )
        except Exception as exc:
            log.debug("mDNS browser failed", exc_info=True)
            self._warn_once("mDNS discovery unavailable (%s)", _describe(exc))
            await self._close_zeroconf()
            return
        self.available = True
        log.info("mDNS discovery browsing %s", ", ".join(t.rstrip(".") for t in types))
        await self._maintain()

    async def _open_zeroconf(self) -> None:
        attempts: list[tuple[list[str] | InterfaceChoice, IPVersion | None]]
        if self.config.interfaces:
            self._where = "interfaces " + ", ".join(self.config.interfaces)
            addresses = resolve_interfaces(self.config.interfaces)
            if not addresses:
                raise OSError("no IP address on these interfaces")
            self._where = ", ".join(addresses)
            if self.local.addresses:  # open no socket at all for an address we do not have
                foreign = [
                    a
                    for a in addresses
                    if _plain(ipaddress.ip_address(a)) not in self.local.addresses
                ]
                if len(foreign) == len(addresses):
                    raise OSError("not an address of this host")
                if foreign:
                    log.info("discovery: ignoring %s: not an address of this host", foreign)
                    addresses = [a for a in addresses if a not in foreign]
            attempts = [(addresses, None)]  # zeroconf picks IPv4/IPv6 from the addresses
        else:
            self._where = "all interfaces"
            every = default_interfaces()
            v4 = [a for a in every if ":" not in a]
            # IPv4 and IPv6; hosts without IPv6 (many containers) fall back to IPv4 only.
            attempts = [(every, None), (v4, None)] if every else []
            attempts.append((InterfaceChoice.All, None))
        error: Exception | None = None
        for interfaces, version in attempts:
            try:
                self._aiozc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
                break
            except (OSError, RuntimeError, ValueError) as exc:
                log.debug("zeroconf on %s (%s) failed: %s", self._where, version, exc)
                error = exc
        if self._aiozc is None:
            assert error is not None
            raise error
        zc: Zeroconf = self._aiozc.zeroconf
        async with asyncio.timeout(START_TIMEOUT_SECONDS):
            await zc.async_wait_for_start()
        if not zc.engine.senders:
            raise OSError("cannot bind an mDNS socket there")

    async def _maintain(self) -> None:
        """Keep discovered backends consistent with static/manual ones; follow interface
        changes when zeroconf listens on all of them."""
        rescan_every = max(1, round(INTERFACE_RESCAN_SECONDS / RECONCILE_SECONDS))
        tick = 0
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            tick += 1
            try:
                self.reconcile()
            except Exception as exc:  # a bug here must not end discovery
                log.debug("reconcile failed", exc_info=True)
                self._warn_once("mDNS: reconciling backends failed: %s", exc)
            if not self.config.interfaces and tick % rescan_every == 0 and self._aiozc:
                await self._rescan_interfaces(self._aiozc.zeroconf)

    async def _rescan_interfaces(self, zc: Zeroconf) -> None:
        """Follow addresses that came or went (Wi-Fi joined, VPN up, DHCP renewed)."""
        self.local = LocalHost.scan()
        current = getattr(zc, "_interfaces", None)
        if not isinstance(current, list):
            return
        wanted = default_interfaces()
        if zc.engine.senders and not any(
            w.transport.get_extra_info("socket").family == socket.AF_INET6
            for w in zc.engine.senders
        ):
            wanted = [a for a in wanted if ":" not in a]  # started IPv4-only: stay so
        if not wanted or set(wanted) == set(current):
            return
        try:
            await zc.async_update_interfaces(interfaces=wanted)
        except Exception as exc:  # best effort: keep browsing on what we have
            log.debug("interface rescan failed: %s", exc)

    # -- events ---------------------------------------------------------------------------

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(key, None)
            if task is not None:
                task.cancel()
            self._dismissed.discard(key)
            self._skipped.pop(key, None)
            if self._adverts.pop(key, None) is not None or key in self._backends:
                self._lose(key)
            return
        # Added or Updated (TXT, address or port changed): (re)resolve in the background.
        old = self._resolving.pop(key, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._resolve(zeroconf, service_type, name), name=f"mdns:{name}")
        self._resolving[key] = task
        task.add_done_callback(functools.partial(self._resolved, key))

    def _resolved(self, key: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(key) is task:
            del self._resolving[key]
        if not task.cancelled() and task.exception() is not None:
            log.debug("resolving %s failed", key, exc_info=task.exception())
            self._warn_once("mDNS: handling %s failed: %s", key, task.exception())

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        for attempt in range(RESOLVE_ATTEMPTS):
            if await info.async_request(zc, RESOLVE_TIMEOUT_MS) and info.port:
                break
            await asyncio.sleep(0.5 * (attempt + 1))
        else:
            log.debug("mDNS service %s did not resolve", name)
            return
        advert = advert_from_info(info, service_type)
        if not advert.acceptable:
            log.debug("mDNS service %s ignored (no address, port or type hint)", name)
            return
        self._adverts[name.lower()] = advert
        self.apply(advert)

    # -- registry changes -----------------------------------------------------------------

    def _owner_of(self, keys: set[EndpointKey]) -> Backend | None:
        """A static or manual backend at one of these endpoints."""
        for backend in self.registry:
            if backend.discovery_source is DiscoverySource.MDNS:
                continue
            if self.local.url_key(backend.url) in keys:
                return backend
        return None

    def _ours(self, key: str) -> Backend | None:
        backend = self._backends.get(key)
        if backend is not None and self.registry.get_backend(backend.id) is not backend:
            # Removed behind our back (admin API / CLI): leave it gone while advertised.
            del self._backends[key]
            self.health.unwatch(backend.id)
            self._cancel_grace(key)
            url_key = self.local.url_key(backend.url)
            owner = self._owner_of({url_key} if url_key else set())
            if owner is not None:
                log.info(
                    "discovered backend %s replaced by %s backend %s",
                    backend.name,
                    owner.discovery_source.value,
                    owner.name,
                )
            elif key in self._adverts:
                self._dismissed.add(key)
                log.info("discovered backend %s was removed by hand; ignoring it", backend.name)
            return None
        return backend

    def _skip(self, key: str, reason: str) -> None:
        if self._skipped.get(key) != reason:
            self._skipped[key] = reason
            log.info("mDNS service %s not added: %s", self._adverts[key].name, reason)

    def apply(self, advert: Advert) -> None:
        """Make the registry reflect one present, resolved service."""
        key = advert.name.lower()
        if key in self._dismissed:
            return
        keys = advert.keys(self.local)
        mine = self._ours(key)
        owner = self._owner_of(keys)
        if owner is not None:
            if mine is not None:
                self._retire(
                    key,
                    mine,
                    f"same address as {owner.discovery_source.value} backend {owner.name}",
                )
            self._skip(
                key,
                f"same address as {owner.discovery_source.value} backend "
                f"{owner.name} ({owner.url})",
            )
            return
        if mine is None:
            twin_key = self._twin(key, keys)
            if twin_key is not None:
                if twin_key in self._lost:  # the twin's service went away: take over its backend
                    self._cancel_grace(twin_key)
                    mine = self._backends.pop(twin_key)
                    self._backends[key] = mine
                    self._update(mine, advert)
                    log.info("discovered backend %s is back (as %s)", mine.name, advert.name)
                    self.health.watch(mine)
                else:
                    twin = self._backends[twin_key]
                    self._skip(key, f"same address as discovered backend {twin.name}")
                return
            self._add(key, advert)
            return
        self._skipped.pop(key, None)
        old_url = mine.url
        self._update(mine, advert)
        if key in self._lost:
            self._cancel_grace(key)
            log.info("discovered backend %s is back at %s", mine.name, mine.url)
            self.health.watch(mine)  # probes right away
        elif mine.url != old_url:
            log.info("discovered backend %s moved from %s to %s", mine.name, old_url, mine.url)
            self.health.check_soon(mine)

    def _twin(self, key: str, keys: set[EndpointKey]) -> str | None:
        """Another service of ours already standing for the same endpoint."""
        for other_key, backend in list(self._backends.items()):
            if other_key == key or self._ours(other_key) is None:
                continue
            advert = self._adverts.get(other_key)
            other_keys = advert.keys(self.local) if advert else set()
            url_key = self.local.url_key(backend.url)
            if url_key is not None:
                other_keys.add(url_key)
            if keys & other_keys:
                return other_key
        return None

    def _add(self, key: str, advert: Advert) -> None:
        backend = Backend(
            name=self._unique_name(instance_label(advert.name, advert.service_type)),
            url=advert.url,
            type=advert.kind,
            discovery_source=DiscoverySource.MDNS,
            metadata=advert.metadata(),
        )
        self.registry.add_backend(backend)
        self._backends[key] = backend
        self._skipped.pop(key, None)
        log.info(
            "discovered backend %s (%s) at %s via mDNS %s",
            backend.name,
            backend.type,
            backend.url,
            advert.name,
        )
        self.health.watch(backend)

    def _update(self, backend: Backend, advert: Advert) -> None:
        if backend.url != advert.url:
            backend.url = advert.url
        if backend.type != advert.kind:
            backend.type = advert.kind
        # Only our own keys: anything others put in the metadata stays.
        meta = advert.metadata()
        for stale in METADATA_KEYS - meta.keys():
            backend.metadata.pop(stale, None)
        backend.metadata.update(meta)

    def _unique_name(self, base: str) -> str:
        name, n = base, 1
        while self.registry.find(name) is not None or self.registry.get_backend(backend_id(name)):
            n += 1
            name = f"{base}-{n}"
        return name

    def _lose(self, key: str) -> None:
        backend = self._ours(key)
        if backend is None:
            return
        if key in self._lost:
            return
        # Another advert of the same server still present (e.g. both _ollama and _llm)?
        keys = set(self._adverts[key].keys(self.local)) if key in self._adverts else set()
        url_key = self.local.url_key(backend.url)
        if url_key is not None:
            keys.add(url_key)
        for other_key, advert in list(self._adverts.items()):
            if other_key in self._backends or other_key in self._dismissed:
                continue
            if advert.keys(self.local) & keys:
                self._backends[other_key] = self._backends.pop(key)
                self._skipped.pop(other_key, None)
                self._update(backend, advert)
                log.info("discovered backend %s is now advertised as %s", backend.name, advert.name)
                return
        grace = self.config.grace_period_seconds
        self.registry.update_status(backend.id, BackendStatus.UNKNOWN, "mDNS service gone")
        self.health.unwatch(backend.id)
        log.info(
            "discovered backend %s lost (mDNS service gone); removing it in %gs unless it "
            "comes back",
            backend.name,
            grace,
        )
        task = asyncio.create_task(self._expire(key, backend, grace), name=f"grace:{key}")
        self._lost[key] = task

    async def _expire(self, key: str, backend: Backend, grace: float) -> None:
        await asyncio.sleep(grace)
        if self._lost.get(key) is asyncio.current_task():
            del self._lost[key]
        if self._backends.get(key) is backend:
            self._retire(key, backend, f"gone for {grace:g}s")

    def _cancel_grace(self, key: str) -> None:
        task = self._lost.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _retire(self, key: str, backend: Backend, reason: str) -> None:
        self._cancel_grace(key)
        self._backends.pop(key, None)
        self.health.unwatch(backend.id)
        if self.registry.get_backend(backend.id) is backend:
            self.registry.remove_backend(backend.id)
            log.info("discovered backend %s removed (%s)", backend.name, reason)

    def reconcile(self) -> None:
        """Retire discovered backends a static/manual one now covers; add services that
        a removed static/manual backend used to cover."""
        for key in list(self._backends):
            if key in self._adverts:
                self.apply(self._adverts[key])
            else:
                backend = self._ours(key)
                if backend is not None:
                    owner = self._owner_of({k for k in [self.local.url_key(backend.url)] if k})
                    if owner is not None:
                        self._retire(key, backend, f"same address as backend {owner.name}")
        for key, advert in list(self._adverts.items()):
            if key not in self._backends and key not in self._dismissed:
                self.apply(advert)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "zeroconf did not start in time"
    text = str(exc) or type(exc).__name__
    return text[:200]

"""The mDNS browser: one ``AsyncZeroconf`` browsing the configured service types.

It runs in the background: start-up never waits for it and requests never touch it. Each
service the browser reports is resolved in its own task, then handed to
:class:`~nexus.discovery.tracker.BackendTracker`, which updates the registry.

If mDNS cannot run (no usable interface, socket errors), discovery logs a single WARN line
and stays off; static backends are unaffected. A sweep every :data:`RECONCILE_SECONDS`
keeps discovered backends consistent with static/manual ones and, when zeroconf listens on
all interfaces, follows addresses that come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nexus.config import DiscoveryConfig
from nexus.discovery.addresses import plain
from nexus.discovery.advert import advert_from_info
from nexus.discovery.hosts import LocalHost
from nexus.discovery.interfaces import default_interfaces, resolve_interfaces
from nexus.discovery.logs import DemoteZeroconfWarnings, log
from nexus.discovery.records import normalize_service_type
from nexus.discovery.tracker import BackendTracker
from nexus.errors import describe
from nexus.health import HealthChecker
from nexus.registry import Registry

RESOLVE_TIMEOUT_MS = 3000
RESOLVE_ATTEMPTS = 3
RECONCILE_SECONDS = 2.0
INTERFACE_RESCAN_SECONDS = 60.0
START_TIMEOUT_SECONDS = 10.0

_Attempt = tuple[list[str] | InterfaceChoice, IPVersion | None]


class Discovery(BackendTracker):
    """mDNS discovery for one Nexus: ``start()`` at start-up, ``stop()`` at shutdown."""

    def __init__(self, registry: Registry, config: DiscoveryConfig, health: HealthChecker) -> None:
        super().__init__(registry, config, health)
        self.available = False  # zeroconf is up and browsing
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._main: asyncio.Task[None] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._warned = False
        self._where = "all interfaces"
        self._filter = DemoteZeroconfWarnings(self._warn_once)

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
                "zeroconf did not start in time"
                if isinstance(exc, TimeoutError)
                else describe(exc),
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
            self._warn_once("mDNS discovery unavailable (%s)", describe(exc))
            await self._close_zeroconf()
            return
        self.available = True
        log.info("mDNS discovery browsing %s", ", ".join(t.rstrip(".") for t in types))
        await self._maintain()

    # -- opening zeroconf -----------------------------------------------------------------

    async def _open_zeroconf(self) -> None:
        attempts: list[_Attempt]
        if self.config.interfaces:
            # zeroconf picks IPv4/IPv6 from the addresses
            attempts = [(self._configured_addresses(), None)]
        else:
            self._where = "all interfaces"
            every = default_interfaces()
            v4 = [a for a in every if ":" not in a]
            # IPv4 and IPv6; hosts without IPv6 (many containers) fall back to IPv4 only.
            attempts = [(every, None), (v4, None)] if every else []
            attempts.append((InterfaceChoice.All, None))
        self._first_zeroconf(attempts)
        assert self._aiozc is not None
        zc: Zeroconf = self._aiozc.zeroconf
        async with asyncio.timeout(START_TIMEOUT_SECONDS):
            await zc.async_wait_for_start()
        if not zc.engine.senders:
            raise OSError("cannot bind an mDNS socket there")

    def _configured_addresses(self) -> list[str]:
        """The configured interfaces as addresses of this host; OSError if there are none."""
        self._where = "interfaces " + ", ".join(self.config.interfaces)
        addresses = resolve_interfaces(self.config.interfaces)
        if not addresses:
            raise OSError("no IP address on these interfaces")
        self._where = ", ".join(addresses)
        if self.local.addresses:  # open no socket at all for an address we do not have
            foreign = [
                a for a in addresses if plain(ipaddress.ip_address(a)) not in self.local.addresses
            ]
            if len(foreign) == len(addresses):
                raise OSError("not an address of this host")
            if foreign:
                log.info("discovery: ignoring %s: not an address of this host", foreign)
                addresses = [a for a in addresses if a not in foreign]
        return addresses

    def _first_zeroconf(self, attempts: list[_Attempt]) -> None:
        """Create zeroconf with the first set of interfaces that works; else the last error."""
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

    # -- upkeep ---------------------------------------------------------------------------

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
        old = self._resolving.pop(key, None)  # superseded by this news, whatever it is
        if old is not None:
            old.cancel()
        if state_change is ServiceStateChange.Removed:
            self._withdraw(key)
            return
        # Added or Updated (TXT, address or port changed): (re)resolve in the background.
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

"""Keeping the registry in step with the mDNS services present on the LAN.

* resolved -> a :class:`~nexus.registry.Backend` with ``DiscoverySource.MDNS`` is added
  (or the existing one updated) and probed right away;
* removed -> status Unknown, probes paused, removed ``grace_period_seconds`` later unless
  the service comes back, in which case the *same* Backend object (id, counters, history)
  is kept and probed at once.

A backend from the config file or added by hand always wins: a service whose address is
one of theirs is never added, and a discovered backend that a static or manual one comes to
shadow is retired (:meth:`BackendTracker.reconcile`, run every few seconds, notices
backends added through the admin API). Same address is decided by
:mod:`nexus.discovery.hosts`.

No zeroconf here: this is plain bookkeeping over :class:`~nexus.discovery.advert.Advert`
values, driven by :class:`~nexus.discovery.service.Discovery`.
"""

from __future__ import annotations

import asyncio
import ipaddress

from nexus.config import DiscoveryConfig
from nexus.discovery.advert import METADATA_KEYS, Advert
from nexus.discovery.hosts import LOCAL_NAMES, EndpointKey, LocalHost
from nexus.discovery.logs import log
from nexus.discovery.records import instance_label
from nexus.health import HealthChecker
from nexus.registry import (
    MAX_NAME,
    Backend,
    BackendStatus,
    DiscoverySource,
    Registry,
    backend_id,
)


class BackendTracker:
    """The discovered backends, by lower-cased service name, and the rules that keep them."""

    def __init__(self, registry: Registry, config: DiscoveryConfig, health: HealthChecker) -> None:
        self.registry = registry
        self.config = config
        self.health = health
        self.local = LocalHost(frozenset(LOCAL_NAMES), frozenset())
        self._adverts: dict[str, Advert] = {}  # present and resolved, by lower-cased name
        self._backends: dict[str, Backend] = {}  # ours, by lower-cased service name
        self._lost: dict[str, asyncio.Task[None]] = {}  # grace timers, by service name
        self._dismissed: set[str] = set()  # removed by a person while still advertised
        self._skipped: dict[str, str] = {}  # why a service has no backend (logged once)
        self.allow_networks, self.allow_names = parse_allow(config.allow)

    # -- who may be discovered ----------------------------------------------------------

    def allowed(self, advert: Advert) -> bool:
        """Any device on the LAN can advertise, so ``discovery.allow`` may narrow it down to
        addresses, networks and host names (empty: everyone)."""
        if not self.allow_networks and not self.allow_names:
            return True
        if any(a in net for a in advert.addresses for net in self.allow_networks):
            return True
        host = advert.server.lower().rstrip(".")
        return host in self.allow_names or host.removesuffix(".local") in self.allow_names

    # -- whose endpoint is it -------------------------------------------------------------

    def _owner_of(self, keys: set[EndpointKey]) -> Backend | None:
        """A static or manual backend at one of these endpoints."""
        for backend in self.registry:
            if backend.discovery_source is DiscoverySource.MDNS:
                continue
            if self.local.url_key(backend.url) in keys:
                return backend
        return None

    def _url_keys(self, backend: Backend) -> set[EndpointKey]:
        """The endpoint a backend's URL names (none when the URL cannot be read)."""
        key = self.local.url_key(backend.url)
        return {key} if key is not None else set()

    def _ours(self, key: str) -> Backend | None:
        backend = self._backends.get(key)
        if backend is not None and self.registry.get_backend(backend.id) is not backend:
            # Removed behind our back (admin API / CLI): leave it gone while advertised.
            del self._backends[key]
            self.health.unwatch(backend.id)
            self._cancel_grace(key)
            owner = self._owner_of(self._url_keys(backend))
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

    def _twin(self, key: str, keys: set[EndpointKey]) -> str | None:
        """Another service of ours already standing for the same endpoint."""
        for other_key, backend in list(self._backends.items()):
            if other_key == key or self._ours(other_key) is None:
                continue
            advert = self._adverts.get(other_key)
            other_keys = advert.keys(self.local) if advert else set()
            if keys & (other_keys | self._url_keys(backend)):
                return other_key
        return None

    def _skip(self, key: str, reason: str) -> None:
        if self._skipped.get(key) != reason:
            self._skipped[key] = reason
            log.info("mDNS service %s not added: %s", self._adverts[key].name, reason)

    # -- a service is present -------------------------------------------------------------

    def apply(self, advert: Advert) -> None:
        """Make the registry reflect one present, resolved service."""
        key = advert.name.lower()
        if key in self._dismissed:
            return
        mine = self._ours(key)
        if not self.allowed(advert):
            if mine is not None:
                self._retire(key, mine, "not in discovery.allow")
            self._skip(key, f"{advert.server or 'its host'} is not in discovery.allow")
            return
        keys = advert.keys(self.local)
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
            self._adopt(key, advert, keys)
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

    def _adopt(self, key: str, advert: Advert, keys: set[EndpointKey]) -> None:
        """A service with no backend of ours yet: take over a lost twin's backend, defer to a
        present twin, or add a new backend."""
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
        backend.url = advert.url
        backend.type = advert.kind
        # Only our own keys: anything others put in the metadata stays.
        meta = advert.metadata()
        for stale in METADATA_KEYS - meta.keys():
            backend.metadata.pop(stale, None)
        backend.metadata.update(meta)

    def _unique_name(self, base: str) -> str:
        base = base[: MAX_NAME - 4]  # room for a "-n" suffix
        name, n = base, 1
        while self.registry.find(name) is not None or self.registry.get_backend(backend_id(name)):
            n += 1
            name = f"{base}-{n}"
        return name

    # -- a service is gone ----------------------------------------------------------------

    def _withdraw(self, key: str) -> None:
        """The service went away: forget what we knew of it and start its grace period."""
        self._dismissed.discard(key)
        self._skipped.pop(key, None)
        if self._adverts.pop(key, None) is not None or key in self._backends:
            self._lose(key)

    def _lose(self, key: str) -> None:
        backend = self._ours(key)
        if backend is None:
            return
        if key in self._lost:
            return
        # Another advert of the same server still present (e.g. both _ollama and _llm)?
        keys = self._url_keys(backend)
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

    # -- periodic sweep -------------------------------------------------------------------

    def reconcile(self) -> None:
        """Retire discovered backends a static/manual one now covers; add services that
        a removed static/manual backend used to cover."""
        for key in list(self._backends):
            if key in self._adverts:
                self.apply(self._adverts[key])
            else:
                backend = self._ours(key)
                if backend is not None:
                    owner = self._owner_of(self._url_keys(backend))
                    if owner is not None:
                        self._retire(key, backend, f"same address as backend {owner.name}")
        for key, advert in list(self._adverts.items()):
            if key not in self._backends and key not in self._dismissed:
                self.apply(advert)


def parse_allow(
    entries: list[str],
) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], set[str]]:
    """``discovery.allow`` as networks (an address is a /32 or /128) and host names."""
    networks = []
    names = set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip(".").removesuffix(".local"))
    return networks, names

"""mDNS discovery (F05): LLM servers on the LAN become backends, with no configuration.

One ``AsyncZeroconf`` browses the configured service types in the background
(:mod:`.service`); each service it reports is resolved into an :class:`Advert`
(:mod:`.advert`, read by the rules in :mod:`.records`) and the registry is brought in step
(:mod:`.tracker`): a resolved service becomes an mDNS backend, a removed one is dropped
after ``grace_period_seconds`` unless it comes back. A backend from the config file or
added by hand always wins, by address (:mod:`.hosts`).

If mDNS cannot run, discovery logs a single WARN line and stays off (:mod:`.logs`); static
backends are unaffected.

zeroconf is imported in this package only: it is imported only when discovery is enabled
(``from nexus.discovery import Discovery`` in :mod:`nexus.app`).
"""

from nexus.discovery.addresses import IPAddress, pick_address, url_host
from nexus.discovery.advert import METADATA_KEYS, Advert, advert_from_info
from nexus.discovery.hosts import LOCAL, LOCAL_NAMES, EndpointKey, LocalHost
from nexus.discovery.interfaces import default_interfaces, resolve_interfaces
from nexus.discovery.records import (
    NEEDS_TXT_HINT,
    backend_type,
    base_path,
    build_url,
    default_type,
    instance_label,
    normalize_service_type,
    parse_models,
    parse_txt,
)
from nexus.discovery.service import (
    INTERFACE_RESCAN_SECONDS,
    RECONCILE_SECONDS,
    RESOLVE_ATTEMPTS,
    RESOLVE_TIMEOUT_MS,
    START_TIMEOUT_SECONDS,
    Discovery,
)

__all__ = [
    "INTERFACE_RESCAN_SECONDS",
    "LOCAL",
    "LOCAL_NAMES",
    "METADATA_KEYS",
    "NEEDS_TXT_HINT",
    "RECONCILE_SECONDS",
    "RESOLVE_ATTEMPTS",
    "RESOLVE_TIMEOUT_MS",
    "START_TIMEOUT_SECONDS",
    "Advert",
    "Discovery",
    "EndpointKey",
    "IPAddress",
    "LocalHost",
    "advert_from_info",
    "backend_type",
    "base_path",
    "build_url",
    "default_interfaces",
    "default_type",
    "instance_label",
    "normalize_service_type",
    "parse_models",
    "parse_txt",
    "pick_address",
    "resolve_interfaces",
    "url_host",
]

"""What an mDNS advert says, as Nexus reads it: service types, TXT records, the backend
type, and the backend URL.

Pure functions (unit tested without a network). The URL rules live here because Nexus
appends ``/v1/...`` (or ``/api/...`` for Ollama) to a backend URL, so an advertised API
path has to be cut back to the server root.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from nexus.config import LOCAL_TYPES, normalize_choice
from nexus.discovery.addresses import IPAddress, url_host
from nexus.registry import safe_name

# Service types whose label is not a backend type and that carry no hint of their own:
# only adverts with a TXT ``type`` or ``api_path`` are taken from them (printers are not LLMs).
NEEDS_TXT_HINT = frozenset({"_http._tcp.local."})
_SERVICE_TYPE_RE = re.compile(r"^_[A-Za-z0-9-]{1,63}\._(tcp|udp)\.local\.$")


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
    return normalize_choice(label, LOCAL_TYPES) or "generic"


def backend_type(service_type: str, txt: Mapping[str, str]) -> str:
    hinted = txt.get("type", "")
    return (normalize_choice(hinted, LOCAL_TYPES) if hinted else None) or default_type(service_type)


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


def build_url(
    address: IPAddress | str, port: int, api_path: str = "", kind: str = "generic"
) -> str:
    if isinstance(address, str):
        address = ipaddress.ip_address(address)
    return f"http://{url_host(address)}:{port}{base_path(api_path, kind)}"


def instance_label(name: str, service_type: str) -> str:
    """``"GPU Box._ollama._tcp.local."`` -> ``"GPU-Box"`` (a readable backend name)."""
    suffix = "." + service_type
    label = name[: -len(suffix)] if name.lower().endswith(suffix.lower()) else name.split(".")[0]
    label = re.sub(r"\s+", "-", label.replace("\\032", " ").strip())
    # The name comes from any device on the LAN: made safe for headers, logs and metrics.
    return safe_name(label) if label else "mdns-backend"

"""Typed configuration: defaults < TOML file < ``NEXUS_*`` environment < CLI flags.

Every setting is a dataclass field whose ``metadata["help"]`` documents it; ``nexus config
init`` renders those help texts into the example file and a test checks none is missing.
Unknown keys and bad values stop start-up with one line naming the file, key and problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

LOCAL_TYPES = ("ollama", "vllm", "llamacpp", "exo", "lmstudio", "generic")
CLOUD_TYPES = ("openai", "anthropic", "google")
BACKEND_TYPES = (*LOCAL_TYPES[:-1], *CLOUD_TYPES, "generic")
# Where each cloud type lives unless a backend's url says otherwise (a proxy, a compatible
# service such as Groq or OpenRouter for "openai").
CLOUD_URLS = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
}
ZONES = ("restricted", "open")
OVERFLOW_MODES = ("block", "fresh-context")
HARD_LIMIT_ACTIONS = ("local-only", "queue", "reject")
STRATEGIES = ("smart", "round_robin", "priority_only", "random")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
LOG_FORMATS = ("pretty", "json")
DEFAULT_CONFIG_FILE = "nexus.toml"


class ConfigError(Exception):
    """A configuration problem, already phrased for a one-line message."""


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text (datasette style)."""
    if isinstance(default, list | dict):
        factory = default.copy
        return field(default_factory=factory, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = setting("0.0.0.0", "Address to listen on.")
    port: int = setting(8000, "Port to listen on.", min=0, max=65535)
    request_timeout_seconds: float = setting(
        300,
        "How long to wait for a backend's first byte (first event of a stream). "
        "Not a cap on a long, healthy generation.",
        min=0.001,
    )
    max_concurrent_requests: int = setting(
        1000, "In-flight proxied requests beyond which new ones get 503 + Retry-After.", min=1
    )
    connect_timeout_seconds: float = setting(
        5, "How long to wait for a TCP (and TLS) connection to a backend.", min=0.001
    )
    stream_idle_timeout_seconds: float = setting(
        60, "Longest silence between two stream chunks before the stream is ended.", min=0.001
    )
    max_request_bytes: int = setting(
        20 * 1024 * 1024, "Largest request body accepted (413 beyond).", min=1024
    )
    max_response_bytes: int = setting(
        128 * 1024 * 1024,
        "Largest answer body accepted from a backend, after decompression (a backend error "
        "beyond: a decompression bomb costs a 502, not the machine's memory). Streams are "
        "bounded per event instead.",
        min=1024,
    )
    max_stream_event_bytes: int = setting(
        4 * 1024 * 1024,
        "Largest single event of a backend's stream; a bigger one ends the stream with an "
        "error event.",
        min=1024,
    )
    allowed_hosts: list[str] = setting(
        [],
        "Host names (besides IP addresses, localhost and this machine's name) under which "
        "browsers may use the dashboard and the admin API. Guards against DNS rebinding.",
    )
    client_timeout_seconds: float = setting(
        30,
        "How long a client may take to send a request (head or body), and how long an idle "
        "keep-alive connection stays open. Bounds slow or stuck clients.",
        min=0.01,
    )
    shutdown_grace_seconds: float = setting(
        30, "On SIGTERM, how long in-flight requests and streams may take to finish.", min=0
    )


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    enabled: bool = setting(True, "Find backends on the LAN with mDNS.")
    service_types: list[str] = setting(
        ["_ollama._tcp.local", "_llm._tcp.local"], "mDNS service types to browse."
    )
    grace_period_seconds: float = setting(
        60, "How long a vanished mDNS backend is kept (status unknown) before removal.", min=0
    )
    interfaces: list[str] = setting(
        [], "Addresses (or interface names) zeroconf binds to; empty means all interfaces."
    )
    allow: list[str] = setting(
        [],
        "Who may be discovered: addresses, networks (CIDR, e.g. 192.168.1.0/24) or host "
        "names (e.g. gpu-box.local). Empty: any device on the LAN (discovered backends still "
        "rank below configured ones and never receive clients' credentials).",
    )


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    enabled: bool = setting(True, "Probe backends periodically.")
    interval_seconds: float = setting(30, "Seconds between two probes of one backend.", min=0.01)
    timeout_seconds: float = setting(5, "Time limit of one probe.", min=0.001)
    failure_threshold: int = setting(
        3, "Consecutive failures that turn a healthy backend unhealthy.", min=1
    )
    recovery_threshold: int = setting(
        2, "Consecutive successes that turn an unhealthy backend healthy.", min=1
    )
    cloud_interval_seconds: float = setting(
        300,
        "Seconds between two probes of a cloud backend (they only list models, which costs "
        "nothing, but there is no need to ask often).",
        min=0.01,
    )


@dataclass(frozen=True, slots=True)
class WeightsConfig:
    priority: float = setting(50, "Weight of the backend's priority in the smart score.", min=0)
    load: float = setting(30, "Weight of the in-flight request count in the smart score.", min=0)
    latency: float = setting(20, "Weight of the observed latency in the smart score.", min=0)


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    cross_zone_overflow: str = setting(
        "block",
        "When no restricted backend can serve a restricted request: block (503, the "
        "default) or fresh-context (an open backend answers, sent only the system message(s) "
        "and the last user message, never earlier turns or tool results).",
        choices=OVERFLOW_MODES,
    )


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    strategy: str = setting("smart", "How to pick among capable backends.", choices=STRATEGIES)
    max_retries: int = setting(
        2, "Other backends tried for one request after the first fails.", min=0
    )
    weights: WeightsConfig = setting(WeightsConfig(), "Weights of the smart strategy.")
    aliases: dict[str, str] = setting({}, 'Model name aliases, e.g. "gpt-4" = "llama3:70b".')
    fallbacks: dict[str, list[str]] = setting(
        {},
        "Models to try, in order, when a model has no healthy backend. A fallback of a lower "
        "tier than the requested model's is skipped.",
    )
    affinity: bool = setting(
        True,
        "Send a conversation's next turn to the backend that served its previous one while "
        "that backend is healthy and has room: it reuses the backend's prompt cache. A "
        "conversation in the restricted zone always sticks.",
    )
    affinity_ttl_seconds: float = setting(
        1800, "How long a conversation is remembered after its last turn.", min=1
    )
    affinity_max_conversations: int = setting(
        10000,
        "Conversations remembered at most (the least recently used are forgotten first). "
        "Only hashes are kept, never content.",
        min=1,
    )
    privacy: PrivacyConfig = setting(PrivacyConfig(), "Privacy zone rules.")


@dataclass(frozen=True, slots=True)
class PriceConfig:
    input: float = setting(0.0, "USD per million input (prompt) tokens.", min=0)
    output: float = setting(0.0, "USD per million output (completion) tokens.", min=0)
    cached_input: float = setting(
        -1.0, "USD per million cached input tokens (negative: the input price).", min=-1
    )


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    requests_per_minute: float = setting(
        0,
        "Requests this backend is sent per minute at most (a token bucket; 0: no limit). A "
        "backend out of tokens is skipped like a busy one.",
        min=0,
    )
    burst: int = setting(
        0,
        "Requests it may be sent at once after a quiet spell (the bucket's size; 0: the "
        "whole minute's requests_per_minute).",
        min=0,
    )


@dataclass(frozen=True, slots=True)
class CapabilityScores:
    reasoning: int = setting(0, "Reasoning score, 1 to 5 (0: not declared).", min=0, max=5)
    coding: int = setting(0, "Coding score, 1 to 5 (0: not declared).", min=0, max=5)
    vision: int = setting(0, "Vision score, 1 to 5 (0: not declared).", min=0, max=5)
    tools: int = setting(0, "Tool-use score, 1 to 5 (0: not declared).", min=0, max=5)
    context_window: int = setting(
        0, "Context window in tokens, as declared (0: not declared).", min=0
    )

    def declared(self) -> dict[str, int]:
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name))}


@dataclass(frozen=True, slots=True)
class BackendConfig:
    # A key in the file would end up in backups, repositories and support tickets.
    __refused__: ClassVar[Mapping[str, str]] = {
        "api_key": "keys are never read from the config file: put the key in an environment "
        "variable and name the variable with api_key_env"
    }

    name: str = setting("", "Display name; also the stable id of the backend.", required=True)
    url: str = setting(
        "",
        "Base URL, e.g. http://localhost:11434. Cloud types default to the provider's official "
        "URL (set it for a proxy or a compatible service).",
    )
    type: str = setting(
        "",
        "Backend kind (default generic). openai, anthropic and google are cloud types.",
        choices=BACKEND_TYPES,
    )
    backend_type: str = setting(
        "",
        "Synonym of type (as the feature spec spells it): give one or the other.",
        choices=BACKEND_TYPES,
    )
    priority: int = setting(50, "Routing priority, lower is preferred.", min=0, max=100)
    api_key_env: str = setting(
        "",
        "Environment variable holding this backend's API key (never the key itself); required "
        "for cloud types.",
    )
    models: list[str] = setting(
        [], "Expose only these of the backend's models (empty: every model it lists)."
    )
    zone: str = setting(
        "",
        "Privacy zone: restricted (a request for a model a restricted backend serves never "
        "leaves restricted backends) or open. Default: restricted for local types, open for "
        "cloud types.",
        choices=ZONES,
    )
    tier: int = setting(
        3,
        "Capability tier of this backend's models, 1 (weakest) to 5 (strongest). Failover, "
        "fallbacks and overflow never answer with a lower tier than the requested model's.",
        min=1,
        max=5,
    )
    model_tiers: dict[str, int] = setting(
        {}, 'Tiers of single models, overriding tier, e.g. "llama3:70b" = 4.', min=1, max=5
    )
    capabilities: CapabilityScores = setting(
        CapabilityScores(),
        "Declared capability scores, shown in listings (routing uses the tier and the "
        "detected capabilities).",
    )
    max_output_tokens: int = setting(
        4096,
        "max_tokens sent to an anthropic backend when the request sets none (Anthropic "
        "requires one).",
        min=1,
    )
    prices: dict[str, PriceConfig] = setting(
        {},
        'Prices for models the bundled price data lacks, e.g. "my-model" = {input = 0.5, '
        "output = 1.5} (USD per million tokens).",
    )
    context_length: int = setting(
        0,
        "Context length of this backend's models, overriding what its probe reports "
        "(llama-cpp-python reports none; Ollama reports the trained one). 0: as probed.",
        min=0,
    )
    max_concurrent: int = setting(
        0,
        "Requests this backend serves at once (its slots); beyond that it is busy and gets "
        "no more while another backend has room. 0: what it reports (llama.cpp /props "
        "total_slots), else unlimited.",
        min=0,
    )
    rate_limit: RateLimitConfig = setting(
        RateLimitConfig(), "Rate limit of this backend, e.g. a cloud API's requests per minute."
    )
    vram_gb: float = setting(
        0.0,
        "Memory this backend holds models in, in GB as GPUs count them (GiB): what no API "
        "reports. Fleet recommendations target only backends that have it. 0: unknown.",
        min=0,
    )
    tls_verify: bool = setting(
        True,
        "Check the backend's https certificate. Turn off only for a self-signed box you "
        "trust on your own network; better, name its CA with ca_file.",
    )
    ca_file: str = setting(
        "", "PEM file of the CA that signed this backend's https certificate (self-signed labs)."
    )


@dataclass(frozen=True, slots=True)
class QueuingConfig:
    enabled: bool = setting(
        True,
        "When every backend that could serve a request is at capacity (or out of its rate "
        "limit), the request waits its turn instead of piling onto a busy backend. Requests "
        "with no capable backend (unknown model, capability mismatch, all unhealthy) never "
        "wait.",
    )
    max_queue_size: int = setting(
        100,
        "Requests waiting at most; beyond, a newcomer of higher priority evicts the oldest "
        "waiting request of the lowest priority below it, else it gets 503.",
        min=1,
    )
    default_timeout_seconds: float = setting(
        30,
        "Longest wait before a 503 with Retry-After and an estimate (eta_seconds); the "
        "X-Nexus-Queue-Timeout request header may lower it.",
        min=0.01,
    )
    priority_header: str = setting(
        "X-Nexus-Priority",
        "Request header naming a request's priority: critical, high, normal (default) or low.",
    )


@dataclass(frozen=True, slots=True)
class TenantConfig:
    name: str = setting("", "Tenant name (letters, digits, . _ -).", required=True)
    key_env: str = setting(
        "",
        "Environment variable holding this tenant's API key (never the key itself).",
        required=True,
    )
    models: list[str] = setting(
        [], 'Models it may use, glob patterns (e.g. "llama3*"); empty: all.'
    )
    rpm: int = setting(0, "Requests per minute (0: no limit).", min=0)
    burst: int = setting(0, "Requests at once after a quiet spell (0: rpm).", min=0)
    tpm: int = setting(0, "Tokens per minute, prompt and completion (0: no limit).", min=0)
    monthly_tokens: int = setting(0, "Tokens per billing cycle (0: no quota).", min=0)
    monthly_cost: float = setting(0, "USD per billing cycle (0: no quota).", min=0)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = setting(
        False,
        "Require an API key (Authorization: Bearer, or x-api-key) on the API paths; each key "
        "belongs to a tenant with its models, rate limits and quotas. /health and /metrics "
        "stay open.",
    )
    tenants: list[TenantConfig] = setting(
        [],
        "Tenants declared here rather than with nexus tenants create (static set-ups); their "
        "keys come from environment variables.",
    )
    failed_attempts_per_minute: int = setting(
        10,
        "Wrong keys one client address may send per minute; beyond, it gets 429 without its "
        "key being looked at (brute force).",
        min=1,
    )


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = setting(
        "",
        "SQLite file of what Nexus keeps across restarts (cloud spend). Default: "
        "$XDG_DATA_HOME/nexus/nexus.db (~/.local/share/nexus/nexus.db). Created on first "
        "use, and only opened when a feature needs it (a budget, auth).",
    )
    url: str = setting(
        "",
        "Redis URL (redis://[:password@]host:6379/0, rediss:// for TLS) shared by several "
        "Nexus replicas: keys, rate limits, quotas, usage and spend then live there instead "
        "of the SQLite file. $NEXUS_STORAGE_URL "
        "sets it from the environment, which keeps a password out of the file.",
    )
    flush_interval_seconds: float = setting(
        1.0,
        "How often buffered writes (spend) reach the file: a crash (kill -9, power loss) "
        "loses at most this much; a clean shutdown loses nothing.",
        min=0.05,
        max=60,
    )


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    monthly_limit: float = setting(
        0,
        "Monthly spend limit on cloud backends, in USD (0: no budget). Spend is the cost of "
        "every cloud request, from the usage the provider reports.",
        min=0,
    )
    soft_limit_percent: float = setting(
        80,
        "From this share of the limit on, cloud backends serve only when no local backend "
        "can (a WARN line once per crossing).",
        min=1,
        max=100,
    )
    hard_limit_action: str = setting(
        "local-only",
        "At the limit: local-only (cloud excluded; nothing local -> 503), queue (requests only "
        "a cloud backend could serve wait in the queue for local capacity) or reject (429 "
        "budget_exceeded until the cycle resets).",
        choices=HARD_LIMIT_ACTIONS,
    )
    billing_cycle_day: int = setting(
        1,
        "Day of the month the spend resets, at 00:00 UTC (29-31 in a shorter month: its last day).",
        min=1,
        max=31,
    )


@dataclass(frozen=True, slots=True)
class FleetConfig:
    enabled: bool = setting(
        False,
        "Track demand per model and recommend models to load on idle backends before the "
        "demand arrives (suggestions in GET /admin/fleet/recommendations, nexus fleet and the "
        "log). Loading, unloading and migrating by hand work either way.",
    )
    analysis_interval_seconds: float = setting(
        3600,
        "Seconds between two analyses of demand and free memory (each may add "
        "recommendations; each expires at the next).",
        min=0.1,
    )
    min_requests: int = setting(
        10,
        "Least demand worth a recommendation: requests expected per hour in the coming hours.",
        min=1,
    )
    min_confidence: float = setting(
        0.5,
        "Least confidence worth a recommendation: the share of past days of the same kind "
        "(weekday or weekend) on which that demand showed up at that hour, 0 to 1.",
        min=0,
        max=1,
    )
    history_days: int = setting(
        14,
        "Days of demand history kept (request counts per model per hour; only models Nexus "
        "serves, so made-up names cost nothing).",
        min=1,
        max=90,
    )
    hot_window_seconds: float = setting(
        300,
        "A model that answered a request on a backend within this many seconds is hot there: "
        "a recommendation never unloads it.",
        min=0,
    )
    headroom_percent: float = setting(
        20,
        "Share of each backend's memory (vram_gb) a recommendation never fills, left for "
        "context caches and surprises.",
        min=0,
        max=90,
    )
    auto_apply: bool = setting(
        False,
        "Apply each new recommendation at once instead of waiting for nexus fleet apply.",
    )
    keep_alive: str = setting(
        "1h",
        "keep_alive sent with an Ollama load: how long the model stays loaded once idle, as "
        'Ollama reads it ("30m", "2h"; "-1m" keeps it loaded until unloaded).',
    )
    operation_timeout_seconds: float = setting(
        600,
        "Longest a load or unload may take before its operation fails (a large model from a "
        "slow disk takes minutes).",
        min=1,
    )
    pull_stall_seconds: float = setting(
        120,
        "A pull fails when no progress arrives for this long (there is no cap on a whole "
        "pull: a large download takes what it takes).",
        min=1,
    )
    drain_timeout_seconds: float = setting(
        60,
        "How long a migration waits for the old backend's requests to finish before it gives "
        "up and leaves the model loaded on both (it never cuts a request).",
        min=0,
    )
    max_operations: int = setting(
        100, "Finished operations kept for nexus operations (running ones are always kept).", min=1
    )


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = setting("info", "Log level.", choices=LOG_LEVELS)
    format: str = setting("pretty", "Log format.", choices=LOG_FORMATS)
    components: dict[str, str] = setting(
        {}, 'Per-component log levels, e.g. routing = "debug".', choices=LOG_LEVELS
    )
    log_content: bool = setting(
        False, "Log (truncated) message content at DEBUG. Off by default: privacy."
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = setting(ServerConfig(), "HTTP server.")
    discovery: DiscoveryConfig = setting(DiscoveryConfig(), "mDNS discovery.")
    health_check: HealthCheckConfig = setting(HealthCheckConfig(), "Backend health probes.")
    routing: RoutingConfig = setting(RoutingConfig(), "Routing.")
    backends: list[BackendConfig] = setting([], "Static backends.")
    queuing: QueuingConfig = setting(QueuingConfig(), "Request queue (F18).")
    budget: BudgetConfig = setting(BudgetConfig(), "Monthly spend limit on cloud backends (F14).")
    auth: AuthConfig = setting(AuthConfig(), "API keys, tenants, their limits and quotas (F21).")
    storage: StorageConfig = setting(StorageConfig(), "Where Nexus keeps state across restarts.")
    fleet: FleetConfig = setting(
        FleetConfig(), "Fleet intelligence and model lifecycle (F19, F20): see docs/fleet.md."
    )
    logging: LoggingConfig = setting(LoggingConfig(), "Logging.")
    source: str = field(default="", compare=False, metadata={"internal": True})

    @property
    def has_file(self) -> bool:
        return bool(self.source)


# -- loading -----------------------------------------------------------------------------

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # what may name a key's variable
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "NEXUS_PORT": ("server", "port"),
    "NEXUS_HOST": ("server", "host"),
    "NEXUS_LOG_LEVEL": ("logging", "level"),
    "NEXUS_DISCOVERY": ("discovery", "enabled"),
    "NEXUS_STORAGE_URL": ("storage", "url"),  # keeps a Redis password out of the file
}


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the config: defaults < file < environment < ``overrides`` (CLI flags).

    ``path`` None means ``NEXUS_CONFIG`` or ``./nexus.toml`` if present, else no file.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "NEXUS_CONFIG" in env
    file = Path(path if path is not None else env.get("NEXUS_CONFIG", DEFAULT_CONFIG_FILE))
    raw: dict[str, Any] = {}
    source = ""
    if file.is_file():
        source = str(file)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
    elif explicit:
        raise ConfigError(f"{file}: config file not found")
    used = [var for var in ENV_OVERRIDES if var in env]
    for var in used:
        section, key = ENV_OVERRIDES[var]
        raw.setdefault(section, {})[key] = _from_env(var, env[var])
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                raw.setdefault(section, {})[key] = value
    # Name every source a bad value may have come from: the file and the variables used.
    where = " + ".join([source or "config", *(f"${var}" for var in used)])
    config: Config = _build(Config, raw, where=where, prefix="")
    config = dataclasses.replace(config, source=source)
    config = dataclasses.replace(
        config,
        backends=[_settle(b, f"{where}: backends[{i}]") for i, b in enumerate(config.backends)],
    )
    validate(config)
    return config


def _settle(b: BackendConfig, where: str) -> BackendConfig:
    """The defaults that depend on the type: the type itself (``type`` or ``backend_type``),
    a cloud type's URL and the zone."""
    if b.type and b.backend_type:
        raise ConfigError(f"{where}: give type or backend_type, not both")
    kind = b.type or b.backend_type or "generic"
    cloud = kind in CLOUD_TYPES
    if cloud and not b.api_key_env:
        raise ConfigError(f"{where}.api_key_env: required for backends of type {kind}")
    if not b.url and not cloud:
        raise ConfigError(f"{where}.url: required")
    return dataclasses.replace(
        b,
        type=kind,
        backend_type="",
        url=b.url or CLOUD_URLS.get(kind, ""),
        zone=b.zone or ("open" if cloud else "restricted"),
    )


def _from_env(var: str, value: str) -> Any:
    if var == "NEXUS_DISCOVERY":
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"${var}: expected true or false, got {value!r}")
    if var == "NEXUS_PORT":
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"${var}: expected a port number, got {value!r}") from None
    return value


def _build(cls: type[Any], raw: Any, *, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key, why in getattr(cls, "__refused__", {}).items():
        if key in raw:
            raise ConfigError(f"{where}: {prefix}{key}: {why}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{where}: {prefix}{unknown[0]}: unknown key (known keys: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            if f.metadata.get("required"):
                raise ConfigError(f"{where}: {key}: required")
            continue
        values[name] = _convert(hints[name], raw[name], f.metadata, where=where, key=key)
    return cls(**values)


def _convert(tp: Any, value: Any, meta: Mapping[str, Any], *, where: str, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where=where, prefix=key + ".")
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list, got {_kind(value)}")
        return [
            _convert(item, v, meta, where=where, key=f"{key}[{i}]") for i, v in enumerate(value)
        ]
    if origin is dict:
        _, item = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a table, got {_kind(value)}")
        return {
            str(k): _convert(item, v, meta, where=where, key=f'{key}."{k}"')
            for k, v in value.items()
        }
    if origin in (Union, types.UnionType, Literal):
        raise TypeError(f"unsupported config type {tp}")  # pragma: no cover
    return _scalar(tp, value, meta, where=where, key=key)


def _scalar(tp: Any, value: Any, meta: Mapping[str, Any], *, where: str, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {_kind(value)}")
        return value
    if tp is int or tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key}: expected a number, got {_kind(value)}")
        if tp is int and not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected a whole number, got {value!r}")
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"{where}: {key}: must be at least {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: {key}: must be at most {hi}, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {_kind(value)}")
        choices = meta.get("choices")
        if choices:
            normal = normalize_choice(value, choices)
            if normal is None:
                raise ConfigError(f"{where}: {key}: {value!r} is not one of {', '.join(choices)}")
            return normal
        return value
    raise TypeError(f"unsupported config type {tp}")  # pragma: no cover


def normalize_choice(value: str, choices: tuple[str, ...]) -> str | None:
    """Case- and punctuation-insensitive match: "llama.cpp", "LlamaCpp" -> "llamacpp"."""

    def squash(text: str) -> str:
        return text.strip().lower().replace("-", "").replace("_", "").replace(".", "")

    wanted = squash(value)
    for choice in choices:
        if wanted == squash(choice):
            return choice
    if wanted == "warning":
        return "warn" if "warn" in choices else None
    return None


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "a table"
    )


def validate(config: Config) -> None:
    """Cross-field checks: unique backend names, URL schemes, alias cycles."""
    where = config.source or "config"
    from nexus.registry import name_problem, url_problem
    from nexus.routing.aliases import AliasCycleError, check_aliases

    seen: set[str] = set()
    for i, b in enumerate(config.backends):
        if (problem := name_problem(b.name)) is not None:
            raise ConfigError(f"{where}: backends[{i}].name: {problem}")
        if b.name in seen:
            raise ConfigError(f"{where}: backends[{i}].name: duplicate name {b.name!r}")
        seen.add(b.name)
        if (problem := url_problem(b.url)) is not None:
            raise ConfigError(f"{where}: backends[{i}].url: {problem}")
    for i, entry in enumerate(config.discovery.allow):
        if not allow_entry_valid(entry):
            raise ConfigError(
                f"{where}: discovery.allow[{i}]: {entry!r} is neither an address, a network "
                "(CIDR) nor a host name"
            )

    # Tenant names label metrics, reach logs and Redis keys: the API's rule holds here too.
    from nexus.tenants.model import name_problem as tenant_name_problem

    names: set[str] = set()
    for i, t in enumerate(config.auth.tenants):
        if (problem := tenant_name_problem(t.name)) is not None:
            raise ConfigError(f"{where}: auth.tenants[{i}].name: {problem}")
        if t.name in names:
            raise ConfigError(f"{where}: auth.tenants[{i}].name: duplicate name {t.name!r}")
        names.add(t.name)
        if not ENV_NAME.fullmatch(t.key_env):
            raise ConfigError(
                f"{where}: auth.tenants[{i}].key_env: {t.key_env[:40]!r} is not an environment "
                "variable name"
            )

    if config.budget.hard_limit_action == "queue" and not config.queuing.enabled:
        raise ConfigError(
            f'{where}: budget.hard_limit_action: "queue" needs the queue (queuing.enabled)'
        )
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", config.queuing.priority_header):
        raise ConfigError(
            f"{where}: queuing.priority_header: {config.queuing.priority_header!r} is not a "
            "header name (letters, digits and -)"
        )
    try:
        check_aliases(config.routing.aliases)
    except AliasCycleError as exc:
        raise ConfigError(f"{where}: routing.aliases: {exc}") from None


def allow_entry_valid(entry: str) -> bool:
    """A ``discovery.allow`` entry: an address, a network, or a host name."""
    import ipaddress
    import re

    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", entry) is not None


def iter_settings(
    cls: type[Any] = Config, prefix: str = ""
) -> typing.Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every documented setting as (dotted key, field), recursing into sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        yield prefix + f.name, f
        tp = hints[f.name]
        if get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            yield from iter_settings(get_args(tp)[0], prefix + f.name + "[].")
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from iter_settings(tp, prefix + f.name + ".")

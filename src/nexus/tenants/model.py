"""Tenants and their API keys (F21): who may call Nexus, for which models, how much.

A tenant is a person or an app of a small team. It holds keys (several, so one can be rotated
without downtime), may be limited to some models (glob patterns), and may have a rate limit
(requests and tokens per minute) and a monthly quota (tokens and/or USD). Names are chosen by
the admin, so they may label metrics; keys never appear anywhere but in the hands of their
holder: only a SHA-256 of each is stored.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from nexus.store import Sums

KEY_PREFIX = "nx-"
KEY_ID_CHARS = 8
KEY_PATTERN = re.compile(r"nx-([a-z0-9]{8})-([A-Za-z0-9_-]{43})")
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_KEY_CHARS = 256  # longer is not a key of ours: refused before hashing


@dataclass(slots=True)
class Tenant:
    name: str
    models: list[str] = field(default_factory=list)  # glob patterns; empty: every model
    rpm: int = 0  # requests per minute (0: no limit)
    burst: int = 0  # requests at once after a quiet spell (0: rpm)
    tpm: int = 0  # tokens per minute, prompt and completion (0: no limit)
    monthly_tokens: int = 0  # per billing cycle (0: no quota)
    monthly_cost: float = 0.0  # USD per billing cycle (0: no quota)
    created: float = 0.0
    static: bool = False  # declared in the config file: changed there, not through the API

    def allows(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ApiKey:
    id: str  # public: shown in listings, used to revoke
    tenant: str
    hash: str  # SHA-256 of the whole key, hex
    created: float
    expires: float | None = None  # Unix time (None: never)
    revoked: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["hash"]
        return data


def new_key() -> tuple[str, str]:
    """A fresh key and its public id: ``nx-<id>-<secret>``, 256 bits of randomness."""
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    return f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}", key_id


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id of a well-formed key (the lookup), else None."""
    match = KEY_PATTERN.fullmatch(key)
    return match.group(1) if match else None


def matches(key: str, record: ApiKey) -> bool:
    """Constant-time: the time taken says nothing about how much of the key was right."""
    return hmac.compare_digest(key_hash(key), record.hash)


def name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        return "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


@dataclass(slots=True)
class UsageRow(Sums):
    """One tenant's use of one model on one day (UTC), added up."""

    tenant: str
    day: str  # YYYY-MM-DD
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

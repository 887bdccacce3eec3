"""Tenants' pure logic (F21, F22): keys, model patterns, the fields an admin sets, the rate
limiter's decisions and headers, the service's authentication and quotas on a real SQLite
store, and the gate's rules for clients that tests cannot connect from (a LAN address)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nexus.api.gate import COOKIE, Gate
from nexus.asgi import Scope
from nexus.config import AuthConfig, TenantConfig
from nexus.errors import (
    Forbidden,
    InvalidRequest,
    ModelNotAllowed,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
)
from nexus.records import RequestRecord
from nexus.store.sqlite import SQLiteStore
from nexus.tenants import limits as limits_mod
from nexus.tenants.limits import LocalLimiter, duration
from nexus.tenants.model import (
    KEY_PATTERN,
    MAX_KEY_CHARS,
    ApiKey,
    Tenant,
    key_hash,
    key_id_of,
    matches,
    name_problem,
    new_key,
)
from nexus.tenants.service import Tenants, apply_fields, presented_key

TOKEN = "admin-token-0123456789abcdef"


def scope(
    path: str = "/v1/chat/completions",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    query: bytes = b"",
) -> Scope:
    return {
        "type": "http",
        "path": path,
        "headers": headers or [],
        "client": client,
        "query_string": query,
    }


# -- keys ----------------------------------------------------------------------------------


def test_new_keys_are_prefixed_random_and_found_by_their_id() -> None:
    made = [new_key() for _ in range(200)]
    assert len({key for key, _ in made}) == 200 and len({i for _, i in made}) == 200
    for key, key_id in made:
        assert key.startswith(f"nx-{key_id}-") and KEY_PATTERN.fullmatch(key)
        assert len(key) == len("nx-") + 8 + len("-") + 43  # 43 base64 characters: 256 bits
        assert key_id_of(key) == key_id
    assert key_id_of("sk-something") is None
    assert key_id_of(made[0][0] + "x") is None
    assert key_id_of(made[0][0][:-1]) is None


def test_only_a_hash_is_kept_and_compared() -> None:
    key, key_id = new_key()
    record = ApiKey(key_id, "team", key_hash(key), time.time())
    assert key not in record.hash and len(record.hash) == 64
    assert matches(key, record)
    assert not matches(key[:-1] + ("A" if key[-1] != "A" else "B"), record)
    assert "hash" not in record.to_dict() and key not in str(record.to_dict())


def test_model_patterns() -> None:
    assert Tenant("t").allows("anything")  # no patterns: every model
    tenant = Tenant("t", models=["llama3*", "qwen2:7b"])
    assert tenant.allows("llama3:8b") and tenant.allows("llama3") and tenant.allows("qwen2:7b")
    assert not tenant.allows("qwen2:72b") and not tenant.allows("Llama3:8b")
    assert not tenant.allows("my-llama3")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("team", True),
        ("a.b_c-1", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("-x", False),
        ("a b", False),
        ("a/b", False),
        ("ünï", False),
        (3, False),
    ],
)
def test_tenant_names(name: object, ok: bool) -> None:
    assert (name_problem(name) is None) is ok


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer nx-abc")], "nx-abc"),
        ([(b"authorization", b"bearer   nx-abc  ")], "nx-abc"),
        ([(b"x-api-key", b" nx-abc ")], "nx-abc"),
        ([(b"authorization", b"Basic dXNlcg=="), (b"x-api-key", b"nx-abc")], "nx-abc"),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"x-api-key", b"   ")], None),
        ([], None),
        ([(b"x-api-key", b"nx-\xff\xfe")], "nx-\xff\xfe"),  # latin-1, never a decode error
    ],
)
def test_presented_key(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert presented_key(scope(headers=headers)) == expected


def test_fields_an_admin_sets_are_checked() -> None:
    tenant = Tenant("t")
    apply_fields(tenant, {"models": ["a*"], "rpm": 60, "burst": 5, "tpm": 0, "monthly_cost": 2})
    assert tenant.models == ["a*"] and tenant.rpm == 60 and tenant.burst == 5
    assert tenant.monthly_cost == 2.0 and isinstance(tenant.monthly_cost, float)
    for fields, param in [
        ({"rpm": -1}, "rpm"),
        ({"rpm": 2.5}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"rpm": "60"}, "rpm"),
        ({"monthly_cost": -0.01}, "monthly_cost"),
        ({"models": "a*"}, "models"),
        ({"models": [""]}, "models"),
        ({"models": ["x" * 257]}, "models"),
        ({"models": [3]}, "models"),
        ({"models": ["a*"] * 257}, "models"),  # matched on every request: bounded
        ({"static": True}, "static"),
        ({"x" * 5000: 1}, "x" * 40),  # an unknown name is not echoed whole
    ]:
        with pytest.raises(InvalidRequest) as caught:
            apply_fields(Tenant("t"), fields)
        assert caught.value.param == param, fields


# -- the limiter ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """time.monotonic as the buckets (nexus.routing.limits) and the limiter read it."""
    fake = Clock()
    monkeypatch.setattr(limits_mod.time, "monotonic", fake)
    yield fake


def test_duration_is_written_as_openai_writes_it() -> None:
    assert duration(1) == b"1s" and duration(0.5) == b"0.5s" and duration(0) == b"0s"
    assert duration(-1) == b"0s" and duration(59.9994) == b"59.999s"
    assert duration(60) == b"1m0s" and duration(360) == b"6m0s" and duration(61.2) == b"1m2s"


def test_requests_per_minute_with_a_burst(clock: Clock) -> None:
    limiter = LocalLimiter()
    tenant = Tenant("t", rpm=60, burst=3)
    remaining = [limiter.acquire_now(tenant).remaining_requests for _ in range(3)]
    assert remaining == [2, 1, 0]
    refused = limiter.acquire_now(tenant)
    assert not refused.allowed and refused.exhausted == "requests"
    assert refused.retry_after == pytest.approx(1.0)  # one a second
    headers = dict(refused.headers())
    assert headers[b"x-ratelimit-limit-requests"] == b"60"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert b"x-ratelimit-limit-tokens" not in headers
    clock.now += 1.0
    allowed = limiter.acquire_now(tenant)
    assert allowed.allowed and allowed.remaining_requests == 0
    assert dict(allowed.headers())[b"x-ratelimit-reset-requests"] == b"3s"  # 3 to refill
    clock.now += 60
    assert limiter.acquire_now(tenant).remaining_requests == 2  # full again, never beyond


def test_burst_defaults_to_the_rate(clock: Clock) -> None:
    limiter = LocalLimiter()
    tenant = Tenant("t", rpm=5)
    assert sum(limiter.acquire_now(tenant).allowed for _ in range(8)) == 5


def test_tokens_per_minute_are_taken_once_known_and_debt_is_waited_out(clock: Clock) -> None:
    limiter = LocalLimiter()
    tenant = Tenant("t", tpm=600)  # 10 a second
    first = limiter.acquire_now(tenant)
    assert first.allowed and first.limit_tokens == 600 and first.remaining_tokens == 600
    assert first.limit_requests == 0 and b"x-ratelimit-limit-requests" not in dict(first.headers())
    limiter.spend_tokens(tenant, 650)  # one answer longer than the whole minute
    refused = limiter.acquire_now(tenant)
    assert not refused.allowed and refused.exhausted == "tokens"
    assert refused.retry_after == pytest.approx(5.1)  # from -50 to 1, at 10 a second
    clock.now += 5.2
    assert limiter.acquire_now(tenant).allowed
    limiter.spend_tokens(tenant, 0)
    limiter.spend_tokens(tenant, -5)  # nonsense from a backend takes nothing, gives nothing
    assert limiter.acquire_now(tenant).remaining_tokens == 2


def test_changed_limits_take_effect_and_tenants_are_apart(clock: Clock) -> None:
    limiter = LocalLimiter()
    one, two = Tenant("one", rpm=60, burst=1), Tenant("two", rpm=60, burst=1)
    assert limiter.acquire_now(one).allowed and not limiter.acquire_now(one).allowed
    assert limiter.acquire_now(two).allowed  # its own bucket
    one.burst = 2  # an admin's update: a new bucket with the new shape
    assert limiter.acquire_now(one).allowed
    # Its limits lifted (no rpm): no bucket any more, whatever the old one held.
    assert limiter.acquire_now(Tenant("one")).allowed and not limiter._buckets["one"][0]


# -- the service, on a real store ----------------------------------------------------------


class Moment:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    db = SQLiteStore(tmp_path / "nexus.db")
    await db.open()
    yield db
    await db.close()


def service(store: SQLiteStore, **config: Any) -> Tenants:
    return Tenants(
        AuthConfig(enabled=True, **config),
        store,
        flush_seconds=1.0,
        cycle_day=1,
        environ={"OPS_KEY": "ops-key-0123456789abcdef", "SHORT_KEY": "short"},
    )


def bearer(key: str, client: str = "127.0.0.1") -> Scope:
    return scope(headers=[(b"authorization", f"Bearer {key}".encode())], client=(client, 1))


async def test_authenticate_finds_the_tenant_of_a_live_key_only(store: SQLiteStore) -> None:
    tenants = service(store)
    await tenants.start()
    try:
        await tenants.create({"name": "team"})
        key, record = await tenants.create_key("team", None)
        expiring, expiring_record = await tenants.create_key("team", time.time() + 3600)
        assert tenants.authenticate(bearer(key)).name == "team"
        assert tenants.authenticate(bearer(expiring)).name == "team"
        tenants.by_id[expiring_record.id].expires = time.time() - 1
        for wrong in ("", key + "x", key.upper(), "nx-" + "a" * (MAX_KEY_CHARS + 1), expiring):
            with pytest.raises(Unauthorized):
                tenants.authenticate(bearer(wrong))
        await tenants.revoke(record.id)
        with pytest.raises(Unauthorized):
            tenants.authenticate(bearer(key))
        with pytest.raises(InvalidRequest):
            await tenants.create_key("team", time.time() - 1)
    finally:
        await tenants.stop()


async def test_wrong_keys_are_limited_per_address(store: SQLiteStore) -> None:
    tenants = service(store, failed_attempts_per_minute=2)
    await tenants.start()
    try:
        await tenants.create({"name": "team"})
        key, _ = await tenants.create_key("team", None)
        for _ in range(2):
            with pytest.raises(Unauthorized):
                tenants.authenticate(bearer("nx-wrong", "10.0.0.1"))
        with pytest.raises(RateLimited) as caught:
            tenants.authenticate(bearer(key, "10.0.0.1"))  # not even looked at
        assert caught.value.headers["Retry-After"] == "30"  # 2 a minute
        assert tenants.authenticate(bearer(key, "10.0.0.2")).name == "team"  # another address
    finally:
        await tenants.stop()


async def test_static_tenants_keys_come_from_the_environment(store: SQLiteStore) -> None:
    declared = [
        TenantConfig(name="ops", key_env="OPS_KEY", models=["llama3*"]),
        TenantConfig(name="weak", key_env="SHORT_KEY"),
        TenantConfig(name="unset", key_env="NOT_SET_ANYWHERE"),
    ]
    tenants = service(store, tenants=declared)
    await tenants.start()
    try:
        assert tenants.authenticate(bearer("ops-key-0123456789abcdef")).name == "ops"
        for wrong in ("short", "ops-key-0123456789abcdeF"):
            with pytest.raises(Unauthorized):
                tenants.authenticate(bearer(wrong))
        assert {k.tenant for k in tenants.static_keys.values()} == {"ops"}
        for change in (tenants.update("ops", {"rpm": 1}), tenants.delete("ops")):
            with pytest.raises(InvalidRequest) as caught:
                await change
            assert caught.value.code == "static_tenant"
    finally:
        await tenants.stop()


async def test_a_static_tenant_unchanged_in_the_config_is_not_written_at_each_start(
    store: SQLiteStore,
) -> None:
    """Every replica polls the store's version: a restart that wrote its static tenants again
    (a new ``created``) would make all of them reload."""

    async def started(rpm: int) -> Tenants:
        tenants = service(store, tenants=[TenantConfig(name="ops", key_env="OPS_KEY", rpm=rpm)])
        await tenants.start()
        await tenants.stop()
        return tenants

    first = await started(rpm=5)
    created, version = first.by_name["ops"].created, await store.version()
    again = await started(rpm=5)
    assert again.by_name["ops"] == first.by_name["ops"]
    assert await store.version() == version
    changed = await started(rpm=9)  # changed in the file: written, still created then
    assert changed.by_name["ops"].rpm == 9 and changed.by_name["ops"].created == created
    assert await store.version() > version


async def test_admit_checks_models_then_quota_then_rate(store: SQLiteStore) -> None:
    tenants = service(store)
    tenants.clock = Moment(datetime(2027, 3, 31, 23, 0, tzinfo=UTC))  # an hour to the reset
    await tenants.start()
    try:
        tenant = await tenants.create(
            {"name": "team", "models": ["llama3*"], "monthly_tokens": 100, "rpm": 60}
        )
        with pytest.raises(ModelNotAllowed):
            await tenants.admit(tenant, "qwen2:7b", "qwen2:7b")
        assert (await tenants.admit(tenant, "llama3:8b", "llama3:8b")).allowed
        # An alias the tenant may use, of a model it may not name: allowed by either name.
        assert (await tenants.admit(tenant, "llama3-alias", "qwen2:7b")).allowed
        served = RequestRecord("r", "chat", tenant="team", model="llama3:8b", backend="box")
        served.tokens_prompt, served.tokens_completion = 60, 40
        tenants.record(served)
        with pytest.raises(QuotaExceeded) as caught:
            await tenants.admit(tenant, "llama3:8b", "llama3:8b")
        assert caught.value.headers["Retry-After"] == "3600"
        assert "2027-04-01" in caught.value.message
        await tenants.flush()  # through the store and back
        with pytest.raises(QuotaExceeded):
            await tenants.admit(tenant, "llama3:8b", "llama3:8b")
        assert tenants.summary()["team"]["tokens"] == 100
        tenants.clock = Moment(datetime(2027, 4, 1, 0, 0, 1, tzinfo=UTC))
        assert tenants.summary()["team"]["tokens"] == 0
        assert (await tenants.admit(tenant, "llama3:8b", "llama3:8b")).allowed
    finally:
        await tenants.stop()


async def test_what_reached_no_backend_leaves_no_usage(store: SQLiteStore) -> None:
    tenants = service(store)
    await tenants.start()
    try:
        await tenants.create({"name": "team"})
        tenants.record(RequestRecord("r", "chat", tenant="team", model="made-up-1", status=404))
        tenants.record(RequestRecord("r", "chat", tenant="nobody", model="x", backend="box"))
        tenants.record(RequestRecord("r", "chat", tenant="", model="x", backend="box"))
        served = RequestRecord(
            "r", "chat", tenant="team", model="alias", routed_model="m", backend="box"
        )
        served.cost_usd = 0.25
        tenants.record(served)
        rows = await tenants.usage(None, "2000-01-01")
        assert [(r.tenant, r.model, r.requests, r.cost_usd) for r in rows] == [
            ("team", "m", 1, 0.25)
        ]
    finally:
        await tenants.stop()


# -- the gate ------------------------------------------------------------------------------


class FakeTenants:
    def authenticate(self, scope: Scope) -> Tenant:
        raise Unauthorized("no")


@pytest.fixture
def gate() -> Gate:
    return Gate(FakeTenants())  # type: ignore[arg-type]


LAN = ("192.168.1.20", 52000)


@pytest.mark.parametrize("path", ["/", "/dashboard.json", "/v1/stats", "/ws"])
def test_views_answer_loopback_and_the_admin_token_only(
    gate: Gate, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN", raising=False)
    assert gate.check(scope(path, client=("127.0.0.1", 1))) is None
    assert gate.check(scope(path, client=("::1", 1))) is None
    with pytest.raises(Forbidden):
        gate.check(scope(path, client=LAN))  # no token set: LAN never
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", TOKEN)
    with pytest.raises(Forbidden):
        gate.check(scope(path, client=LAN))
    cookie = [(b"cookie", f"theme=dark; {COOKIE}={TOKEN}".encode())]
    assert gate.check(scope(path, cookie, client=LAN)) is None
    assert gate.check(scope(path, [(b"authorization", f"Bearer {TOKEN}".encode())], LAN)) is None
    for wrong in (
        [(b"cookie", f"{COOKIE}={TOKEN}x".encode())],
        [(b"cookie", f"other={TOKEN}".encode())],
        [(b"cookie", f"{COOKIE}=".encode())],
        [(b"authorization", b"Bearer nx-some-api-key")],
    ):
        with pytest.raises(Forbidden):
            gate.check(scope(path, wrong, client=LAN))


def test_the_token_in_the_url_becomes_a_strict_cookie(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", TOKEN)
    answer = gate.check(scope("/", client=LAN, query=f"token={TOKEN}".encode()))
    assert answer is not None and answer.status == 303
    headers = dict(answer.headers)
    assert headers[b"location"] == b"/"  # the URL loses the token
    attributes = {p.strip() for p in headers[b"set-cookie"].decode().split(";")}
    assert {f"{COOKIE}={TOKEN}", "HttpOnly", "SameSite=Strict", "Path=/"} <= attributes
    with pytest.raises(Forbidden):
        gate.check(scope("/", client=LAN, query=b"token=wrong"))
    with pytest.raises(Forbidden):  # only the dashboard's page takes it from the URL
        gate.check(scope("/v1/stats", client=LAN, query=f"token={TOKEN}".encode()))
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN")
    with pytest.raises(Forbidden):  # no token set: nothing to present
        gate.check(scope("/", client=LAN, query=b"token="))


def test_api_paths_need_a_key_and_the_rest_is_open(gate: Gate) -> None:
    for path in ("/v1/models", "/v1/models/x", "/api/tags", "/api/show", "/v1/messages"):
        with pytest.raises(Unauthorized):
            gate.check(scope(path, client=LAN))
    for path in ("/health", "/metrics", "/admin/backends", "/static/app.js"):
        assert gate.check(scope(path, client=LAN)) is None

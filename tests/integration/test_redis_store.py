"""The state store's contract, held by both engines: the SQLite file and a real Redis.

Every caller (budget, tenants, fleet) is written against ``Store``; these tests make sure the
Redis engine answers exactly as the SQLite one does, including two writers adding at once,
and that the shared rate limiter keeps one limit for several replicas, falling back to this
replica's own buckets (quickly) when Redis is away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus.config import AuthConfig
from nexus.errors import InvalidRequest, NotFound
from nexus.records import RequestRecord
from nexus.store import ERRORS, SpendRow, Store, StoreUnavailable
from nexus.store.sqlite import SQLiteStore
from nexus.tenants.model import ApiKey, Tenant, UsageRow
from nexus.tenants.service import Tenants
from tests.redis_server import RedisServer, redis_server


@pytest.fixture
def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def make_store(kind: str, tmp_path: Path, redis_url: str) -> Store:
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "nexus.db")
    from nexus.store.redis import RedisStore

    return RedisStore(redis_url)


@pytest.fixture(params=["sqlite", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    """Two stores on the same data, as two processes (or replicas) would have."""
    if request.param == "redis":
        with redis_server(tmp_path / "redis") as server:
            async with _opened(request.param, tmp_path, server.url) as pair:
                yield pair
    else:
        async with _opened(request.param, tmp_path, "") as pair:
            yield pair


class _opened:
    def __init__(self, kind: str, tmp_path: Path, url: str) -> None:
        self.pair = [make_store(kind, tmp_path, url) for _ in range(2)]

    async def __aenter__(self) -> list[Store]:
        for store in self.pair:
            await store.open()
        return self.pair

    async def __aexit__(self, *exc: object) -> None:
        for store in self.pair:
            await store.close()


async def test_spend_adds_up_across_writers(stores: list[Store]) -> None:
    one, two = stores
    row = SpendRow("2027-01-01", "cloud", "gpt-4o", 1, 10, 20, 0.25)
    await asyncio.gather(*(s.add_spend([row]) for s in (one, two, one, two)))
    await one.add_spend([SpendRow("2027-01-01", "claude", "haiku", 2, 1, 1, 0.5)])
    await one.add_spend([SpendRow("2027-02-01", "cloud", "gpt-4o", 1, 1, 1, 9.0)])
    assert await two.spend("2027-01-01") == [
        SpendRow("2027-01-01", "claude", "haiku", 2, 1, 1, 0.5),
        SpendRow("2027-01-01", "cloud", "gpt-4o", 4, 40, 80, 1.0),
    ]
    assert await two.spend("2026-12-01") == []


async def test_tenants_and_keys_round_trip_and_bump_the_version(stores: list[Store]) -> None:
    one, two = stores
    start = await two.version()
    team = Tenant("team", ["llama*"], rpm=60, burst=5, tpm=1000, monthly_cost=5.0, created=1.0)
    await one.put_tenant(team)
    await one.put_tenant(Tenant("bot", created=2.0))
    await one.put_key(ApiKey("abcd1234", "team", "f" * 64, 10.0, expires=99.0))
    await one.put_key(ApiKey("zzzz9999", "bot", "e" * 64, 11.0))
    assert await two.version() > start
    tenants, keys = await two.tenants()
    assert tenants == [Tenant("bot", created=2.0), team]
    assert keys == [
        ApiKey("abcd1234", "team", "f" * 64, 10.0, expires=99.0),
        ApiKey("zzzz9999", "bot", "e" * 64, 11.0),
    ]
    before = await two.version()
    assert await one.revoke_key("abcd1234") is True
    assert await one.revoke_key("abcd1234") is False  # already revoked: no change
    assert await one.revoke_key("nope0000") is False
    assert await two.version() > before
    assert (await two.tenants())[1][0].revoked is True
    assert await one.delete_tenant("team") is True
    assert await one.delete_tenant("team") is False
    tenants, keys = await two.tenants()
    assert [t.name for t in tenants] == ["bot"] and [k.id for k in keys] == ["zzzz9999"]
    # A key made on one replica for a tenant another just deleted never comes to life (and
    # would not for a tenant of the same name created later).
    with pytest.raises(NotFound):
        await one.put_key(ApiKey("late0000", "team", "d" * 64, 12.0))
    await one.put_tenant(Tenant("team", created=3.0))
    assert [k.id for k in (await two.tenants())[1]] == ["zzzz9999"]


async def test_usage_adds_up_and_filters_by_tenant_and_day(stores: list[Store]) -> None:
    one, two = stores
    rows = [
        UsageRow("team", "2027-01-30", "m", 1, 10, 5, 0.01),
        UsageRow("team", "2027-02-01", "m", 1, 10, 5, 0.01),
        UsageRow("bot", "2027-02-02", "x", 3, 0, 0, 0.0),
    ]
    await asyncio.gather(one.add_usage(rows), two.add_usage(rows))
    assert await one.usage(None, "2027-02-01") == [
        UsageRow("bot", "2027-02-02", "x", 6, 0, 0, 0.0),
        UsageRow("team", "2027-02-01", "m", 2, 20, 10, pytest.approx(0.02)),  # type: ignore[arg-type]
    ]
    assert await two.usage("team", "2027-01-01") == [
        UsageRow("team", "2027-01-30", "m", 2, 20, 10, pytest.approx(0.02)),  # type: ignore[arg-type]
        UsageRow("team", "2027-02-01", "m", 2, 20, 10, pytest.approx(0.02)),  # type: ignore[arg-type]
    ]


async def test_creating_a_name_two_replicas_create_at_once_makes_one_tenant(
    stores: list[Store],
) -> None:
    """Each replica's memory says the name is free: the store decides, the loser gets the
    same 400 ``exists`` as a name this replica knew, and the winner's tenant is the one kept."""
    one, two = stores
    replicas = [Tenants(AuthConfig(enabled=True), s, flush_seconds=60, cycle_day=1) for s in stores]
    answers = await asyncio.gather(
        replicas[0].create({"name": "team", "rpm": 1}),
        replicas[1].create({"name": "team", "rpm": 2}),
        return_exceptions=True,
    )
    [kept] = [a for a in answers if isinstance(a, Tenant)]
    [refused] = [a for a in answers if isinstance(a, InvalidRequest)]
    assert refused.code == "exists" and refused.status == 400
    assert (await two.tenants())[0] == [kept]
    assert all(r.by_name == {"team": kept} for r in replicas)  # the loser reloaded
    version = await one.version()
    assert await two.create_tenant(Tenant("team", rpm=3)) is False  # nothing changed
    assert await one.version() == version and (await one.tenants())[0] == [kept]


class Moment:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


async def test_usage_totals_are_read_again_only_when_they_may_have_changed(
    stores: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    one = stores[0]
    clocks = [Moment(datetime(2027, 1, 31, 23, 0, tzinfo=UTC)) for _ in stores]
    a, b = (
        Tenants(AuthConfig(enabled=True), s, flush_seconds=60, cycle_day=1, clock=c)
        for s, c in zip(stores, clocks, strict=True)
    )
    await a.create({"name": "team"})
    await b.reload()
    reads: list[str] = []
    read = one.usage

    async def counted(tenant: str | None, since: str) -> list[UsageRow]:
        reads.append(since)
        return await read(tenant, since)

    monkeypatch.setattr(one, "usage", counted)
    versions: list[int] = []
    read_version = one.usage_version

    async def counted_version() -> int:
        versions.append(await read_version())
        return versions[-1]

    monkeypatch.setattr(one, "usage_version", counted_version)

    def served() -> RequestRecord:
        record = RequestRecord("r", "chat", tenant="team", model="m", backend="box")
        record.tokens_prompt, record.tokens_completion = 10, 5
        return record

    await a.flush()  # the first: read
    for _ in range(5):
        await a.flush()  # nothing written anywhere: the totals are not read again
    assert reads == ["2027-01-01"]
    a.record(served())
    await a.flush()  # this replica wrote
    await a.flush()
    assert reads == ["2027-01-01"] * 2 and a.summary()["team"]["tokens"] == 15
    b.record(served())
    await b.flush()  # another replica wrote: this one sees it at its next flush
    asked = len(versions)
    await a.flush()
    assert len(versions) == asked + 1  # the version once, then the totals
    await a.flush()
    assert reads == ["2027-01-01"] * 3 and a.summary()["team"]["tokens"] == 30
    # The other replica's clock passes midnight first and it writes usage of the new cycle;
    # then this one's: the new cycle's totals are read, although nobody wrote since.
    clocks[1].when = datetime(2027, 2, 1, 0, 0, tzinfo=UTC)
    b.record(served())
    await b.flush()
    await a.flush()
    assert len(reads) == 4
    clocks[0].when = datetime(2027, 2, 1, 0, 1, tzinfo=UTC)
    assert a.summary()["team"]["tokens"] == 0  # the reset is at once, before any read
    await a.flush()
    assert reads[-1] == "2027-02-01" and a.summary()["team"]["tokens"] == 15
    await a.flush()
    assert len(reads) == 5


async def test_redis_usage_days_expire_after_two_billing_cycles(redis: RedisServer) -> None:
    from nexus.store.redis import PREFIX, USAGE_KEEP_DAYS, RedisStore

    store = RedisStore(redis.url)
    await store.open()
    try:
        today = datetime.now(UTC).date()
        old = today - timedelta(days=USAGE_KEEP_DAYS + 1)
        await store.add_usage([UsageRow("team", d.isoformat(), "m", 1) for d in (today, old)])
        ttl = await store.client.command("TTL", f"{PREFIX}usage:{today.isoformat()}")
        # Kept at least the current and the previous billing cycle (62 days at the most).
        assert 62 * 86400 < (USAGE_KEEP_DAYS - 1) * 86400 <= ttl <= USAGE_KEEP_DAYS * 86400
        assert await store.client.command("EXISTS", f"{PREFIX}usage:{old.isoformat()}") == 0
        assert await store.usage(None, "2000-01-01") == [
            UsageRow("team", today.isoformat(), "m", 1)
        ]
        days = await store.client.command("SMEMBERS", f"{PREFIX}usage:days")
        assert days == [today.isoformat().encode()]  # the day gone is dropped from the index
    finally:
        await store.close()


async def test_demand_history_round_trips(stores: list[Store]) -> None:
    one, two = stores
    assert await two.load_demand() is None
    await one.save_demand({"models": {"llama3": [1, 2, 3]}})
    assert await two.load_demand() == {"models": {"llama3": [1, 2, 3]}}


async def test_redis_away_fails_fast_counted_and_comes_back(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from nexus.store.redis import RedisStore

    caplog.set_level(logging.INFO, logger="nexus.store")
    store = RedisStore(redis.url)
    await store.open()
    try:
        await store.add_spend([SpendRow("2027-01-01", "b", "m", 1, 1, 1, 1.0)])
        redis.kill()
        before = ERRORS["add_spend"]
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.add_spend([SpendRow("2027-01-01", "b", "m", 1, 1, 1, 1.0)])
        assert time.monotonic() - started < 2
        assert ERRORS["add_spend"] == before + 1
        for _ in range(3):  # retried by the loops every second: logged once all the same
            with pytest.raises(StoreUnavailable):
                await store.version()
        redis.start()  # same port, same append-only file
        await store.version()  # a read works: the write that failed has not yet
        assert store.down
        await store.add_spend([SpendRow("2027-01-01", "b", "m", 1, 1, 1, 1.0)])
        assert not store.down
        assert (await store.spend("2027-01-01"))[0].requests == 2
    finally:
        await store.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "nexus.store"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert "is unreachable (Redis: ConnectionLost)" in lines[0][1]
    assert lines[1][1].endswith("is reachable again")


async def test_open_names_an_unreachable_redis_in_one_line(tmp_path: Path) -> None:
    from nexus.errors import StartupError
    from nexus.store.redis import RedisStore
    from tests.redis_server import free_port

    store = RedisStore(f"redis://:secret-pw@127.0.0.1:{free_port()}/0")
    with pytest.raises(StartupError) as caught:
        await store.open()
    await store.close()
    message = str(caught.value)
    assert "cannot reach the state store at redis://***@127.0.0.1:" in message
    assert "secret-pw" not in message and "\n" not in message


# -- the shared rate limiter --------------------------------------------------------------------


async def test_replicas_share_one_request_bucket(redis: RedisServer) -> None:
    """Three limiters (three replicas) hammering one tenant admit burst + rate x time, not
    three times that."""
    from nexus.store.redis import RedisStore
    from nexus.store.redis_limits import RedisLimiter

    replicas = [RedisStore(redis.url) for _ in range(3)]
    for store in replicas:
        await store.open()
    try:
        limiters = [RedisLimiter(store) for store in replicas]
        tenant = Tenant("team", rpm=60, burst=5)  # one a second after a burst of 5
        started = time.monotonic()
        decisions = await asyncio.gather(*(limiters[i % 3].acquire(tenant) for i in range(60)))
        elapsed = time.monotonic() - started
        admitted = [d for d in decisions if d.allowed]
        assert 5 <= len(admitted) <= 5 + int(elapsed) + 1
        refused = next(d for d in decisions if not d.allowed)
        assert refused.exhausted == "requests" and 0 < refused.retry_after <= 1.0
        assert dict(refused.headers())[b"x-ratelimit-limit-requests"] == b"60"
        assert admitted[0].headers()  # remaining and reset on every admitted answer
    finally:
        for store in replicas:
            await store.close()


async def test_tokens_spent_on_one_replica_limit_the_others(redis: RedisServer) -> None:
    from nexus.store.redis import RedisStore
    from nexus.store.redis_limits import RedisLimiter

    one_store, two_store = RedisStore(redis.url), RedisStore(redis.url)
    await one_store.open()
    await two_store.open()
    try:
        one, two = RedisLimiter(one_store), RedisLimiter(two_store)
        tenant = Tenant("team", tpm=600)  # 10 tokens a second
        assert (await two.acquire(tenant)).allowed
        one.spend_tokens(tenant, 1200)  # a minute's worth and as much again: in debt
        await asyncio.gather(*one._sending)
        refused = await two.acquire(tenant)
        assert not refused.allowed and refused.exhausted == "tokens"
        assert 55 < refused.retry_after <= 61
    finally:
        await one_store.close()
        await two_store.close()


async def test_with_redis_away_each_replica_limits_alone_without_waiting(
    redis: RedisServer,
) -> None:
    from nexus.store.redis import RedisStore
    from nexus.store.redis_limits import RedisLimiter

    store = RedisStore(redis.url)
    await store.open()
    try:
        limiter = RedisLimiter(store)
        tenant = Tenant("team", rpm=60, burst=2)
        redis.kill()
        before = ERRORS["rate_limit"]
        started = time.monotonic()
        decisions = [await limiter.acquire(tenant) for _ in range(20)]
        assert time.monotonic() - started < 2  # one failed round trip, then local at once
        assert [d.allowed for d in decisions[:3]] == [True, True, False]
        assert ERRORS["rate_limit"] == before + 1
    finally:
        await store.close()


# -- the client itself ------------------------------------------------------------------------


async def test_the_client_authenticates_selects_its_db_and_shares_one_connection(
    tmp_path: Path,
) -> None:
    from nexus.store.resp import Client, ConnectionLost

    with redis_server(tmp_path / "redis", password="s3cret pass") as server:
        base = f"redis://:s3cret%20pass@127.0.0.1:{server.port}"
        one, other = Client(base + "/1", 2), Client(base + "/2", 2)
        try:
            replies = await asyncio.gather(*(one.command("INCR", "n") for _ in range(200)))
            assert sorted(replies) == list(range(1, 201))  # each caller got its own reply
            assert await other.command("GET", "n") is None  # another db
            assert await one.transaction([("SET", "a", "1"), ("INCRBYFLOAT", "a", 0.5)]) == [
                b"OK",
                b"1.5",
            ]
            assert await one.command("CLIENT", "INFO") and await one.command("DBSIZE") == 2
            wrong = Client(f"redis://:nope@127.0.0.1:{server.port}/0", 2)
            with pytest.raises(ConnectionLost, match=r"WRONGPASS|invalid"):
                await wrong.command("PING")
            await wrong.close()
        finally:
            await one.close()
            await other.close()


async def test_a_script_is_loaded_on_first_use_by_each_server(redis: RedisServer) -> None:
    from nexus.store.resp import Client, ReplyError

    client = Client(redis.url, 2)
    try:
        sha = client.script("return ARGV[1] .. KEYS[1]")
        assert await client.run(sha, ["k"], ["v"]) == b"vk"  # NOSCRIPT, then EVAL
        await client.command("SCRIPT", "FLUSH")
        assert await client.run(sha, ["k"], ["w"]) == b"wk"
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await client.command("SET", "s", "x")
            await client.command("HGET", "s", "f")
        assert await client.command("PING") == b"PONG"  # an error reply keeps the connection
    finally:
        await client.close()


async def test_a_reply_too_late_never_answers_the_next_caller() -> None:
    """A server that answers its first command after the timeout: that caller fails, the
    connection is dropped, and the next caller gets its own reply on a new one."""
    from nexus.store.resp import Client, ConnectionLost

    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        while await reader.readuntil(b"\r\n"):
            line = await reader.readuntil(b"\r\n")  # $len
            await reader.readexactly(int(line[1:]) + 2)  # the command's one argument
            if first:
                await asyncio.sleep(0.5)
                writer.write(b"+LATE\r\n")
            else:
                writer.write(b"+ON-TIME\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(f"redis://127.0.0.1:{port}", 0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="no reply within"):
            await client.command("PING")
        assert time.monotonic() - started < 0.45
        await asyncio.sleep(0.4)  # the late reply arrives (on the dropped connection)
        assert await client.command("PING") == b"ON-TIME"
        assert connections == 2
    finally:
        await client.close()
        server.close()

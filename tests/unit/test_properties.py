"""Property tests: smart-score monotonicity, alias resolution, SSE framing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.config import WeightsConfig
from nexus.registry import Backend
from nexus.routing.aliases import MAX_ALIAS_DEPTH, AliasCycleError, check_aliases, resolve
from nexus.routing.router import smart_score
from nexus.transport.sse import SSEParser, event_data

weights = st.builds(
    WeightsConfig,
    priority=st.floats(0, 100),
    load=st.floats(0, 100),
    latency=st.floats(0, 100),
)
priority = st.integers(0, 100)
pending = st.integers(0, 10_000)
latency = st.floats(0, 100_000, allow_nan=False)
error_rate = st.floats(0, 1)


def backend(p: int, n: int, ms: float) -> Backend:
    return Backend(name="b", url="http://x", priority=p, pending_requests=n, avg_latency_ms=ms)


@given(weights, priority, priority, pending, latency, error_rate)
def test_lower_priority_number_never_lowers_score(w, p1, p2, n, ms, err) -> None:  # type: ignore[no-untyped-def]
    lo, hi = sorted((p1, p2))
    assert smart_score(backend(lo, n, ms), w, err) >= smart_score(backend(hi, n, ms), w, err)


@given(weights, priority, pending, pending, latency, error_rate)
def test_fewer_pending_never_lowers_score(w, p, n1, n2, ms, err) -> None:  # type: ignore[no-untyped-def]
    lo, hi = sorted((n1, n2))
    assert smart_score(backend(p, lo, ms), w, err) >= smart_score(backend(p, hi, ms), w, err)


@given(weights, priority, pending, latency, latency, error_rate)
def test_lower_latency_never_lowers_score(w, p, n, ms1, ms2, err) -> None:  # type: ignore[no-untyped-def]
    lo, hi = sorted((ms1, ms2))
    assert smart_score(backend(p, n, lo), w, err) >= smart_score(backend(p, n, hi), w, err)


@given(weights, priority, pending, latency, error_rate, error_rate)
def test_fewer_errors_never_lowers_score(w, p, n, ms, e1, e2) -> None:  # type: ignore[no-untyped-def]
    lo, hi = sorted((e1, e2))
    assert smart_score(backend(p, n, ms), w, lo) >= smart_score(backend(p, n, ms), w, hi)


names = st.sampled_from([f"m{i}" for i in range(6)])


@given(st.dictionaries(names, names, max_size=6), names, st.sets(names))
def test_alias_resolution(aliases: dict[str, str], model: str, served: set[str]) -> None:
    try:
        check_aliases(aliases)
    except AliasCycleError:
        return  # rejected at config load: never reaches resolution
    result = resolve(model, aliases, served.__contains__)
    if model in served or model not in aliases:
        assert result == model  # direct match first, unaliased names untouched
        return
    chain, name = [], model
    while name in aliases and len(chain) < MAX_ALIAS_DEPTH:
        name = aliases[name]
        chain.append(name)
    assert result in chain
    served_in_chain = [c for c in chain if c in served]
    assert result == (served_in_chain[0] if served_in_chain else chain[-1])


def test_cycle_and_depth_messages_name_the_chain() -> None:
    for aliases, text in (
        ({"a": "b", "b": "c", "c": "a"}, "a -> b -> c -> a"),
        ({"a": "b", "b": "c", "c": "d", "d": "e"}, "a -> b -> c -> d -> e"),
    ):
        try:
            check_aliases(aliases)
        except AliasCycleError as exc:
            assert text in str(exc)
        else:
            raise AssertionError("not rejected")


payloads = st.lists(
    st.text(
        st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=40,
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300)
@given(
    payloads,
    st.sampled_from([b"\n", b"\r\n"]),
    st.lists(st.integers(1, 50), min_size=1, max_size=50),
)
def test_sse_parser_any_split_any_line_ending(
    texts: list[str], eol: bytes, cuts: list[int]
) -> None:
    stream = b"".join(b"data: " + t.encode() + eol + eol for t in texts)
    parser, events, pos, i = SSEParser(), [], 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        events += parser.feed(stream[pos : pos + size])
        pos, i = pos + size, i + 1
    assert parser.close() is None
    assert [event_data(e) for e in events] == [t.encode() for t in texts]


def test_sse_multiline_comments_and_unterminated_tail() -> None:
    parser = SSEParser()
    events = parser.feed(b": ping\n\nevent: x\ndata: a\ndata: b\n\ndata: tail")
    assert [event_data(e) for e in events] == [None, b"a\nb"]
    tail = parser.close()
    assert tail is not None and event_data(tail) == b"tail"

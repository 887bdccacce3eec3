"""Request headers as the stages read them: looked up in a table made once per request."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nexus.asgi.io import header, headers

NAMES = st.sampled_from([b"content-type", b"authorization", b"x-request-id", b"x-a", b"x-b"])
PAIRS = st.lists(st.tuples(NAMES, st.binary(max_size=8)), max_size=12)


@given(PAIRS, NAMES)
def test_a_lookup_answers_what_a_scan_for_the_first_of_the_name_would(
    pairs: list[tuple[bytes, bytes]], name: bytes
) -> None:
    scope = {"headers": pairs}
    first = next((value for key, value in pairs if key == name), None)
    expected = None if first is None else first.decode("latin-1")
    assert header(scope, name) == expected
    assert header(scope, name) == expected  # from the table kept in the scope
    assert headers(scope) is scope["nexus.headers"]

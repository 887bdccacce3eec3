"""Request inspection: token estimates for embeddings (each input must fit the model's
context on its own), and the 400s for bad fields and model names."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.errors import InvalidRequest
from nexus.routing.requirements import inspect_chat, inspect_embeddings


@pytest.mark.parametrize(
    ("data", "tokens"),
    [
        ("x" * 400, 100),
        (["a" * 40, "b" * 400, "c" * 4], 100),  # the longest input, not the sum
        (["short"] * 20_000, 1),
        ([1, 2, 3, 4, 5], 5),  # one input given as token ids
        ([[1, 2], [1, 2, 3, 4, 5, 6, 7]], 7),
    ],
)
def test_embedding_estimate_is_the_longest_input(data: Any, tokens: int) -> None:
    req = inspect_embeddings({"model": "e", "input": data})
    assert req.embeddings and req.estimated_tokens == tokens


@pytest.mark.parametrize("data", [[], "", None, ["a", 1], [["a"]], [True, False], {"a": 1}])
def test_malformed_embedding_input_is_a_400(data: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        inspect_embeddings({"model": "e", "input": data})
    assert info.value.param == "input"


MSGS = [{"role": "user", "content": "hi"}]
EXTRA = {f"vendor_option_{i}": i for i in range(20)}  # more keys than there are checked fields


@pytest.mark.parametrize("extra", [{}, EXTRA], ids=["few keys", "many keys"])
@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 0), ("temperature", "hot"), ("top_p", 1.5), ("stream", 1), ("n", True)],
)
def test_a_bad_optional_field_is_named_however_many_keys_the_body_has(
    extra: dict[str, Any], field: str, value: Any
) -> None:
    with pytest.raises(InvalidRequest) as info:
        inspect_chat({"model": "m", "messages": MSGS, **extra, field: value})
    assert info.value.param == field


@pytest.mark.parametrize("extra", [{}, EXTRA], ids=["few keys", "many keys"])
def test_good_and_null_optional_fields_pass(extra: dict[str, Any]) -> None:
    body = {"model": "m", "messages": MSGS, **extra, "max_tokens": 9, "temperature": None}
    assert inspect_chat(body).max_tokens == 9


@pytest.mark.parametrize("bad", [["m"], {"m": 1}, 5, "", "  ", "a\nb", "x" * 257])
def test_a_bad_model_name_is_refused_also_after_good_names_were_seen(bad: Any) -> None:
    for _ in range(2):  # the second time from the names found valid
        assert inspect_chat({"model": "m", "messages": MSGS}).model == "m"
    with pytest.raises(InvalidRequest) as info:
        inspect_chat({"model": bad, "messages": MSGS})
    assert info.value.param == "model"

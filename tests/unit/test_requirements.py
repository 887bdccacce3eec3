"""Token estimates for embeddings: each input must fit the model's context on its own."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.errors import InvalidRequest
from nexus.routing.requirements import inspect_embeddings


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

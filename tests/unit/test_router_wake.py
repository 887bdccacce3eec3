"""The queue's wake-up time from the router: never 0 while a rate-limited backend is what
keeps a request waiting (a 0 sets no timer, and nothing else would wake the waiter)."""

from __future__ import annotations

import pytest

from nexus.config import RoutingConfig
from nexus.registry import Backend, BackendStatus, Model, Registry
from nexus.routing.requirements import inspect_chat
from nexus.routing.router import Busy, Router


class DueBucket:
    """A bucket caught at the instant its token comes due: the router's first look finds it
    empty, its second (for the wait) finds the wait over."""

    def ready(self, now: float) -> bool:
        return False

    def wait_seconds(self, now: float) -> float:
        return 0.0

    def available(self, now: float) -> float:
        return 0.0


def router_with(*backends: Backend) -> Router:
    registry = Registry()
    for backend in backends:
        registry.add_backend(backend)
        registry.update_models(backend.id, [Model(id="m")])
        registry.update_status(backend.id, BackendStatus.HEALTHY)
    return Router(registry, RoutingConfig(), queueing=True)


def busy_of(router: Router) -> Busy:
    req = inspect_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    plan = router.plan("m", req)
    with pytest.raises(Busy) as caught:
        router.select(plan, req, attempts_per_model=3)
    return caught.value


def test_a_token_that_came_due_still_wakes_the_queue() -> None:
    limited = Backend(name="a", url="http://10.0.0.1:8000", type="vllm", limiter=DueBucket())  # type: ignore[arg-type]
    assert busy_of(router_with(limited)).retry_after > 0


def test_a_limited_backend_next_to_a_full_one_sets_the_wake_up() -> None:
    limited = Backend(name="a", url="http://10.0.0.1:8000", type="vllm", limiter=DueBucket())  # type: ignore[arg-type]
    full = Backend(name="b", url="http://10.0.0.2:8000", type="vllm", max_concurrent=1)
    full.pending_requests = 1
    busy = busy_of(router_with(limited, full))
    assert busy.retry_after > 0 and {b.name for b in busy.backends} == {"a", "b"}


def test_only_full_backends_wait_for_a_request_to_end() -> None:
    full = Backend(name="b", url="http://10.0.0.2:8000", type="vllm", max_concurrent=1)
    full.pending_requests = 1
    assert busy_of(router_with(full)).retry_after == 0.0


def test_a_full_backend_with_tokens_left_sets_no_timer() -> None:
    """At capacity but not out of tokens: the end of a request wakes the queue; a timer
    would only spin (every millisecond, each waiter asking the router again)."""
    from nexus.routing.limits import TokenBucket

    full = Backend(name="b", url="http://10.0.0.2:8000", type="vllm", max_concurrent=1)
    full.limiter = TokenBucket(600)
    full.pending_requests = 1
    assert busy_of(router_with(full)).retry_after == 0.0

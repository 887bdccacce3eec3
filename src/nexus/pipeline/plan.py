"""Plan: what the request needs and which models may serve it, in order.

The body is parsed once; the requirements (model, token estimate, vision, tools, JSON mode,
stream) are derived from the parsed object, and the router turns the requested model into
the ordered list of models to try (aliases, then the fallback chain), with the zone and
tier every answer must keep. The client's routing headers (``X-Nexus-Strict``,
``X-Nexus-Flexible``, ``X-Nexus-Session``, the priority and ``X-Nexus-Queue-Timeout``) are
read here. No I/O.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from nexus import logs, tokens
from nexus.asgi import Scope
from nexus.asgi.io import headers
from nexus.config import QueuingConfig
from nexus.errors import InvalidRequest
from nexus.pipeline.exchange import Exchange
from nexus.pipeline.inbound import Inbound, NativeOnly
from nexus.pipeline.wait import PRIORITIES
from nexus.routing.affinity import conversation_key
from nexus.routing.requirements import Requirements
from nexus.routing.router import FLEXIBLE, STRICT, Router

MODE_HEADERS = {b"x-nexus-strict": STRICT, b"x-nexus-flexible": FLEXIBLE}
QUEUE_TIMEOUT_HEADER = b"x-nexus-queue-timeout"
SESSION_HEADER = b"x-nexus-session"


def parse(raw: bytes) -> Any:
    if not raw or raw.isspace():  # (strip() would copy a body of any size)
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


class Planner:
    def __init__(
        self, router: Router, log_content: bool, queuing: QueuingConfig | None = None
    ) -> None:
        self.router = router
        self.log_content = log_content
        # The queue's headers are read only when there is a queue.
        self.priority_header = (
            queuing.priority_header.lower().encode() if queuing and queuing.enabled else None
        )

    def plan(self, ex: Exchange) -> None:
        body = parse(ex.raw)
        if self.log_content:
            logs.log_content(ex.record.request_id, body)
        inbound = ex.endpoint.inbound
        if inbound is None:
            req = ex.req = ex.endpoint.inspect(body)
            ex.body = body
        else:
            req = ex.req = self._translate(ex, inbound, body)
        record = ex.record
        record.model = req.model
        record.stream = req.stream
        mode, session = routing_headers(ex.scope, ex, self.priority_header)
        plan = ex.plan = self.router.plan(req.model, req, mode)
        if self.router.budget is not None and req.is_chat:
            count_prompt(ex, self.router)
        if plan.sticky:
            plan.conversation, plan.continued = conversation_key(plan.models[0], ex.body, session)

    @staticmethod
    def _translate(ex: Exchange, inbound: Inbound, body: Any) -> Requirements:
        """A foreign API's request: translated to OpenAI's, which routing and every
        non-native backend read; when only a native backend can serve it, only the model."""
        ex.client_body = body
        ex.client_raw = ex.raw
        try:
            openai = inbound.translate(body)
        except NativeOnly as exc:
            ex.native_only = exc
            req = inbound.requirements(body)
            req.only_type = inbound.native
            return req
        ex.body = openai
        ex.raw = orjson.dumps(openai)
        return ex.endpoint.inspect(openai)


def count_prompt(ex: Exchange, router: Router) -> None:
    """With a budget, a chat a cloud backend may serve gets a prompt counter: each cloud
    backend's cost estimate (the budget's check, only when a cheap upper bound would not
    fit; the fallback cost of a stream cut before its usage came) counts it on demand, with
    that provider's tokenizer. Local-only traffic is never tokenized."""
    plan = ex.plan
    assert plan is not None
    registry = router.registry
    for model in plan.models:
        if any(backend.cloud for backend in registry.get_backends_for_model(model)):
            ex.requirements.prompt_count = tokens.PromptCount(ex.body)
            return


def routing_headers(
    scope: Scope, ex: Exchange | None = None, priority_header: bytes | None = None
) -> tuple[str, str | None]:
    """The client's routing mode ("", "strict" or "flexible") and session name; the
    queue's priority and timeout go on ``ex``. A mode header says true or false; anything
    else, or both modes at once, is the client's mistake and a 400 naming the header (as is
    an unknown priority or a timeout that is not a number)."""
    sent = headers(scope)
    if priority_header is not None and ex is not None:
        if (value := sent.get(priority_header)) is not None:
            ex.priority = priority(priority_header, value)
        if (value := sent.get(QUEUE_TIMEOUT_HEADER)) is not None:
            ex.queue_timeout = seconds(QUEUE_TIMEOUT_HEADER, value)
    mode = ""
    for name, meaning in MODE_HEADERS.items():
        if (value := sent.get(name)) is None:
            continue
        wanted = value.decode("latin-1").strip().lower()
        if wanted not in ("true", "false"):
            raise invalid_header(name, "must be true or false", value)
        if wanted == "true":
            if mode:
                other = "X-Nexus-Strict" if mode == STRICT else "X-Nexus-Flexible"
                raise invalid_header(name, f"and {other} cannot both be true")
            mode = meaning
    session = sent.get(SESSION_HEADER)
    return mode, None if session is None else session.decode("latin-1")


def priority(name: bytes, value: bytes) -> int:
    wanted = value.decode("latin-1").strip().lower()
    if wanted not in PRIORITIES:
        raise invalid_header(name, f"must be one of {', '.join(PRIORITIES)}", value)
    return PRIORITIES.index(wanted)


def seconds(name: bytes, value: bytes) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number > 0 or math.isinf(number):
        raise invalid_header(name, "must be a positive number of seconds", value)
    return number


def invalid_header(name: bytes, rule: str, value: bytes | None = None) -> InvalidRequest:
    """A 400 naming the client's header and what it got wrong (its value, cut short)."""
    title = name.decode().title()
    got = "" if value is None else f", got {value[:40].decode('latin-1')!r}"
    return InvalidRequest(f"header {title} {rule}{got}", param=title, code="invalid_header")

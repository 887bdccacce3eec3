"""Plan: what the request needs and which models may serve it, in order.

The body is parsed once; the requirements (model, token estimate, vision, tools, JSON mode,
stream) are derived from the parsed object, and the router turns the requested model into
the ordered list of models to try (aliases, then the fallback chain), with the zone and
tier every answer must keep. The client's routing headers (``X-Nexus-Strict``,
``X-Nexus-Flexible``, ``X-Nexus-Session``) are read here. No I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from nexus import logs
from nexus.asgi import Scope
from nexus.errors import InvalidRequest
from nexus.pipeline.exchange import Exchange
from nexus.pipeline.inbound import Inbound, NativeOnly
from nexus.routing.affinity import conversation_key
from nexus.routing.requirements import Requirements
from nexus.routing.router import FLEXIBLE, STRICT, Router

MODE_HEADERS = {b"x-nexus-strict": STRICT, b"x-nexus-flexible": FLEXIBLE}
SESSION_HEADER = b"x-nexus-session"


def parse(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


class Planner:
    def __init__(self, router: Router, log_content: bool) -> None:
        self.router = router
        self.log_content = log_content

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
        mode, session = routing_headers(ex.scope)
        plan = ex.plan = self.router.plan(req.model, req, mode)
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


def routing_headers(scope: Scope) -> tuple[str, str | None]:
    """The client's routing mode ("", "strict" or "flexible") and session name, in one
    pass over the headers. A mode header says true or false; anything else, or both modes
    at once, is the client's mistake and a 400 naming the header."""
    mode, session = "", None
    for name, value in scope["headers"]:
        if name in MODE_HEADERS:
            wanted = value.decode("latin-1").strip().lower()
            title = name.decode().title()
            if wanted not in ("true", "false"):
                raise InvalidRequest(
                    f"header {title} must be true or false, got {value[:40].decode('latin-1')!r}",
                    param=title,
                    code="invalid_header",
                )
            if wanted == "true":
                if mode:
                    raise InvalidRequest(
                        "headers X-Nexus-Strict and X-Nexus-Flexible cannot both be true",
                        param=title,
                        code="invalid_header",
                    )
                mode = MODE_HEADERS[name]
        elif name == SESSION_HEADER:
            session = value.decode("latin-1")
    return mode, session

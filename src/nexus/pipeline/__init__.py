"""The request pipeline: every proxied request goes through the same five stages.

::

    admit    draining, overload, body type; the tenant's key (auth on)
    plan     parse the body once, requirements, aliases and fallbacks -> the models to try;
             then the tenant's models, quota and rate limit (auth on)
    wait     the queue, when every capable backend is busy (entered by forward, for each
             attempt whose backends are all full: a slot reserved, or a 503 with an ETA)
    forward  the backend call: transport, failover, stream relay
    record   the one owner of the outcome: status and error written, answer sent, sinks fed

A stage either returns or raises a :class:`nexus.errors.NexusError`; ``Pipeline.handle``
catches what any stage raised, and ``record.settle`` turns it into the record and the
answer. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging

from nexus.asgi import Headers, Receive, Scope, Send
from nexus.asgi.io import (
    body_now,
    error_headers,
    read_body,
    respond,
    respond_error,
    send_whole,
    whole_head,
)
from nexus.errors import BackendError, ClientGone, ModelNotFound, NexusError, ShuttingDown
from nexus.pipeline.admit import admit
from nexus.pipeline.exchange import Endpoint, Exchange
from nexus.pipeline.forward import Forwarder
from nexus.pipeline.inbound import client_reply
from nexus.pipeline.plan import Planner
from nexus.pipeline.record import Outcome, Reply, Streamed, settle
from nexus.records import RequestRecord, request_id
from nexus.state import AppState
from nexus.transport.sse import DONE, frame

__all__ = ["Endpoint", "Pipeline"]
log = logging.getLogger("nexus")


class Pipeline:
    def __init__(self, state: AppState, planner: Planner, forwarder: Forwarder) -> None:
        self.state = state
        self.planner = planner
        self.forwarder = forwarder
        server = state.config.server
        self.max_body = server.max_request_bytes
        self.body_seconds = server.client_timeout_seconds

    async def handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        record = RequestRecord(request_id(scope), endpoint.name)
        ex = Exchange(scope, receive, send, endpoint, record)
        extensions = scope.get("extensions")
        link = ex.link = extensions.get("nexus.client") if extensions else None
        task = asyncio.current_task()
        assert task is not None
        state.in_flight += 1
        state.requests.add(task)
        outcome: Outcome | None = None
        try:
            # A client that leaves cancels its request at once: the backend stops generating
            # for nobody (under uvicorn, NexusProtocol tells; elsewhere nothing does).
            if link is not None:
                link.on_gone = task.cancel
            try:
                outcome = await self._run(ex)
            except NexusError as exc:
                outcome = exc
            except Exception:
                # A bug of ours, not the client's: a 500 in OpenAI's shape, and the
                # traceback in our log (never in the answer).
                log.exception("unhandled error serving %s", endpoint.path)
                outcome = NexusError("internal error in Nexus", code="internal_error")
            except asyncio.CancelledError:
                if link is not None and link.gone:
                    task.uncancel()
                    outcome = ClientGone("client disconnected")
                elif state.cutting:
                    task.uncancel()
                    outcome = ShuttingDown("Nexus shut down before this request finished")
                else:
                    raise
            finally:
                if link is not None:
                    link.on_gone = None
            if isinstance(outcome, Reply):
                # Written at once through the link when it can: no coroutine on the way, as
                # for almost every answer.
                status, head, body = self._reply(ex, outcome)
                if link is None or not link.answer(status, head, body):
                    await send_whole(send, status, head, body)
            else:
                await self._error_or_end(ex, outcome)
        finally:
            settle(record, ClientGone("request cancelled") if outcome is None else outcome)
            state.recorder.finish(record)
            state.requests.discard(task)
            state.in_flight -= 1

    async def _run(self, ex: Exchange) -> Reply | Streamed:
        admit(self.state, ex)
        tenants = self.state.tenants
        if tenants is not None:  # who, before reading a body a stranger sends
            ex.tenant = tenants.authenticate(ex.scope)
            ex.record.tenant = ex.tenant.name
        raw = body_now(ex.scope, self.max_body, ex.link)  # (no coroutine when all is here)
        if raw is None:
            raw = await read_body(ex.scope, ex.receive, self.max_body, self.body_seconds, ex.link)
        ex.raw = raw
        self.planner.plan(ex)
        if ex.tenant is not None:
            assert tenants is not None and ex.plan is not None
            ex.limits = await tenants.admit(ex.tenant, ex.requirements.model, ex.plan.models[0])
            ex.plan.restrict(ex.tenant.allows)
        try:
            return await self.forwarder.forward(ex)
        except NexusError as exc:
            only = ex.native_only
            if only is None or isinstance(exc, BackendError | ModelNotFound):
                raise
            # No backend speaking the client's API serves the model: what it asked cannot be
            # done elsewhere (or, for a load request, there is nothing to load).
            if only.answer is not None:
                return Reply(200, only.answer, native=True)
            raise only from None

    @staticmethod
    def _reply(ex: Exchange, reply: Reply) -> tuple[int, Headers, bytes]:
        """A reply's status, head and body, in the client's own API."""
        inbound = ex.endpoint.inbound
        if inbound is not None and not reply.native:
            reply = client_reply(ex, inbound, reply)
        return reply.status, whole_head(reply.body, reply.headers, reply.ctype), reply.body

    async def _error_or_end(self, ex: Exchange, outcome: Streamed | NexusError) -> None:
        """An error answered before the response began, or the end of a relayed stream
        (with the error that cut it, in-band)."""
        send = ex.send
        inbound = ex.endpoint.inbound
        error = outcome.error if isinstance(outcome, Streamed) else outcome
        if isinstance(error, ClientGone):
            return  # nobody to tell
        rid = ex.record.request_id
        if not ex.started:
            assert error is not None
            if ex.limits is not None:
                for name, value in ex.limits.headers():
                    error.headers.setdefault(name.decode(), value.decode())
            if self.state.budget is not None:  # on every answer while a budget is set
                for name, value in self.state.budget.headers():
                    error.headers[name.decode()] = value.decode()
            if inbound is None:
                await respond_error(send, error, rid, ex.link)
            else:
                status, body = inbound.status(error), inbound.error(error)
                await respond(send, status, body, error_headers(error, rid), link=ex.link)
            return
        # The client has a 200 and part of a stream: the error goes in-band, then the end
        # (OpenAI's [DONE], so that every client's read loop ends where the error says why).
        if error is None:
            tail = b""
        elif inbound is None:
            tail = frame(error.body(rid)) + frame(DONE)
        else:
            tail = inbound.stream_error(error)
        try:
            async with asyncio.timeout(1):
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except TimeoutError:
            pass  # it stopped reading: uvicorn closes the connection when we return

"""``GET /health``, ``/v1/models``, ``/v1/stats`` and ``/metrics``: what the server sees."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from nexus.asgi.routes import Request, Response, Router
from nexus.errors import ModelNotFound
from nexus.registry import Backend, DiscoverySource, Model, Registry
from nexus.routing import privacy
from nexus.routing.aliases import resolve as resolve_alias
from nexus.state import AppState
from nexus.tenants.model import Tenant

TENANT = "nexus.tenant"  # where the gate (nexus.api.gate) leaves the caller's tenant

CAPABILITIES = ("chat", "vision", "tools", "json_mode", "embeddings")


def health_summary(registry: Registry, uptime: float) -> dict[str, Any]:
    backends = registry.get_all_backends()
    healthy = sum(1 for b in backends if b.routable)
    if backends and healthy == len(backends):
        status = "healthy"
    elif healthy:
        status = "degraded"
    else:
        status = "unhealthy"
    return {
        "status": status,
        "uptime_seconds": round(uptime, 3),
        "backends": {
            "total": len(backends),
            "healthy": healthy,
            "unhealthy": len(backends) - healthy,
        },
        "models": len(registry.healthy_model_ids()),
    }


def _merge(model_id: str, served: list[tuple[Backend, Model]]) -> dict[str, Any]:
    """One /v1/models entry for a model, however many backends serve it."""
    caps: dict[str, bool | None] = {}
    for name in CAPABILITIES:
        values = [getattr(m, f"supports_{name}") for _, m in served]
        caps[name] = True if True in values else (False if None not in values else None)
    contexts = [m.context_length for _, m in served if m.context_length]
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "nexus",
        "context_length": max(contexts) if contexts else None,
        "capabilities": caps,
        # The zone a request for this model gets, and the lowest tier that may answer it.
        "zone": privacy.request_zone([b for b, _ in served]),
        "tier": min(b.tier_of(model_id) for b, _ in served),
        "backends": [
            {
                "name": b.name,
                "type": b.type,
                "zone": b.zone,
                "tier": b.tier_of(model_id),
                "context_length": m.context_length,
                "discovered": b.discovery_source is DiscoverySource.MDNS,
            }
            for b, m in served
        ],
    }


def models_listing(registry: Registry, aliases: Mapping[str, str]) -> dict[str, Any]:
    """Every model a healthy backend serves, once, then every configured alias whose target
    is among them (model pickers read this list: an alias they cannot see is useless)."""
    served: dict[str, list[tuple[Backend, Model]]] = {}
    for backend in registry.get_healthy_backends():
        for model in backend.models.values():
            served.setdefault(model.id, []).append((backend, model))
    data = [_merge(mid, served[mid]) for mid in sorted(served)]
    entries = {entry["id"]: entry for entry in data}
    for alias in sorted(aliases):
        target = resolve_alias(alias, aliases, served.__contains__)
        if alias not in entries and target in entries:
            data.append({**entries[target], "id": alias, "alias_of": target})
    return {"object": "list", "data": data}


def model_entry(registry: Registry, aliases: Mapping[str, str], model_id: str) -> dict[str, Any]:
    """``GET /v1/models/{id}``: a served model or an alias of one, as the listing shows it."""
    for entry in models_listing(registry, aliases)["data"]:
        if entry["id"] == model_id:
            return entry  # type: ignore[no-any-return]
    raise ModelNotFound(f"model '{model_id[:200]}' not found", param="model")


def visible(request: Request, listing: dict[str, Any]) -> dict[str, Any]:
    """Auth on: only the models the caller's tenant may use (an alias by either name)."""
    tenant: Tenant | None = request.scope.get(TENANT)
    if tenant is None:
        return listing
    data = [
        entry
        for entry in listing["data"]
        if tenant.allows(entry["id"]) or tenant.allows(entry.get("alias_of", entry["id"]))
    ]
    return {**listing, "data": data}


def add_routes(router: Router, state: AppState) -> None:
    async def health(request: Request) -> Response:
        return Response.json(health_summary(state.registry, state.uptime_seconds))

    aliases = state.config.routing.aliases

    async def models(request: Request) -> Response:
        return Response.json(visible(request, models_listing(state.registry, aliases)))

    async def model(request: Request) -> Response:
        entry = model_entry(state.registry, aliases, request.params["id"])
        if not visible(request, {"data": [entry]})["data"]:
            raise ModelNotFound(f"model '{request.params['id'][:200]}' not found", param="model")
        return Response.json(entry)

    async def stats(request: Request) -> Response:
        data = state.metrics.stats(state.quality.stats())
        data["requests"]["in_flight"] = state.in_flight
        data["budget"] = state.budget.stats() if state.budget is not None else None
        data["tenants"] = state.tenants.summary() if state.tenants is not None else None
        return Response.json(data)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.exposition(), ctype=CONTENT_TYPE_LATEST.encode())

    router.add("GET", "/health", health)
    router.add("GET", "/v1/models", models)
    router.add("GET", "/v1/models/{id:path}", model)
    router.add("GET", "/v1/stats", stats)
    router.add("GET", "/metrics", metrics)

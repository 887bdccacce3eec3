"""LM Studio 0.4+: its native REST API (``/api/v1``) loads and unloads model instances.

* ``GET /api/v1/models``: every downloaded model (``key``, ``size_bytes``) with its
  ``loaded_instances``. Older LM Studio answers an unknown path with 200 and an error text,
  so "supported" means "answered a models list", not "answered 200".
* load: ``POST /api/v1/models/load {"model": key}``, answered once the model is in memory.
  Only when no instance is loaded: LM Studio answers a second load with a second instance.
* unload: ``POST /api/v1/models/unload {"instance_id": id}`` for each loaded instance.
* pull: not offered here. LM Studio downloads by catalog name or Hugging Face link, which is
  not the model key it lists, so Nexus could not tell which listed model a download became.
"""

from __future__ import annotations

from typing import Any

from nexus.config import FleetConfig
from nexus.fleet.errors import NotSupported, OperationFailed
from nexus.fleet.http import BackendHTTP
from nexus.fleet.lifecycle import STATUS_SECONDS, Report, Residency
from nexus.registry import Backend

MODELS = "/api/v1/models"


class LMStudioLifecycle:
    kind = "LM Studio"
    pull_unsupported = (
        "LM Studio downloads by catalog name or Hugging Face link, not by the model key it "
        "lists: download the model in LM Studio (or with lms get), then load it here"
    )

    def __init__(self, config: FleetConfig) -> None:
        self.config = config

    async def check(self, http: BackendHTTP, backend: Backend) -> None:
        try:
            payload = await http.call(backend, "GET", MODELS, seconds=STATUS_SECONDS)
        except OperationFailed as exc:
            if exc.status != 404:
                raise
            payload = None
        if _listing(payload) is None:
            raise NotSupported(
                f"backend {backend.name} (LM Studio) has no {MODELS}: LM Studio loads and "
                "unloads models through its REST API from version 0.4.0 on"
            )

    async def load(self, http: BackendHTTP, backend: Backend, model: str) -> None:
        if _instances(await self._models(http, backend)).get(model):
            return  # loaded already; a second load would start a second instance
        await http.call(
            backend,
            "POST",
            f"{MODELS}/load",
            {"model": model},
            seconds=self.config.operation_timeout_seconds,
        )
        if not _instances(await self._models(http, backend)).get(model):
            raise OperationFailed(
                f"{backend.name} answered the load, but {MODELS} shows no loaded {model}"
            )

    async def unload(self, http: BackendHTTP, backend: Backend, model: str) -> None:
        for instance in _instances(await self._models(http, backend)).get(model, []):
            await http.call(
                backend,
                "POST",
                f"{MODELS}/unload",
                {"instance_id": instance},
                seconds=self.config.operation_timeout_seconds,
            )
        if _instances(await self._models(http, backend)).get(model):
            raise OperationFailed(f"{backend.name} still shows {model} loaded after the unload")

    async def pull(self, http: BackendHTTP, backend: Backend, model: str, report: Report) -> None:
        raise OperationFailed(self.pull_unsupported)

    async def residency(self, http: BackendHTTP, backend: Backend) -> Residency:
        models = await self._models(http, backend)
        sizes = {m["key"]: size for m in models if (size := _size(m)) is not None}
        loaded: dict[str, int | None] = {
            key: sizes.get(key) for key, ids in _instances(models).items() if ids
        }
        return Residency(loaded=loaded, sizes=sizes)

    async def _models(self, http: BackendHTTP, backend: Backend) -> list[dict[str, Any]]:
        listing = _listing(await http.call(backend, "GET", MODELS, seconds=STATUS_SECONDS))
        if listing is None:
            raise OperationFailed(f"{backend.name}: {MODELS} answered without a models list")
        return listing


def _listing(payload: Any) -> list[dict[str, Any]] | None:
    models = payload.get("models") if isinstance(payload, dict) else None
    if not isinstance(models, list):
        return None
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("key"), str)]


def _instances(models: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Model key -> the ids of its loaded instances (the first entry of a key that tells),
    in one pass over the listing."""
    found: dict[str, list[str]] = {}
    for entry in models:
        loaded = entry.get("loaded_instances")
        if isinstance(loaded, list) and entry["key"] not in found:
            found[entry["key"]] = [
                i["id"] for i in loaded if isinstance(i, dict) and isinstance(i.get("id"), str)
            ]
    return found


def _size(entry: dict[str, Any]) -> int | None:
    size = entry.get("size_bytes")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None

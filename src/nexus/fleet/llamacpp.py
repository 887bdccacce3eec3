"""llama.cpp's ``llama-server`` in router mode (started without a model) loads and unloads.

* ``GET /models``: each model with ``status.value`` (``unloaded``, ``loading``, ``loaded``,
  ``sleeping``, ``downloading``; ``failed`` and ``exit_code`` when a load died). A server
  started with ``-m`` serves that one model and lists it without a status: it cannot load
  another, and answers 501 here.
* load: ``POST /models/load {"model": id}`` starts the model's own process; it is done when
  the status says ``loaded``, failed when it says ``failed``.
* unload: ``POST /models/unload {"model": id}``; done when the status says ``unloaded``.
* pull: not offered here. The router downloads by Hugging Face repository with
  ``POST /models`` and its list must then be reloaded; Nexus leaves that to llama-server.
The router reports no memory sizes, so recommendations never target it (loads by hand do).
"""

from __future__ import annotations

from typing import Any

from nexus.config import FleetConfig
from nexus.fleet.errors import NotSupported, OperationFailed
from nexus.fleet.http import BackendHTTP
from nexus.fleet.lifecycle import STATUS_SECONDS, Report, Residency, until
from nexus.registry import Backend


class LlamaCppLifecycle:
    kind = "llama.cpp"
    pull_unsupported = (
        "the llama.cpp router downloads by Hugging Face repository (llama-server -hf) and "
        "must reload its list after: download it there, then load it here"
    )

    def __init__(self, config: FleetConfig) -> None:
        self.config = config

    async def check(self, http: BackendHTTP, backend: Backend) -> None:
        try:
            statuses = _statuses(await http.call(backend, "GET", "/models", seconds=STATUS_SECONDS))
        except OperationFailed as exc:
            if exc.status != 404:
                raise
            statuses = {}
        if not statuses:
            raise NotSupported(
                f"backend {backend.name} (llama.cpp) serves the one model it was started with: "
                "only llama-server in router mode (started without -m) loads and unloads models"
            )

    async def load(self, http: BackendHTTP, backend: Backend, model: str) -> None:
        if (await self._status(http, backend, model)).get("value") == "loaded":
            return
        seconds = self.config.operation_timeout_seconds
        await http.call(backend, "POST", "/models/load", {"model": model}, seconds=seconds)

        async def loaded() -> bool:
            status = await self._status(http, backend, model)
            if status.get("failed") and status.get("value") != "loading":
                code = status.get("exit_code")
                raise OperationFailed(
                    f"{backend.name} could not load {model} (its process exited with code {code})"
                )
            return status.get("value") == "loaded"

        await until(loaded)

    async def unload(self, http: BackendHTTP, backend: Backend, model: str) -> None:
        seconds = self.config.operation_timeout_seconds
        await http.call(backend, "POST", "/models/unload", {"model": model}, seconds=seconds)

        async def gone() -> bool:
            return (await self._status(http, backend, model)).get("value") == "unloaded"

        await until(gone)

    async def pull(self, http: BackendHTTP, backend: Backend, model: str, report: Report) -> None:
        raise OperationFailed(self.pull_unsupported)

    async def residency(self, http: BackendHTTP, backend: Backend) -> Residency:
        statuses = _statuses(await http.call(backend, "GET", "/models", seconds=STATUS_SECONDS))
        return Residency(
            loaded={m: None for m, s in statuses.items() if s.get("value") == "loaded"}
        )

    async def _status(self, http: BackendHTTP, backend: Backend, model: str) -> dict[str, Any]:
        statuses = _statuses(await http.call(backend, "GET", "/models", seconds=STATUS_SECONDS))
        if model not in statuses:
            raise OperationFailed(f"{backend.name}: /models does not list {model}")
        return statuses[model]


def _statuses(payload: Any) -> dict[str, dict[str, Any]]:
    """Model id -> status object, for the entries that have one (router mode only)."""
    entries = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        return {}
    return {
        e["id"]: e["status"]
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("id"), str)
        and isinstance(e.get("status"), dict)
    }

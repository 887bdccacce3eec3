"""Ollama: load is a warm-up request, unload is ``keep_alive: 0``, ``/api/ps`` is the truth.

* load: ``POST /api/generate`` with no prompt and the configured ``keep_alive``. Ollama
  answers (``done_reason: "load"``) once the model is in memory; the load counts only when
  ``GET /api/ps`` then lists it. Other models on the box keep serving meanwhile.
* pull: ``POST /api/pull``, its progress lines streamed into the operation. A pull is a
  download, never a load (the trap of an earlier gateway).
* unload: ``POST /api/generate`` with ``keep_alive: 0``. Ollama lets requests still running
  on the model finish and unloads it after, so the unload counts once ``/api/ps`` no
  longer lists it.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from nexus.config import FleetConfig
from nexus.errors import printable
from nexus.fleet.errors import OperationFailed
from nexus.fleet.http import MAX_QUOTED, BackendHTTP, error_message
from nexus.fleet.lifecycle import STATUS_SECONDS, Report, Residency, until
from nexus.registry import Backend


def full_name(model: str) -> str:
    """Ollama's own spelling: "llama3" is "llama3:latest"."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


class OllamaLifecycle:
    kind = "Ollama"
    pull_unsupported = ""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config

    async def check(self, http: BackendHTTP, backend: Backend) -> None:
        return None  # every Ollama loads and unloads

    async def load(self, http: BackendHTTP, backend: Backend, model: str) -> None:
        body = {"model": model, "keep_alive": self.config.keep_alive, "stream": False}
        try:
            await http.call(
                backend,
                "POST",
                "/api/generate",
                body,
                seconds=self.config.operation_timeout_seconds,
            )
        except OperationFailed as exc:
            if exc.status == 404:
                raise OperationFailed(
                    f"{backend.name} does not have {model} (pull it first: load with --pull)"
                ) from None
            raise
        if full_name(model) not in await self._loaded(http, backend):
            raise OperationFailed(
                f"{backend.name} answered the load, but /api/ps does not list {model}"
            )

    async def unload(self, http: BackendHTTP, backend: Backend, model: str) -> None:
        body = {"model": model, "keep_alive": 0, "stream": False}
        await http.call(
            backend, "POST", "/api/generate", body, seconds=self.config.operation_timeout_seconds
        )

        async def gone() -> bool:
            return full_name(model) not in await self._loaded(http, backend)

        await until(gone)

    async def pull(self, http: BackendHTTP, backend: Backend, model: str, report: Report) -> None:
        last = ""
        body = {"model": model, "stream": True}
        stall = self.config.pull_stall_seconds
        lines = http.lines(backend, "POST", "/api/pull", body, stall=stall)
        async with aclosing(lines):  # an error line ends the pull: close the stream now
            async for line in lines:
                if not isinstance(line, dict):
                    continue
                if reason := error_message(line):
                    raise OperationFailed(f"{backend.name}: pulling {model} failed: {reason}")
                last = printable(str(line.get("status") or ""), MAX_QUOTED)
                report(last, _bytes(line.get("completed")), _bytes(line.get("total")))
        if last != "success":
            raise OperationFailed(f"{backend.name}: the pull of {model} ended before it succeeded")

    async def residency(self, http: BackendHTTP, backend: Backend) -> Residency:
        ps = await http.call(backend, "GET", "/api/ps", seconds=STATUS_SECONDS)
        tags = await http.call(backend, "GET", "/api/tags", seconds=STATUS_SECONDS)
        sizes = {name: size for name, size in _entries(tags) if size is not None}
        return Residency(loaded=dict(_entries(ps)), sizes=sizes)

    async def _loaded(self, http: BackendHTTP, backend: Backend) -> set[str]:
        ps = await http.call(backend, "GET", "/api/ps", seconds=STATUS_SECONDS)
        return {full_name(name) for name, _ in _entries(ps)}


def _entries(payload: Any) -> list[tuple[str, int | None]]:
    """(name, size in bytes) of each entry of an /api/ps or /api/tags answer; the size is
    None when the entry tells none (a loaded model is loaded all the same)."""
    entries = payload.get("models") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise OperationFailed("Ollama answered without a models list")
    found = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str) and name:
            found.append((name, _bytes(entry.get("size"))))
    return found


def _bytes(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None

"""Real llama.cpp servers for the interop tests (``pytest -m interop``).

The server is llama-cpp-python (``python -m llama_cpp.server``) serving SmolLM2-135M-Instruct,
both installed by ``scripts/setup-interop`` into a venv cached outside the repo
(``$NEXUS_INTEROP_CACHE``, default ``~/.cache/nexus-interop``). The first fixture use runs
that script when the cache is not ready; when the build is impossible it leaves the reason
in ``$CACHE/unavailable`` and every interop test skips with it.

Two servers run for the whole session on free 127.0.0.1 ports. Tests may stop or kill them:
the function-scoped ``llama_servers`` fixture restarts whatever a previous test left down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "scripts" / "setup-interop"
MODEL_ALIAS = "smollm2-135m-instruct"
N_CTX = 2048
SETUP_TIMEOUT = 45 * 60  # a from-source build takes ~5 min on 2 cores; be generous
START_TIMEOUT = 120.0


def cache_dir() -> Path:
    configured = os.environ.get("NEXUS_INTEROP_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "nexus-interop"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: against real inference servers (llama-cpp-python); built and cached by "
        "scripts/setup-interop, skipped with the reason when that build is impossible",
    )


@dataclass(frozen=True)
class Runtime:
    python: Path
    model: Path


def _ready(cache: Path) -> Runtime | None:
    python = cache / "venv" / "bin" / "python"
    marker = cache / "venv" / ".nexus-interop-complete"
    model_file = cache / "model_path"
    if not (python.exists() and marker.exists() and model_file.exists()):
        return None
    model = Path(model_file.read_text().strip())
    return Runtime(python, model) if model.is_file() else None


def _unavailable(cache: Path) -> str | None:
    path = cache / "unavailable"
    if path.exists():
        return path.read_text().strip() or "scripts/setup-interop failed (no reason given)"
    return None


@pytest.fixture(scope="session")
def interop_runtime() -> Runtime:
    """The cached llama.cpp venv and model, built by scripts/setup-interop when missing."""
    cache = cache_dir()
    runtime = _ready(cache)
    if runtime is None and _unavailable(cache) is None:
        try:
            subprocess.run(
                [str(SETUP_SCRIPT)],
                check=False,
                timeout=SETUP_TIMEOUT,
                env={**os.environ, "NEXUS_INTEROP_CACHE": str(cache)},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"interop: scripts/setup-interop did not complete: {exc}")
        runtime = _ready(cache)
    if runtime is None:
        reason = _unavailable(cache) or f"no llama.cpp environment under {cache}"
        pytest.skip(f"interop: real llama.cpp server unavailable: {reason}")
    return runtime


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET a 127.0.0.1 URL; (status, parsed body or None). Status 0: nothing listening."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class LlamaServer:
    """One ``python -m llama_cpp.server`` child process on a fixed 127.0.0.1 port."""

    name: str
    runtime: Runtime
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.runtime.python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.runtime.model),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--n_ctx",
            str(N_CTX),
            # Otherwise every new request (health probes included) aborts a running stream.
            "--interrupt_requests",
            "false",
            "--verbose",
            "false",
        ]

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until ``/v1/models`` answers 200 (the model is loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            status, _ = get_json(self.url + "/v1/models", timeout=2)
            if status == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")

    def ensure_running(self) -> None:
        if not self.alive:
            self.start()
        self.wait_ready()

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL after 15 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait_port_closed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} still accepts connections on {self.port}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def _llama_pool(
    interop_runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LlamaServer]]:
    logs = tmp_path_factory.mktemp("llama-logs")
    servers = [
        LlamaServer(name, interop_runtime, free_port(), logs / f"{name}.log")
        for name in ("llama-a", "llama-b")
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def llama_servers(_llama_pool: list[LlamaServer]) -> list[LlamaServer]:
    """The two real servers, both up (restarted if an earlier test stopped one)."""
    for server in _llama_pool:
        server.ensure_running()
    return _llama_pool


def backend_entries(servers: list[LlamaServer], **extra: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "url": s.url, "type": "llamacpp", **extra} for s in servers]

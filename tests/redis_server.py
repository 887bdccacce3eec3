"""A real ``redis-server`` (Debian's, installed by scripts/setup-redis) for the tests: on a
free loopback port, its files in the test's directory, stopped whatever happens. It can be
killed and started again on the same port with the same data (append-only file, fsync on
every write), as an outage in production would look."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


def require() -> None:
    """Skip where redis-server cannot be had; fail in CI, where setup-redis installs it."""
    if os.path.exists(BINARY):
        return
    if os.environ.get("CI"):
        pytest.fail("redis-server is missing: scripts/setup-redis should have installed it")
    pytest.skip("redis-server is not installed (scripts/setup-redis installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "protected-mode": "yes",
            "daemonize": "no",
            "logfile": str(self.directory / "redis.log"),
        }
        if self.password:
            options["requirepass"] = self.password
        args = [BINARY, *(arg for name, value in options.items() for arg in (f"--{name}", value))]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def kill(self) -> None:
        """SIGKILL, as a crash: what was acknowledged is in the append-only file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def redis_server(directory: Path, password: str | None = None) -> Iterator[RedisServer]:
    require()
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory, password)
    server.start()
    try:
        yield server
    finally:
        server.kill()

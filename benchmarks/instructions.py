"""Instructions per request under callgrind: ``python -m benchmarks.instructions [--quick]
[--baseline SRC] [--json PATH]``. See docs/benchmarks.md, "Instructions per request".

Why: on a shared 2-vCPU machine the CPU time per request of two gateways moves by 15-30 %
from run to run, so a before/after ratio of wall-clock CPU cannot be read. The number of
instructions a gateway executes per request (callgrind's ``Ir``) barely moves (1-2 %).

How: the fake upstream (``benchmarks.upstream``) runs normally; each gateway runs under
``valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=DIR/NAME.out`` (start-up
uninstrumented: it is slow enough under valgrind as it is) and is polled until it answers a
chat request. Targets: ``floor-asgi`` (benchmarks/floor_asgi.py), ``nexus`` (this tree's
``python -m nexus serve`` with the config ``benchmarks.run`` uses, ``procs.NEXUS_TOML``),
``before`` with ``--baseline SRC`` (the same config, ``PYTHONPATH=SRC``; a child checks that
``nexus`` is imported from under SRC) and the aiohttp ``floor`` with ``--floor``. Then, one
gateway at a time, two load shapes, each measured as::

    callgrind_control -z PID; callgrind_control -i on PID
    <load>
    callgrind_control -i off PID; callgrind_control -d PID

(PID: the valgrind process itself, which is the process spawned here: Debian's
``/usr/bin/valgrind`` wrapper ``exec``s ``valgrind.bin``). Ir per request = the ``totals:``
line of the new dump file ``NAME.out.<n>`` / the requests answered in the window.

* **sequential**: one keep-alive connection, ``--warmup`` requests (not measured), then
  ``-n`` requests, each a non-streaming chat to ``bench-model`` with the head an OpenAI
  Python SDK sends (Authorization: Bearer, User-Agent, Accept, Content-Type, X-Stainless-*).
* **concurrent**: ``--conns`` (32) keep-alive connections sending back to back for
  ``--seconds``. With ``--loadgen python`` (the default) the client here opens and warms every
  connection before the window (so the gateway's upstream pool has grown too) and, at the end
  of the window, stops sending and waits for every request in flight: the window holds exactly
  the requests counted. With ``--loadgen wrk``, wrk is run once unmeasured to warm up, then
  for the window; the window ends once the gateway is idle again, so it also holds the work of
  the requests wrk abandoned in flight when it stopped (up to one per connection), which wrk
  does not count: Ir/request comes out up to conns/requests too high.

Everything binds 127.0.0.1, every wait is bounded, and every child process is stopped at the
end, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import wrk
from benchmarks.common import base_meta, log
from benchmarks.loadgen import Client, Target, check_json
from benchmarks.procs import (
    CHAT_PATH,
    HOST,
    Proc,
    baseline_meta,
    baseline_origin,
    baseline_src,
    cpu_seconds,
    drive,
    free_port,
    nexus_serve,
    save,
    spawn,
    wait_chat,
    wait_until,
)
from benchmarks.settings import Settings

CHAT_BODY = Settings.full().chat_body  # the body benchmarks.run sends: bench-model, 32 tokens
# What openai-python 1.x (httpx) sends for client.chat.completions.create(...), in its order.
SDK_HEADERS = {
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "OpenAI/Python 1.55.0",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.55.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.7",
    "Authorization": "Bearer sk-bench-0123456789abcdef0123456789abcdef",
    "X-Stainless-Async": "false",
    "x-stainless-retry-count": "0",
}
# Targets in table order; "floor" only with --floor, "before" only with --baseline.
ORDER = ("floor", "floor-asgi", "nexus", "before")
SHAPES = ("sequential", "concurrent")
RATIOS = (("nexus", "floor-asgi"), ("nexus", "before"))

REQUEST_TIMEOUT = 60.0  # one request under callgrind, instrumentation on
CONTROL_TIMEOUT = 60.0  # one callgrind_control command
DUMP_TIMEOUT = 60.0  # the dump file to appear, complete
IDLE_TIMEOUT = 30.0  # the gateway to go idle after wrk
STOP_TIMEOUT = 30.0  # SIGTERM to exit, then SIGKILL


@dataclass(frozen=True, slots=True)
class Sizes:
    n: int
    warmup: int
    seconds: float
    conns: int
    conn_warmup: int  # requests per connection before the concurrent window (python driver)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        quick = args.quick
        return cls(
            n=args.n or (100 if quick else 500),
            warmup=args.warmup if args.warmup is not None else (50 if quick else 200),
            seconds=args.seconds or (3.0 if quick else 15.0),
            conns=args.conns,
            conn_warmup=2 if quick else 5,
        )


@dataclass(slots=True)
class Gateway:
    name: str
    proc: Proc
    port: int
    out: Path  # callgrind's --callgrind-out-file; dumps are out.1, out.2, ...
    started: float
    ready_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def target(self, headers: dict[str, str] | None = None) -> Target:
        return Target(self.name, HOST, self.port, "", headers or {})


def sdk_request(port: int, body: bytes) -> bytes:
    head = f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in SDK_HEADERS.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description="Instructions per request (callgrind Ir) of each gateway, and ratios.",
    )
    p.add_argument("--quick", action="store_true", help="small N and S (smoke test)")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the results here (default: benchmarks/results/instructions-DATE.json)",
    )
    p.add_argument(
        "--baseline",
        metavar="SRC",
        type=Path,
        help="another checkout's src/ directory: its Nexus is measured too, as 'before'",
    )
    p.add_argument("--floor", action="store_true", help="also measure the aiohttp floor")
    p.add_argument(
        "-n", type=int, default=0, help="sequential requests measured (500; --quick 100)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="sequential warm-up requests (200; --quick 50)"
    )
    p.add_argument(
        "--seconds", type=float, default=0.0, help="concurrent window, s (15; --quick 3)"
    )
    p.add_argument("--conns", type=int, default=32, help="concurrent connections (32)")
    p.add_argument(
        "--loadgen",
        choices=("python", "wrk"),
        default="python",
        help="concurrent driver: python (exact request count, default) or wrk",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds a gateway may take to answer its first request under valgrind (300)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, dumps)")
    args = p.parse_args(argv)
    args.baseline = baseline_src(p, args.baseline)
    if args.loadgen == "wrk" and not wrk.available():
        p.error("--loadgen wrk: wrk is not on PATH")
    if args.n < 0 or args.conns < 1 or args.seconds < 0 or (args.warmup or 0) < 0:
        p.error("-n, --warmup, --seconds must be >= 0 and --conns >= 1")
    return args


def missing_tools() -> list[str]:
    return [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]


def valgrind_version() -> str:
    done = subprocess.run(
        ["valgrind", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip()


# -- callgrind ----------------------------------------------------------------------------


async def control(gw: Gateway, *args: str) -> str:
    """``callgrind_control ARGS PID``; an error (also "PID not detected") raises."""
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control",
        *args,
        str(gw.pid),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CONTROL_TIMEOUT)
    except BaseException as exc:  # the timeout, or Ctrl-C / SIGTERM: no orphan left behind
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise RuntimeError(f"callgrind_control {' '.join(args)} {gw.pid}: no answer") from None
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0 or "Error" in text:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {gw.pid} failed: {text[-1000:]}")
    return text


def dumps(out: Path) -> dict[int, Path]:
    """The dump files callgrind_control -d wrote for ``out``: ``out.<n>`` by n."""
    pattern = re.compile(re.escape(out.name) + r"\.(\d+)")
    found = {}
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def totals(path: Path) -> int | None:
    """The first event (Ir) of the ``totals:`` line; None while the file is incomplete."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


async def dump(gw: Gateway) -> tuple[int, Path]:
    """Dump the counters; (Ir, file) of the new dump file."""
    before = max(dumps(gw.out), default=0)
    await control(gw, "-d")
    deadline = time.monotonic() + DUMP_TIMEOUT
    while time.monotonic() < deadline:
        newer = {n: p for n, p in dumps(gw.out).items() if n > before}
        if newer:
            path = newer[max(newer)]
            ir = totals(path)
            if ir is not None:
                return ir, path
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{gw.name}: no new dump {gw.out}.<n> with a totals: line")


async def wait_idle(pid: int, quiet: float = 0.5, timeout: float = IDLE_TIMEOUT) -> None:
    """Until ``pid`` used no CPU for ``quiet`` seconds (requests abandoned by wrk done)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = cpu_seconds(pid)
        if now is None or now == last:
            return
        last = now
    raise RuntimeError(f"pid {pid} still busy {timeout:g}s after the load")


# -- load ---------------------------------------------------------------------------------


async def calls(client: Client, data: bytes, n: int, deadline: float | None = None) -> int:
    """``n`` requests one after another (or until ``deadline``); every answer must be a
    200 chat completion. Requests answered."""
    done = 0
    while done < n and (deadline is None or time.monotonic() < deadline):
        msg = await client.call(data, timeout=REQUEST_TIMEOUT)
        problem = check_json(msg)
        if problem:
            raise RuntimeError(f"{client.target.name}: {problem}")
        done += 1
    return done


async def measured(gw: Gateway, load: Callable[[], Awaitable[int]]) -> dict[str, Any]:
    """Zero, instrument ``load()`` (returns the requests answered), dump: Ir per request."""
    await control(gw, "-z")
    await control(gw, "-i", "on")
    started = time.perf_counter()
    requests = await load()
    seconds = time.perf_counter() - started
    await control(gw, "-i", "off")
    ir, path = await dump(gw)
    if requests <= 0:
        raise RuntimeError(f"{gw.name}: no request answered in the window")
    return {
        "requests": requests,
        "ir": ir,
        "ir_per_request": ir / requests,
        "seconds": round(seconds, 3),
        "dump": path.name,
    }


async def sequential(gw: Gateway, sizes: Sizes) -> dict[str, Any]:
    client = Client(gw.target())
    data = sdk_request(gw.port, CHAT_BODY.encode())
    try:
        await calls(client, data, sizes.warmup)
        result = await measured(gw, lambda: calls(client, data, sizes.n))
    finally:
        client.close()
    return {"connections": 1, "warmup": sizes.warmup, **result}


async def concurrent_python(gw: Gateway, sizes: Sizes) -> dict[str, Any]:
    clients = [Client(gw.target()) for _ in range(sizes.conns)]
    data = sdk_request(gw.port, CHAT_BODY.encode())

    async def window() -> int:
        deadline = time.monotonic() + sizes.seconds
        counts = await asyncio.gather(*(calls(c, data, 1 << 30, deadline) for c in clients))
        return sum(counts)

    try:
        # Opens every connection, and lets the gateway grow its upstream pool, unmeasured.
        await asyncio.gather(*(calls(c, data, sizes.conn_warmup) for c in clients))
        result = await measured(gw, window)
    finally:
        for c in clients:
            c.close()
    return {"connections": sizes.conns, "driver": "python", **result}


async def concurrent_wrk(gw: Gateway, sizes: Sizes) -> dict[str, Any]:
    headers = {k: v for k, v in SDK_HEADERS.items() if k != "Content-Type"}  # wrk.py sets it
    target = gw.target(headers)

    async def run(seconds: float) -> int:
        res = await wrk.throughput(target, CHAT_BODY, sizes.conns, seconds)
        if res["errors"]["count"]:
            raise RuntimeError(f"{gw.name}: wrk errors: {res['errors']}")
        await wait_idle(gw.pid)  # what wrk left in flight is done before the window closes
        return int(res["requests"])

    await run(1.0)  # warm-up: connections, the upstream pool
    result = await measured(gw, lambda: run(sizes.seconds))
    return {"connections": sizes.conns, "driver": "wrk", **result}


# -- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = Sizes.from_args(args)
        self.workdir = Path(tempfile.mkdtemp(prefix="nexus-instr-"))
        self.procs: list[Proc] = []
        self.upstream_url = ""

    async def start_upstream(self, session: aiohttp.ClientSession) -> None:
        port = free_port()
        self.upstream_url = f"http://{HOST}:{port}"
        proc = await spawn(
            "upstream",
            ["-m", "benchmarks.upstream", "--port", str(port)],
            self.workdir / "upstream.log",
        )
        self.procs.append(proc)
        await wait_until(session, "GET", self.upstream_url + "/v1/models", proc=proc)

    async def spawn_valgrind(
        self, name: str, port: int, args: Sequence[str], pythonpath: Sequence[str] = ()
    ) -> Gateway:
        """``python ARGS`` under callgrind: the gateway ``name`` that will listen on ``port``."""
        out = self.workdir / f"{name}.out"
        started = time.monotonic()
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        wrapped = await spawn(
            name,
            args,
            self.workdir / f"{name}.log",
            pythonpath,
            [*valgrind, f"--callgrind-out-file={out}"],
        )
        self.procs.append(wrapped)
        return Gateway(name, wrapped, port, out, started)

    async def start_gateway(self, name: str) -> Gateway:
        port = free_port()
        if name.startswith("floor"):
            module = "floor_proxy" if name == "floor" else "floor_asgi"
            args = [f"benchmarks.{module}", "--port", str(port), "--upstream", self.upstream_url]
            return await self.spawn_valgrind(name, port, ["-m", *args])
        else:
            args = nexus_serve(self.workdir / f"{name}.toml", port, self.upstream_url)
            pythonpath = [str(self.args.baseline)] if name == "before" else []
        return await self.spawn_valgrind(name, port, args, pythonpath)

    async def ready(self, session: aiohttp.ClientSession, gw: Gateway) -> None:
        await wait_chat(
            session,
            f"http://{HOST}:{gw.port}",
            CHAT_BODY,
            proc=gw.proc,
            timeout=self.args.startup_timeout,
            interval=0.5,
        )
        gw.ready_s = round(time.monotonic() - gw.started, 1)
        log(f"  {gw.name}: answering after {gw.ready_s:.0f} s under valgrind (pid {gw.pid})")

    def names(self) -> list[str]:
        wanted = {"floor-asgi", "nexus"}
        if self.args.floor:
            wanted.add("floor")
        if self.args.baseline is not None:
            wanted.add("before")
        return [n for n in ORDER if n in wanted]

    async def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"meta": self.meta()}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if self.args.baseline is not None:
                results["meta"]["baseline"].update(await baseline_origin(self.args.baseline))
            await self.start_upstream(session)
            log(f"upstream {self.upstream_url}; starting gateways under callgrind ...")
            # All start together (start-up under valgrind takes a while); measured one by one.
            gateways = [await self.start_gateway(n) for n in self.names()]
            await asyncio.gather(*(self.ready(session, gw) for gw in gateways))
        concurrent = concurrent_wrk if self.args.loadgen == "wrk" else concurrent_python
        targets: dict[str, Any] = {}
        for gw in gateways:
            log(f"{gw.name}: sequential, {self.sizes.n} requests ...")
            seq = await sequential(gw, self.sizes)
            log(f"  {seq['ir_per_request']:,.0f} Ir/request")
            log(f"{gw.name}: concurrent, {self.sizes.conns} connections, {self.sizes.seconds:g} s")
            con = await concurrent(gw, self.sizes)
            log(f"  {con['requests']} requests, {con['ir_per_request']:,.0f} Ir/request")
            targets[gw.name] = {
                "pid": gw.pid,
                "ready_s": gw.ready_s,
                "sequential": seq,
                "concurrent": con,
            }
        results["targets"] = targets
        results["ratios"] = ratios(targets)
        return results

    def meta(self) -> dict[str, Any]:
        meta = base_meta("benchmarks.instructions")
        meta["valgrind"] = valgrind_version()
        meta["quick"] = self.args.quick
        meta["loadgen"] = self.args.loadgen
        meta["sizes"] = {
            "n": self.sizes.n,
            "warmup": self.sizes.warmup,
            "seconds": self.sizes.seconds,
            "conns": self.sizes.conns,
            "conn_warmup": self.sizes.conn_warmup,
        }
        meta["request"] = {"headers": SDK_HEADERS, "body": CHAT_BODY}
        meta.update(baseline_meta(self.args.baseline))
        return meta

    async def stop(self) -> None:
        procs, self.procs = self.procs, []
        await asyncio.gather(*(p.stop(STOP_TIMEOUT) for p in reversed(procs)))

    def cleanup(self) -> None:
        if self.args.keep:
            log(f"run directory kept (logs, callgrind dumps): {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def ratios(targets: dict[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for a, b in RATIOS:
        if a in targets and b in targets:
            out[f"{a}/{b}"] = {
                shape: round(
                    targets[a][shape]["ir_per_request"] / targets[b][shape]["ir_per_request"], 4
                )
                for shape in SHAPES
            }
    return out


def table(results: dict[str, Any]) -> str:
    targets: dict[str, Any] = results["targets"]
    sizes = results["meta"]["sizes"]
    names = list(targets)
    pairs = list(results["ratios"])
    labels = {
        "sequential": f"sequential, 1 conn, {sizes['n']} req",
        "concurrent": f"concurrent, {sizes['conns']} conns, {sizes['seconds']:g} s",
    }
    width = 34
    head = f"{'Ir per request':<{width}}" + "".join(f"{n:>12}" for n in names)
    head += "".join(f"{p:>18}" for p in pairs)
    lines = [head, "-" * len(head)]
    for shape in SHAPES:
        row = f"{labels[shape]:<{width}}"
        row += "".join(f"{targets[n][shape]['ir_per_request']:>12,.0f}" for n in names)
        row += "".join(f"{results['ratios'][p][shape]:>18.3f}" for p in pairs)
        lines.append(row)
    row = f"{'requests in the concurrent window':<{width}}"
    lines.append(row + "".join(f"{targets[n]['concurrent']['requests']:>12,}" for n in names))
    baseline = results["meta"].get("baseline")
    if baseline:
        lines.insert(0, f"before = {baseline['src']} (commit {baseline.get('commit')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"benchmarks.instructions: {' and '.join(missing)} not found on PATH; "
            "install valgrind (Debian: apt-get install -y valgrind)",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    try:
        results = asyncio.run(drive(Bench(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmarks.instructions: interrupted; child processes stopped", file=sys.stderr)
        return 130
    results["meta"]["run_seconds"] = round(time.monotonic() - started, 1)
    print(table(results))
    save(results, args.json, "instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())

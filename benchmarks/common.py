"""What the standalone benchmarks (queue, budget, tenants) share: their progress line, the
run's description (commit, machine, versions), and a summary of the log Nexus wrote."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

import nexus
from benchmarks.procs import ROOT


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def git(*args: str) -> str:
    """``git ARGS`` in the checkout; "" when it fails or takes over a minute."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def base_meta(module: str) -> dict[str, Any]:
    """The run: command, time, commit (and what under src/ was not committed), machine."""
    return {
        "command": " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD").strip() or None,
        "uncommitted_in_src": git("status", "--short", "--", "src").splitlines(),
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "nexus": nexus.__version__,
        "nexus_file": nexus.__file__,
        "aiohttp": aiohttp.__version__,
    }


def nexus_log_summary(path: Path) -> dict[str, Any]:
    """How many lines of each level Nexus logged (request lines are 'info'), and the distinct
    warnings and errors (their first words), with how often each came."""
    levels: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for raw in path.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        level = str(line.get("level", "?"))
        levels[level] += 1
        if level in ("warning", "error", "critical"):
            notes[f"{level}: {str(line.get('message', ''))[:160]}"] += 1
    return {"levels": dict(levels), "warnings": dict(notes.most_common(20))}

"""What the benchmark smoke tests share: a benchmark's command run to the end in a child,
its JSON results read back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(
    module: str, args: Sequence[str], out: Path, timeout: float
) -> tuple[str, dict[str, Any]]:
    """``python -m MODULE ARGS --json OUT`` from the repository root, which must exit 0
    within ``timeout`` seconds; (its stdout, the results it wrote to ``out``)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{module} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout, json.loads(out.read_text())

"""Smoke run of the callgrind benchmark (``benchmarks.instructions --quick``, floor-asgi and
Nexus): it must run end to end and compute Ir per request and the Nexus/floor-asgi ratio.
No thresholds: the numbers are for people to compare, this only keeps the tool from rotting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.benchmarks.smoke import run_benchmark

pytestmark = pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="valgrind (callgrind_control) is not installed: apt-get install -y valgrind",
)


@pytest.mark.timeout(180)
def test_quick_instructions_run(tmp_path: Path) -> None:
    stdout, results = run_benchmark(
        "benchmarks.instructions", ["--quick"], tmp_path / "instructions.json", 170
    )
    assert set(results["targets"]) == {"floor-asgi", "nexus"}
    for name, target in results["targets"].items():
        for shape in ("sequential", "concurrent"):
            section = target[shape]
            assert section["requests"] > 0, (name, shape)
            assert section["ir"] > 0, (name, shape)
            assert section["ir_per_request"] > 0, (name, shape)
        assert target["sequential"]["requests"] == results["meta"]["sizes"]["n"]
    ratio = results["ratios"]["nexus/floor-asgi"]
    assert ratio["sequential"] > 0 and ratio["concurrent"] > 0
    assert "nexus/before" not in results["ratios"]
    assert "nexus/floor-asgi" in stdout

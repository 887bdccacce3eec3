"""Smoke run of the benchmark suite (``--quick``): it must run end to end with every
request succeeding and every section in the JSON. No timing assertions: benchmarks are
not tests, this only keeps the suite from rotting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.smoke import run_benchmark

SECTIONS = (
    "meta",
    "targets",
    "startup",
    "latency",
    "throughput",
    "streaming",
    "memory",
    "micro",
    "checks",
    "errors_total",
)


@pytest.mark.timeout(120)
def test_quick_benchmark_runs_clean(tmp_path: Path) -> None:
    stdout, results = run_benchmark(
        "benchmarks.run", ["--quick", "--loadgen", "python"], tmp_path / "bench.json", 110
    )
    for section in SECTIONS:
        assert section in results, section
    assert results["errors_total"] == 0
    assert set(results["targets"]) == {"direct", "floor", "nexus"}
    assert results["latency"]["nexus_headers_ok"]
    for name in results["targets"]:
        assert (
            results["latency"]["per_target"][name]["n"] == results["meta"]["settings"]["latency_n"]
        )
        for kind in ("paced", "burst"):
            assert results["streaming"][kind]["per_target"][name]["n"] > 0
        for conns in ("32", "100"):
            assert results["throughput"][conns][name]["rps"] > 0
    streams = results["memory"]["streams"]["nexus"]
    assert streams["completed"] == streams["conns"] == streams["max_open"]
    assert results["memory"]["nexus"]["idle_mb"] > 0
    assert results["startup"]["median_s"] > 0
    assert results["micro"]["routing_50"]["median_us"] > 0
    assert results["micro"]["metrics"]["median_us"] > 0
    assert results["micro"]["sse"]["median_us"] > 0
    assert {c["name"] for c in results["checks"]} >= {"idle RSS (MB)"}
    assert "targets:" in stdout

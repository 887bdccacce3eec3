"""``[fleet]``: demand-driven recommendations (F19) and how lifecycle operations run (F20).

A frozen section like every other in ``nexus.config``: each field carries its help text,
so ``nexus config init`` documents it and unknown keys are refused. The per-backend memory
size lives on the backend itself (``[[backends]] vram_gb``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus.config import setting


@dataclass(frozen=True, slots=True)
class FleetConfig:
    enabled: bool = setting(
        False,
        "Track demand per model and recommend models to load on idle backends before the "
        "demand arrives (suggestions in GET /admin/fleet/recommendations, nexus fleet and the "
        "log). Loading, unloading and migrating by hand work either way.",
    )
    analysis_interval_seconds: float = setting(
        3600,
        "Seconds between two analyses of demand and free memory (each may add "
        "recommendations; each expires at the next).",
        min=0.1,
    )
    min_requests: int = setting(
        10,
        "Least demand worth a recommendation: requests expected per hour in the coming hours.",
        min=1,
    )
    min_confidence: float = setting(
        0.5,
        "Least confidence worth a recommendation: the share of past days of the same kind "
        "(weekday or weekend) on which that demand showed up at that hour, 0 to 1.",
        min=0,
        max=1,
    )
    history_days: int = setting(
        14,
        "Days of demand history kept (request counts per model per hour; only models Nexus "
        "serves, so made-up names cost nothing).",
        min=1,
        max=90,
    )
    hot_window_seconds: float = setting(
        300,
        "A model that answered a request on a backend within this many seconds is hot there: "
        "a recommendation never unloads it.",
        min=0,
    )
    headroom_percent: float = setting(
        20,
        "Share of each backend's memory (vram_gb) a recommendation never fills, left for "
        "context caches and surprises.",
        min=0,
        max=90,
    )
    auto_apply: bool = setting(
        False,
        "Apply each new recommendation at once instead of waiting for nexus fleet apply.",
    )
    keep_alive: str = setting(
        "1h",
        "keep_alive sent with an Ollama load: how long the model stays loaded once idle, as "
        'Ollama reads it ("30m", "2h"; "-1m" keeps it loaded until unloaded).',
    )
    operation_timeout_seconds: float = setting(
        600,
        "Longest a load or unload may take before its operation fails (a large model from a "
        "slow disk takes minutes).",
        min=1,
    )
    pull_stall_seconds: float = setting(
        120,
        "A pull fails when no progress arrives for this long (there is no cap on a whole "
        "pull: a large download takes what it takes).",
        min=1,
    )
    drain_timeout_seconds: float = setting(
        60,
        "How long a migration waits for the old backend's requests to finish before it gives "
        "up and leaves the model loaded on both (it never cuts a request).",
        min=0,
    )
    max_operations: int = setting(
        100, "Finished operations kept for nexus operations (running ones are always kept).", min=1
    )

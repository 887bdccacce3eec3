"""Discovery's logging: one logger for the whole package, and zeroconf kept quiet.

Every module logs as ``nexus.discovery`` (not ``__name__``): operators filter on that
name, and docs/discovery.md shows it. If mDNS cannot run, Nexus says so in a single WARN
line; zeroconf's own warnings (with tracebacks, one per socket problem) are demoted to
DEBUG while discovery runs so a broken network does not spam the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("nexus.discovery")


class DemoteZeroconfWarnings(logging.Filter):
    """zeroconf warns (with tracebacks) about every socket problem; while discovery runs,
    its first warning becomes Nexus's one WARN line and everything goes to DEBUG."""

    def __init__(self, warn_once: Callable[..., None]) -> None:
        super().__init__()
        self.warn_once = warn_once

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.warn_once("mDNS problem: %s", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            log.debug("zeroconf: %s", record.exc_info[1], exc_info=record.exc_info)
        return False

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _nexus_logs_propagate() -> None:
    # caplog listens on the root logger; the server's own set-up may have cut propagation.
    logging.getLogger("nexus").propagate = True

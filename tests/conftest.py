from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # `nexus serve` runs on uvloop, so the servers built in process by the tests do too
    # (its transports differ from asyncio's in ways that have bitten us).
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def _nexus_logs_propagate() -> None:
    # caplog listens on the root logger; the server's own set-up may have cut propagation.
    logging.getLogger("nexus").propagate = True


@pytest.fixture(autouse=True, scope="session")
def _data_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The state store's default file is under $XDG_DATA_HOME: never the user's own, in tests
    # (the servers the tests spawn inherit it too).
    import os

    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))

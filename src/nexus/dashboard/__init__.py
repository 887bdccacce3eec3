"""Web dashboard (F10). Placeholder until the dashboard work lands: adds nothing."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    return None

"""``nexus serve``: load the config (file < env < flags) and run the server."""

from __future__ import annotations

import click

from nexus import config as config_mod
from nexus.config import LOG_LEVELS


def load_or_exit(
    path: str | None, overrides: dict[str, dict[str, object]] | None = None
) -> config_mod.Config:
    try:
        return config_mod.load(path, overrides=overrides)
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    envvar="NEXUS_CONFIG",
    help="Config file (default: nexus.toml if present).",
)
@click.option("-p", "--port", type=click.IntRange(0, 65535), help="Listen port (default: 8000).")
@click.option("--host", help="Listen address (default: 0.0.0.0).")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Log level: trace, debug, info, warn, error.",
)
@click.option("--no-discovery", is_flag=True, help="Disable mDNS discovery.")
def serve(
    config_path: str | None,
    port: int | None,
    host: str | None,
    log_level: str | None,
    no_discovery: bool,
) -> None:
    """Start the Nexus server."""
    overrides: dict[str, dict[str, object]] = {
        "server": {"port": port, "host": host},
        "logging": {"level": log_level.lower() if log_level else None},
        "discovery": {"enabled": False if no_discovery else None},
    }
    cfg = load_or_exit(config_path, overrides)
    from nexus import logs, server
    from nexus.errors import StartupError

    logs.setup(cfg.logging)
    try:
        server.run(cfg)
    except StartupError as exc:
        logs.flush()
        raise click.ClickException(str(exc)) from None

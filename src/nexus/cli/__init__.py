"""The ``nexus`` command: ``serve`` runs the gateway; the other commands ask a running one."""

from __future__ import annotations

import click

from nexus import __version__
from nexus.cli.admin import backends, health, models
from nexus.cli.budget import budget
from nexus.cli.config_cmd import config
from nexus.cli.fleet import fleet, operations
from nexus.cli.serve import serve
from nexus.cli.tenants import keys, tenants


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="nexus")
def cli() -> None:
    """Nexus: one OpenAI-compatible endpoint for every LLM server you own."""


cli.add_command(serve)
cli.add_command(backends)
cli.add_command(models)
cli.add_command(health)
cli.add_command(config)
cli.add_command(operations)
cli.add_command(fleet)
cli.add_command(budget)
cli.add_command(tenants)
cli.add_command(keys)


def main() -> None:
    cli()

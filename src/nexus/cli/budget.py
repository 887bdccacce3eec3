"""``nexus budget``: this billing cycle's cloud spend against the monthly limit."""

from __future__ import annotations

import click

from nexus.cli.admin import call, emit_json, json_option, table, url_option


@click.command()
@json_option
@url_option
def budget(as_json: bool, url: str | None) -> None:
    """Show the monthly budget: spent, remaining, status, spend per backend and model."""
    data = call(url, "GET", "/v1/stats")["budget"]
    if as_json:
        emit_json(data)
        return
    if data is None:
        click.echo("No budget configured ([budget] monthly_limit).")
        return
    click.echo(
        f"Spent: ${data['spent_usd']:.2f} of ${data['limit_usd']:.2f} "
        f"(${data['remaining_usd']:.2f} left)"
    )
    click.echo(f"Status: {data['status']} (at the limit: {data['hard_limit_action']})")
    click.echo(f"Cycle: {data['cycle_start'][:10]} to {data['cycle_end'][:10]}")
    rows = data["by_backend_model"]
    if rows:
        table(
            ["Backend", "Model", "Requests", "Tokens in", "Tokens out", "Cost"],
            [
                [
                    r["backend"],
                    r["model"],
                    str(r["requests"]),
                    str(r["prompt_tokens"]),
                    str(r["completion_tokens"]),
                    f"${r['cost_usd']:.4f}",
                ]
                for r in rows
            ],
        )

"""``nexus tenants`` and ``nexus keys``: who may use the running Nexus, with what limits."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click

from nexus.cli.admin import call, emit_json, json_option, table, url_option

LIMIT_OPTIONS = [
    click.option(
        "--models",
        "models",
        multiple=True,
        metavar="PATTERN",
        help="Allowed models (glob; repeat). None: all.",
    ),
    click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute (0: no limit)."),
    click.option("--burst", type=click.IntRange(min=0), help="Requests at once (0: rpm)."),
    click.option("--tpm", type=click.IntRange(min=0), help="Tokens per minute (0: no limit)."),
    click.option(
        "--monthly-tokens",
        type=click.IntRange(min=0),
        help="Tokens per billing cycle (0: no quota).",
    ),
    click.option(
        "--monthly-cost", type=click.FloatRange(min=0), help="USD per billing cycle (0: no quota)."
    ),
]


def limit_options(fn: Any) -> Any:
    for option in reversed(LIMIT_OPTIONS):
        fn = option(fn)
    return fn


def limits(**given: Any) -> dict[str, Any]:
    """The options given, as the admin API's fields (omitted ones are left as they are)."""
    fields = {k: v for k, v in given.items() if v is not None and k != "models"}
    if given.get("models"):
        fields["models"] = list(given["models"])
    return fields


def _limit(value: Any, unit: str = "") -> str:
    return f"{value}{unit}" if value else "-"


@click.group()
def tenants() -> None:
    """Tenants: who may call Nexus (auth on), their models, limits and quotas."""


@tenants.command("create")
@click.argument("name")
@limit_options
@url_option
def create(name: str, url: str | None, **given: Any) -> None:
    """Create a tenant (then: nexus keys create --tenant NAME)."""
    created = call(url, "POST", "/admin/tenants", {"name": name, **limits(**given)})
    click.echo(f"created tenant {created['name']}")


@tenants.command("update")
@click.argument("name")
@limit_options
@url_option
def update(name: str, url: str | None, **given: Any) -> None:
    """Change a tenant's models, limits or quotas."""
    call(url, "PATCH", "/admin/tenants/" + quote(name, safe=""), limits(**given))
    click.echo(f"updated tenant {name}")


@tenants.command("delete")
@click.argument("name")
@url_option
def delete(name: str, url: str | None) -> None:
    """Delete a tenant and its keys."""
    call(url, "DELETE", "/admin/tenants/" + quote(name, safe=""))
    click.echo(f"deleted tenant {name} (its keys no longer work)")


@tenants.command("list")
@json_option
@url_option
def list_tenants(as_json: bool, url: str | None) -> None:
    """List tenants with their limits and this cycle's use."""
    items = call(url, "GET", "/admin/tenants")["tenants"]
    if as_json:
        emit_json(items)
        return
    table(
        ["Tenant", "Models", "RPM", "TPM", "Quota", "Used", "Keys"],
        [
            [
                t["name"] + (" (config)" if t["static"] else ""),
                ", ".join(t["models"]) or "all",
                _limit(t["rpm"]),
                _limit(t["tpm"]),
                _quota(t),
                f"{t['cycle']['tokens']} tok, ${t['cycle']['cost_usd']:.2f}",
                str(t["keys"]),
            ]
            for t in items
        ],
    )


def _quota(t: dict[str, Any]) -> str:
    parts = []
    if t["monthly_tokens"]:
        parts.append(f"{t['monthly_tokens']} tok")
    if t["monthly_cost"]:
        parts.append(f"${t['monthly_cost']:.2f}")
    return ", ".join(parts) or "-"


@tenants.command("show")
@click.argument("name")
@json_option
@url_option
def show(name: str, as_json: bool, url: str | None) -> None:
    """One tenant, its keys (ids, never the keys) and this cycle's use."""
    data = call(url, "GET", "/admin/tenants/" + quote(name, safe=""))
    if as_json:
        emit_json(data)
        return
    click.echo(f"Tenant: {data['name']}")
    click.echo(f"Models: {', '.join(data['models']) or 'all'}")
    click.echo(
        f"Limits: {_limit(data['rpm'])} requests/min (burst {_limit(data['burst'])}), "
        f"{_limit(data['tpm'])} tokens/min"
    )
    click.echo(f"Quota: {_quota(data)}")
    cycle = data["cycle"]
    click.echo(f"This cycle: {cycle['tokens']} tokens, ${cycle['cost_usd']:.4f}")
    for key in data["keys"]:
        click.echo(f"  key {key['id']}: {_key_state(key)}")


@tenants.command("usage")
@click.argument("name", required=False)
@click.option("--since", metavar="YYYY-MM-DD", help="From this day (default: the last 31 days).")
@json_option
@url_option
def usage(name: str | None, since: str | None, as_json: bool, url: str | None) -> None:
    """Requests, tokens and cost per tenant, model and day."""
    path = "/admin/usage" + (f"/{quote(name, safe='')}" if name else "")
    data = call(url, "GET", path + (f"?since={quote(since)}" if since else ""))
    if as_json:
        emit_json(data)
        return
    table(
        ["Tenant", "Day", "Model", "Requests", "Tokens in", "Tokens out", "Cost"],
        [
            [
                r["tenant"],
                r["day"],
                r["model"],
                str(r["requests"]),
                str(r["prompt_tokens"]),
                str(r["completion_tokens"]),
                f"${r['cost_usd']:.4f}",
            ]
            for r in data["usage"]
        ],
    )


@click.group()
def keys() -> None:
    """API keys of tenants (shown once, at creation; stored only as a hash)."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key belongs to.")
@click.option("--expires", metavar="30d|12h|YYYY-MM-DD", help="When it stops working.")
@url_option
def create_key(tenant: str, expires: str | None, url: str | None) -> None:
    """Create a key and print it (the only time it is shown)."""
    body = {"tenant": tenant, "expires": expiry(expires) if expires else None}
    created = call(url, "POST", "/admin/keys", body)
    click.echo(created["key"])
    click.echo(
        f"(key {created['id']} of tenant {created['tenant']}: store it now, it is not shown again)",
        err=True,
    )


@keys.command("list")
@click.option("--tenant", help="Only this tenant's keys.")
@json_option
@url_option
def list_keys(tenant: str | None, as_json: bool, url: str | None) -> None:
    """List keys (ids and states, never the keys)."""
    path = "/admin/keys" + (f"?tenant={quote(tenant)}" if tenant else "")
    items = call(url, "GET", path)["keys"]
    if as_json:
        emit_json(items)
        return
    table(
        ["Key id", "Tenant", "Created", "State"],
        [[k["id"], k["tenant"], _date(k["created"]), _key_state(k)] for k in items],
    )


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@url_option
def revoke(key_id: str, url: str | None) -> None:
    """Revoke a key: refused everywhere within a second."""
    call(url, "DELETE", "/admin/keys/" + quote(key_id, safe=""))
    click.echo(f"revoked key {key_id}")


def expiry(text: str) -> float:
    """``30d``, ``12h``, ``90m`` from now, or a date (``YYYY-MM-DD``, 00:00 UTC)."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        seconds = {"d": 86400, "h": 3600, "m": 60}[match.group(2)]
        return time.time() + int(match.group(1)) * seconds
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise click.BadParameter(
            "expected 30d, 12h, 90m or YYYY-MM-DD", param_hint="--expires"
        ) from None


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def _key_state(key: dict[str, Any]) -> str:
    if key["revoked"]:
        return "revoked"
    if key["expires"] is not None:
        if key["expires"] <= time.time():
            return "expired"
        return f"expires {_date(key['expires'])}"
    return "active"

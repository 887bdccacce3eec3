"""``nexus backends|models|health``: ask the running server over its HTTP API.

The server is found with ``--url``, ``$NEXUS_URL``, or the configured host and port.
These commands never build a registry of their own: they show what the server sees.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

import click
import orjson

from nexus.api.credentials import secret_bytes
from nexus.config import BACKEND_TYPES, ConfigError, load
from nexus.registry import BackendStatus

STATUSES = tuple(s.value for s in BackendStatus)
TYPE_NAMES = {
    "ollama": "Ollama",
    "vllm": "vLLM",
    "llamacpp": "llama.cpp",
    "exo": "exo",
    "lmstudio": "LM Studio",
    "openai": "OpenAI",
    "generic": "Generic",
}
url_option = click.option(
    "--url",
    envvar="NEXUS_URL",
    metavar="URL",
    help="Nexus server (default: $NEXUS_URL, else the configured host and port).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Output as JSON.")


def server_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    try:
        cfg = load()
    except ConfigError:
        return "http://127.0.0.1:8000"
    host = cfg.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.server.port}"


def call(url: str | None, method: str, path: str, body: Any = None) -> Any:
    base = server_url(url)
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token := os.environ.get("NEXUS_ADMIN_TOKEN"):
        # The server reads the token as its bytes (``secret_bytes``); http.client writes a
        # header as latin-1, so those bytes go in as the latin-1 characters that encode to them.
        request.add_header("Authorization", "Bearer " + secret_bytes(token).decode("latin-1"))
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise click.ClickException(f"{base}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"cannot reach Nexus at {base}: {reason}") from None


def emit_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def table(columns: list[str], rows: list[list[str]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    view = Table(box=box.SQUARE, show_lines=False)
    for column in columns:
        view.add_column(column, overflow="fold")  # a narrow terminal wraps, never elides
    for row in rows:
        view.add_row(*row, style=None)
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 200  # piped into grep or a file: no terminal to fit
    console.print(view)


@click.group(invoke_without_command=True)
@json_option
@click.option(
    "--status", type=click.Choice(STATUSES, case_sensitive=False), help="Filter by status."
)
@url_option
@click.pass_context
def backends(ctx: click.Context, as_json: bool, status: str | None, url: str | None) -> None:
    """List all backends (or add / remove one)."""
    if ctx.invoked_subcommand is not None:
        return
    items = call(url, "GET", "/admin/backends")["backends"]
    if status:
        items = [b for b in items if b["status"] == status.lower()]
    if as_json:
        emit_json(items)
        return
    table(
        ["Name", "URL", "Type", "Zone", "Tier", "Status", "Models", "Source"],
        [
            [
                b["name"],
                b["url"],
                TYPE_NAMES.get(b["type"], b["type"]),
                b["zone"],
                str(b["tier"]),
                b["status"].capitalize(),
                str(len(b["models"])),
                "mDNS*" if b["discovery_source"] == "mdns" else b["discovery_source"],
            ]
            for b in items
        ],
    )
    if any(b["discovery_source"] == "mdns" for b in items):
        click.echo(
            "* discovered on the LAN: used for a model only when no configured backend can "
            "serve it, and never sent clients' credentials (see discovery.allow)"
        )


@backends.command("add")
@click.argument("backend_url")
@click.option("--name", help="Display name (default: host:port).")
@click.option(
    "--type",
    "kind",
    type=click.Choice(BACKEND_TYPES, case_sensitive=False),
    help="Backend type (detected by probing when omitted).",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 100),
    default=50,
    show_default=True,
    help="Routing priority (lower = prefer).",
)
@url_option
def add(
    backend_url: str, name: str | None, kind: str | None, priority: int, url: str | None
) -> None:
    """Add a backend to the running server."""
    body: dict[str, Any] = {"url": backend_url, "priority": priority}
    if name:
        body["name"] = name
    if kind:
        body["type"] = kind.lower()
    added = call(url, "POST", "/admin/backends", body)
    click.echo(
        f"added {added['name']} ({TYPE_NAMES.get(added['type'], added['type'])}, "
        f"{added['status']}, {len(added['models'])} models) id={added['id']}"
    )


@backends.command("remove")
@click.argument("ref", metavar="ID|NAME|URL")
@url_option
def remove(ref: str, url: str | None) -> None:
    """Remove a backend by id, name or URL."""
    from urllib.parse import quote

    removed = call(url, "DELETE", "/admin/backends/" + quote(ref, safe=""))["removed"]
    click.echo(f"removed {removed['name']} ({removed['url']})")


def _caps(caps: dict[str, bool | None]) -> str:
    return ", ".join(k for k in ("vision", "tools", "json_mode", "embeddings") if caps.get(k))


@click.group(invoke_without_command=True)
@json_option
@click.option(
    "--backend", "backend_ref", metavar="ID", help="Only models of this backend (id or name)."
)
@url_option
@click.pass_context
def models(ctx: click.Context, as_json: bool, backend_ref: str | None, url: str | None) -> None:
    """List all available models (or load, unload, migrate one)."""
    if ctx.invoked_subcommand is not None:
        return
    items = call(url, "GET", "/v1/models")["data"]
    if backend_ref:
        known = call(url, "GET", "/admin/backends")["backends"]
        match = [b for b in known if backend_ref in (b["id"], b["name"], b["url"])]
        if not match:
            raise click.ClickException(f"no backend {backend_ref!r}")
        names = {m["id"] for m in match[0]["models"]}
        items = [m for m in items if m["id"] in names]
    if as_json:
        emit_json(items)
        return
    table(
        ["Model", "Backends", "Zone", "Tier", "Context", "Capabilities"],
        [
            [
                m["id"],
                ", ".join(b["name"] for b in m["backends"]),
                m["zone"],
                str(m["tier"]),
                str(m["context_length"] or "?"),
                _caps(m["capabilities"]),
            ]
            for m in items
        ],
    )


# Each action answers with an operation at once; nexus.cli.fleet follows it (imported in the
# command, as it imports this module's helpers).
backend_option = click.option(
    "--backend", "backend_ref", metavar="ID", required=True, help="Backend (id, name or URL)."
)
wait_option = click.option(
    "--wait", is_flag=True, help="Follow the operation until it succeeds or fails."
)


@models.command("load")
@click.argument("model")
@backend_option
@click.option("--pull", is_flag=True, help="Download the model first if the backend lacks it.")
@wait_option
@json_option
@url_option
def load_model(
    model: str, backend_ref: str, pull: bool, wait: bool, as_json: bool, url: str | None
) -> None:
    """Load MODEL into a backend's memory."""
    from nexus.cli.fleet import submit

    body = {"model": model, "backend": backend_ref, "pull": pull}
    submit(url, "/admin/models/load", body, wait=wait, as_json=as_json)


@models.command("unload")
@click.argument("model")
@backend_option
@wait_option
@json_option
@url_option
def unload_model(model: str, backend_ref: str, wait: bool, as_json: bool, url: str | None) -> None:
    """Unload MODEL from a backend's memory (refused while it serves requests)."""
    from nexus.cli.fleet import submit

    body = {"model": model, "backend": backend_ref}
    submit(url, "/admin/models/unload", body, wait=wait, as_json=as_json)


@models.command("migrate")
@click.argument("model")
@click.option("--from", "source", metavar="ID", required=True, help="Backend it leaves.")
@click.option("--to", "target", metavar="ID", required=True, help="Backend it moves to.")
@wait_option
@json_option
@url_option
def migrate_model(
    model: str, source: str, target: str, wait: bool, as_json: bool, url: str | None
) -> None:
    """Move MODEL: load it on --to, wait until it serves there and --from's requests end,
    then unload it from --from."""
    from nexus.cli.fleet import submit

    body = {"model": model, "from": source, "to": target}
    submit(url, "/admin/models/migrate", body, wait=wait, as_json=as_json)


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {int(seconds) % 60}s"


@click.command()
@json_option
@url_option
def health(as_json: bool, url: str | None) -> None:
    """Show health status."""
    data = call(url, "GET", "/health")
    if as_json:
        emit_json(data)
        return
    b = data["backends"]
    click.echo(f"Status: {data['status'].capitalize()}")
    click.echo(f"Uptime: {_duration(data['uptime_seconds'])}")
    click.echo(f"Backends: {b['healthy']}/{b['total']} healthy")
    click.echo(f"Models: {data['models']} available")

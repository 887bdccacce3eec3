"""``nexus operations`` and ``nexus fleet``, and how ``nexus models load|unload|migrate``
hand their operation to the running server and (with ``--wait``) follow it to its end."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import click

from nexus.cli.admin import call, emit_json, json_option, table, url_option, wait_option

FOLLOW_SECONDS = 0.5  # how often --wait asks the server how an operation is doing
GiB = 2**30


def submit(url: str | None, path: str, body: Any, *, wait: bool, as_json: bool) -> None:
    """POST an action; print its operation; with ``wait``, follow it to its end."""
    op = call(url, "POST", path, body)["operation"]
    if as_json and not wait:
        emit_json(op)
        return
    if not as_json:
        click.echo(f"{op['id']}: {action(op)} ({op['state']})")
    if wait:
        follow(url, op, as_json=as_json)


def follow(url: str | None, op: dict[str, Any], *, as_json: bool) -> None:
    """Poll the operation until it is done; exit 1 with its reason when it failed."""
    shown = (op["state"], op["step"])
    tenth = -1
    while op["state"] in ("pending", "running"):
        time.sleep(FOLLOW_SECONDS)
        op = call(url, "GET", "/admin/operations/" + quote(op["id"], safe=""))
        if as_json:
            continue
        if (op["state"], op["step"]) != shown and op["step"]:
            click.echo(f"  {op['step']}")
        shown = (op["state"], op["step"])
        done = _percent(op.get("progress"))
        if done is not None and done // 10 != tenth:
            tenth = done // 10
            click.echo(f"  {_progress(op['progress'])}")
    if as_json:
        emit_json(op)
    if op["state"] == "failed":
        raise click.ClickException(f"{op['id']} failed: {op['reason']}")
    if not as_json:
        click.echo(f"{op['id']}: succeeded in {_took(op)}")


def action(op: dict[str, Any]) -> str:
    if op["kind"] == "migrate":
        return f"migrate {op['model']} from {op['source']} to {op['backend']}"
    text = f"{op['kind']} {op['model']} on {op['backend']}"
    if op["pull"]:
        text += " (pull first)"
    if op["evict"]:
        text += f" (unloading {', '.join(op['evict'])} first)"
    return text


def _percent(progress: dict[str, Any] | None) -> int | None:
    if not progress or not progress.get("total") or progress.get("completed") is None:
        return None
    return min(100, int(progress["completed"] * 100 / progress["total"]))


def _progress(progress: dict[str, Any]) -> str:
    done = _percent(progress)
    return (
        f"{progress['status']}: {done}% of {progress['total'] / GiB:.1f} GB"
        if done is not None
        else str(progress["status"])
    )


def _took(op: dict[str, Any]) -> str:
    if op["started_at"] is None or op["finished_at"] is None:
        return "-"
    return f"{op['finished_at'] - op['started_at']:.1f} s"


def _clock(when: float | None) -> str:
    return "-" if when is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


@click.command()
@click.argument("op_id", metavar="[ID]", required=False)
@json_option
@url_option
def operations(op_id: str | None, as_json: bool, url: str | None) -> None:
    """List model load / unload / migrate operations (or show one)."""
    if op_id:
        items = [call(url, "GET", "/admin/operations/" + quote(op_id, safe=""))]
    else:
        items = call(url, "GET", "/admin/operations")["operations"]
    if as_json:
        emit_json(items[0] if op_id else items)
        return
    if not items:
        click.echo("No operations yet.")
        return
    rows = []
    for op in items:
        if op["state"] == "failed":
            detail = op["reason"]
        elif op.get("progress") and op["state"] == "running":
            detail = f"{op['step']}, {_progress(op['progress'])}"
        else:
            detail = op["step"]
        rows.append(
            [op["id"], action(op), op["state"], detail, _clock(op["started_at"]), _took(op)]
        )
    table(["ID", "Action", "State", "Step / reason", "Started", "Took"], rows)


@click.group(invoke_without_command=True)
@json_option
@url_option
@click.pass_context
def fleet(ctx: click.Context, as_json: bool, url: str | None) -> None:
    """Show what the fleet holds and which models it recommends loading where."""
    if ctx.invoked_subcommand is not None:
        return
    data = call(url, "GET", "/admin/fleet/recommendations")
    if as_json:
        emit_json(data)
        return
    if not data["enabled"]:
        click.echo("Recommendations are off ([fleet] enabled = false).")
        return
    click.echo(f"Last analysis: {_clock(data['analyzed_at'])}")
    if data["backends"]:
        table(
            [
                "Backend",
                "Memory GB",
                "Used GB",
                f"Free GB ({data['headroom_percent']:g}% kept)",
                "Loaded",
                "Hot",
            ],
            [
                [
                    b["backend"],
                    f"{b['vram_gb']:g}",
                    f"{b['used_gb']:g}",
                    f"{b['free_gb']:g}",
                    ", ".join(b["loaded"]),
                    ", ".join(b["hot"]),
                ]
                for b in data["backends"]
            ],
        )
    recs = data["recommendations"]
    if not recs:
        click.echo("No recommendations.")
        return
    table(
        ["ID", "Load", "On", "Confidence", "Expires", "Applied by", "Why"],
        [
            [
                r["id"],
                r["model"],
                r["backend"],
                f"{r['confidence']:.0%}",
                _clock(r["expires_at"]),
                r["operation"] or "",
                r["reason"],
            ]
            for r in recs
        ],
    )
    if not data["auto_apply"]:
        click.echo("Apply one with: nexus fleet apply ID")


@fleet.command("apply")
@click.argument("rec_id", metavar="ID")
@wait_option
@json_option
@url_option
def apply(rec_id: str, wait: bool, as_json: bool, url: str | None) -> None:
    """Apply a recommendation: load its model (an operation)."""
    path = "/admin/fleet/apply/" + quote(rec_id, safe="")
    submit(url, path, None, wait=wait, as_json=as_json)

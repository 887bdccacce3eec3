"""``nexus config init``: write a commented example config built from the settings' help."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click
import orjson

from nexus.config import Config

HEADER = """\
# Nexus configuration. Every key is optional; the values shown are the defaults.
# Precedence: command-line flags > NEXUS_* environment variables > this file > defaults.
"""

EXAMPLES: dict[str, str] = {
    "routing.aliases": '# "gpt-4" = "llama3:70b"\n# "gpt-3.5-turbo" = "mistral:7b"\n',
    "routing.fallbacks": '# "llama3:70b" = ["qwen2:72b", "mixtral:8x7b"]\n',
    "logging.components": '# routing = "debug"\n',
}

BACKENDS = """\
# Static backends. Each [[backends]] block is one server; types: ollama, vllm, llamacpp,
# lmstudio, exo, openai, generic. API keys come from environment variables (api_key_env).
[[backends]]
name = "local-ollama"
url = "http://localhost:11434"
type = "ollama"
priority = 1

# [[backends]]
# name = "gpu-server"
# url = "http://localhost:8001"
# type = "vllm"
# priority = 2

# [[backends]]
# name = "llama-cpp"
# url = "http://localhost:8080"
# type = "llamacpp"
# priority = 3
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()  # strings and lists of strings: JSON is valid TOML


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in text.splitlines())


def _section(cls: type[Any], instance: Any, name: str) -> str:
    out = [f"[{name}]\n"]
    tables = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        help_text = f.metadata["help"]
        if dataclasses.is_dataclass(hints[f.name]):
            tables.append(
                "\n" + _comment(help_text) + _section(hints[f.name], value, f"{name}.{f.name}")
            )
        elif isinstance(value, dict):
            key = f"{name}.{f.name}"
            tables.append(f"\n{_comment(help_text)}[{key}]\n{EXAMPLES.get(key, '')}")
        else:
            out.append(_comment(help_text) + f"{f.name} = {_toml(value)}\n")
    return "".join(out) + "".join(tables)


def example_config() -> str:
    defaults = Config()
    parts = [HEADER]
    for f in dataclasses.fields(Config):
        if f.metadata.get("internal") or f.name == "backends":
            continue
        parts.append(
            "\n" + _section(type(getattr(defaults, f.name)), getattr(defaults, f.name), f.name)
        )
    parts.append("\n" + BACKENDS)
    return "".join(parts)


@click.group()
def config() -> None:
    """Configuration helpers."""


@config.command("init")
@click.option(
    "-o", "--output", default="nexus.toml", show_default=True, metavar="FILE", help="Output file."
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(output: str, force: bool) -> None:
    """Generate an example config file."""
    path = Path(output)
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to overwrite")
    path.write_text(example_config(), encoding="utf-8")
    click.echo(f"wrote {path}")

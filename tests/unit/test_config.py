"""Config loading: defaults < file < env < flags, strict keys, one-line errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from nexus import config
from nexus.cli.config_cmd import example_config
from nexus.config import Config, ConfigError, iter_settings, load

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(env={})
    assert cfg.server.host == "0.0.0.0" and cfg.server.port == 8000
    assert cfg.server.request_timeout_seconds == 300
    assert cfg.server.max_concurrent_requests == 1000
    assert cfg.discovery.enabled is True
    assert cfg.discovery.service_types == ["_ollama._tcp.local", "_llm._tcp.local"]
    assert cfg.discovery.grace_period_seconds == 60
    assert (cfg.health_check.interval_seconds, cfg.health_check.timeout_seconds) == (30, 5)
    assert (cfg.health_check.failure_threshold, cfg.health_check.recovery_threshold) == (3, 2)
    assert cfg.routing.strategy == "smart" and cfg.routing.max_retries == 2
    w = cfg.routing.weights
    assert (w.priority, w.load, w.latency) == (50, 30, 20)
    assert cfg.logging.level == "info" and cfg.logging.format == "pretty"
    assert not cfg.has_file


def test_spec_example_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 8000
request_timeout_seconds = 300
max_concurrent_requests = 1000
[discovery]
enabled = true
service_types = ["_ollama._tcp.local", "_llm._tcp.local"]
grace_period_seconds = 60
[health_check]
enabled = true
interval_seconds = 30
timeout_seconds = 5
failure_threshold = 3
recovery_threshold = 2
[routing]
strategy = "smart"
max_retries = 2
[routing.weights]
priority = 50
load = 30
latency = 20
[routing.aliases]
"gpt-4" = "llama3:70b"
"gpt-3.5-turbo" = "mistral:7b"
[routing.fallbacks]
"llama3:70b" = ["qwen2:72b", "mixtral:8x7b"]
[[backends]]
name = "local-ollama"
url = "http://localhost:11434"
type = "ollama"
priority = 1
[[backends]]
name = "gpu-server"
url = "http://192.168.1.100:8000"
type = "vLLM"
priority = 2
[logging]
level = "info"
format = "pretty"
""",
    )
    cfg = load(path, env={})
    assert [b.type for b in cfg.backends] == ["ollama", "vllm"]
    assert cfg.routing.aliases["gpt-4"] == "llama3:70b"
    assert cfg.routing.fallbacks["llama3:70b"] == ["qwen2:72b", "mixtral:8x7b"]
    assert cfg.source == str(path)


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\nhost = '10.0.0.1'\n[logging]\nlevel = 'warn'\n")
    assert load(path, env={}).server.port == 9000
    env = {"NEXUS_PORT": "9100", "NEXUS_LOG_LEVEL": "DEBUG", "NEXUS_DISCOVERY": "false"}
    cfg = load(path, env=env)
    assert (cfg.server.port, cfg.logging.level, cfg.discovery.enabled) == (9100, "debug", False)
    assert cfg.server.host == "10.0.0.1"
    cfg = load(path, env=env, overrides={"server": {"port": 9200, "host": None}})
    assert cfg.server.port == 9200 and cfg.server.host == "10.0.0.1"


def test_nexus_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9300\n")
    assert load(env={"NEXUS_CONFIG": str(path)}).server.port == 9300
    with pytest.raises(ConfigError, match="not found"):
        load(env={"NEXUS_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\nport = 1", "invalid TOML"),
        ("[server]\nprot = 8000\n", "server.prot: unknown key"),
        ("[serverr]\n", "serverr: unknown key"),
        ("[server]\nport = 'eighty'\n", "server.port: expected a number"),
        ("[server]\nport = 70000\n", "server.port: must be at most 65535"),
        ("[server]\nport = 1.5\n", "server.port: expected a whole number"),
        ("[routing]\nstrategy = 'fastest'\n", "routing.strategy: 'fastest' is not one of"),
        ("[discovery]\nenabled = 'yes'\n", "discovery.enabled: expected true or false"),
        ("[[backends]]\nname = 'a'\n", "backends[0].url: required"),
        ("[[backends]]\nname = 'a'\nurl = 'ftp://x'\n", "must start with http"),
        (
            "[[backends]]\nname='a'\nurl='http://x'\n[[backends]]\nname='a'\nurl='http://y'\n",
            "duplicate name",
        ),
        ("[routing.aliases]\na = 'b'\nb = 'a'\n", "alias cycle: a -> b -> a"),
        ("[routing.aliases]\na='b'\nb='c'\nc='d'\nd='e'\n", "longer than 3 levels"),
        ("[health_check]\ninterval_seconds = -1\n", "must be at least"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.toml", env={})


def test_bad_env_value() -> None:
    with pytest.raises(ConfigError, match="NEXUS_PORT"):
        load(env={"NEXUS_PORT": "http"}, overrides=None)


def test_env_value_out_of_range_names_file_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nhost = '127.0.0.1'\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={"NEXUS_PORT": "70000"})
    assert str(info.value).startswith(f"{path} + $NEXUS_PORT: server.port: must be at most")


def test_every_setting_has_help_and_is_documented() -> None:
    docs = DOCS.read_text()
    for key, field in iter_settings():
        assert field.metadata.get("help"), f"{key} has no help text"
        # A row of a settings table (a section: its heading); not a mention in passing.
        documented = f"| `{key}` |" in docs or f"### `{key}`" in docs
        assert documented, f"{key} has no row (or heading) in docs/configuration.md"


def test_config_init_example_is_accepted_and_complete(tmp_path: Path) -> None:
    text = example_config()
    cfg = load(write(tmp_path, text), env={})
    defaults = Config()
    for section in ("server", "discovery", "health_check", "routing", "logging"):
        assert getattr(cfg, section) == getattr(defaults, section)
    assert [b.url for b in cfg.backends] == ["http://localhost:11434"]
    for key, field in iter_settings():
        if "[]" not in key and not dataclasses.is_dataclass(field.type):
            leaf = key.rsplit(".", 1)[-1]
            assert leaf in text, f"{key} missing from config init output"


def test_normalize_choice() -> None:
    assert config.normalize_choice("llama.cpp", config.BACKEND_TYPES) == "llamacpp"
    assert config.normalize_choice("Round-Robin", config.STRATEGIES) == "round_robin"
    assert config.normalize_choice("WARNING", config.LOG_LEVELS) == "warn"
    assert config.normalize_choice("nope", config.BACKEND_TYPES) is None


def test_backend_type_is_a_synonym_of_type_but_not_both(tmp_path: Path) -> None:
    entry = "[[backends]]\nname = 'a'\nurl = 'http://x'\n"
    cfg = load(write(tmp_path, entry + "backend_type = 'vLLM'\n"), env={})
    assert [(b.type, b.backend_type) for b in cfg.backends] == [("vllm", "")]
    assert cfg.backends[0].zone == "restricted"
    cloud = "[[backends]]\nname = 'c'\nbackend_type = 'anthropic'\napi_key_env = 'K'\n"
    cfg = load(write(tmp_path, cloud), env={})
    assert cfg.backends[0].type == "anthropic" and cfg.backends[0].zone == "open"
    assert cfg.backends[0].url.startswith("https://")  # the provider's URL, as for type
    path = write(tmp_path, entry + "type = 'vllm'\nbackend_type = 'vllm'\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert "backends[0]: give type or backend_type, not both" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "google"])
def test_cloud_keys_come_only_from_the_environment(tmp_path: Path, kind: str) -> None:
    entry = f"[[backends]]\nname = 'c'\ntype = '{kind}'\n"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, entry + "api_key_env = 'K'\napi_key = 'sk-secret-123'\n"), env={})
    message = str(info.value)
    assert "backends[0].api_key: keys are never read from the config file" in message
    assert "name the variable with api_key_env" in message
    assert "sk-secret-123" not in message
    with pytest.raises(ConfigError, match=rf"backends\[0\].api_key_env: required .* {kind}"):
        load(write(tmp_path, entry), env={})
    assert load(write(tmp_path, entry + "api_key_env = 'K'\n"), env={}).backends[0].type == kind


def test_a_literal_key_is_refused_for_local_types_too(tmp_path: Path) -> None:
    text = "[[backends]]\nname = 'a'\nurl = 'http://x'\ntype = 'vllm'\napi_key = 'k'\n"
    with pytest.raises(ConfigError, match=r"never read from the config file.*api_key_env"):
        load(write(tmp_path, text), env={})
    local = "[[backends]]\nname = 'a'\nurl = 'http://x'\ntype = 'vllm'\n"
    assert load(write(tmp_path, local), env={}).backends[0].api_key_env == ""


@pytest.mark.parametrize(
    ("tenants", "message"),
    [
        ('[[auth.tenants]]\nname = "bad name\\r\\nX: 1"\nkey_env = "K"\n', "auth.tenants[0].name"),
        ('[[auth.tenants]]\nname = "' + "a" * 65 + '"\nkey_env = "K"\n', "auth.tenants[0].name"),
        (
            '[[auth.tenants]]\nname = "t"\nkey_env = "K"\n[[auth.tenants]]\nname = "t"\n'
            'key_env = "L"\n',
            "auth.tenants[1].name: duplicate",
        ),
        ('[[auth.tenants]]\nname = "t"\nkey_env = "not a var"\n', "auth.tenants[0].key_env"),
    ],
)
def test_declared_tenants_are_checked_like_the_apis(
    tmp_path: Path, tenants: str, message: str
) -> None:
    """Tenant names label metrics and reach logs and Redis keys: a config file may not
    declare one the admin API would refuse."""
    path = write(tmp_path, "[auth]\nenabled = true\n" + tenants)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path, env={})


@pytest.mark.parametrize(
    ("tenants", "problem"),
    [
        ("{name = 'a b', key_env = 'K'}", "auth.tenants[0].name:"),
        ("{name = 'x', key_env = 'K'}, {name = 'x', key_env = 'K'}", "tenants[1].name: duplicate"),
        ("{name = 'x', key_env = 'MY-KEY'}", "auth.tenants[0].key_env: 'MY-KEY' is not an"),
        ("{name = 'x', key_env = '1KEY'}", "auth.tenants[0].key_env: '1KEY' is not an"),
    ],
)
def test_config_tenants_follow_the_admin_apis_rules(
    tmp_path: Path, tenants: str, problem: str
) -> None:
    """Their names label metrics and reach logs and Redis keys; key_env names a variable."""
    text = f"[auth]\nenabled = true\ntenants = [{tenants}]\n"
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load(write(tmp_path, text), env={})

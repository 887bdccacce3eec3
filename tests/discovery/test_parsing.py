"""Unit tests: service types, TXT records, backend types, URLs and address identity."""

from __future__ import annotations

import ipaddress

import ifaddr
import pytest

from nexus.discovery import (
    LOCAL,
    Advert,
    LocalHost,
    backend_type,
    base_path,
    build_url,
    default_type,
    instance_label,
    normalize_service_type,
    parse_models,
    parse_txt,
    pick_address,
    resolve_interfaces,
)
from nexus.registry import name_problem

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    "value",
    ["_llm._tcp.local", "_llm._tcp.local.", " _llm._tcp.local ", "_llm._tcp", "_LLM._tcp.local"],
)
def test_service_type_gets_the_trailing_dot(value: str) -> None:
    assert normalize_service_type(value).lower() == "_llm._tcp.local."


@pytest.mark.parametrize("value", ["", "llm", "_llm", "_llm._sctp.local", "http://x"])
def test_bad_service_type(value: str) -> None:
    with pytest.raises(ValueError):
        normalize_service_type(value)


def test_txt_parsing() -> None:
    txt = parse_txt(
        {
            b"Type": b"vLLM",
            b"api_path": b"/v1 ",
            b"version": b"1.0.0",
            b"models": b"llama3:70b, mistral:7b,,",
            b"flag": None,
            b"bad": b"\xff",
        }
    )
    assert txt == {
        "type": "vLLM",
        "api_path": "/v1",
        "version": "1.0.0",
        "models": "llama3:70b, mistral:7b,,",
        "flag": "",
        "bad": "\ufffd",
    }
    assert parse_models(txt["models"]) == ["llama3:70b", "mistral:7b"]
    assert parse_txt({"version": "0.1.0"}) == {"version": "0.1.0"}


@pytest.mark.parametrize(
    ("service_type", "txt", "kind"),
    [
        ("_ollama._tcp.local.", {}, "ollama"),
        ("_ollama._tcp.local.", {"version": "0.1.0"}, "ollama"),
        ("_llm._tcp.local.", {}, "generic"),
        ("_llm._tcp.local.", {"type": "vllm"}, "vllm"),
        ("_llm._tcp.local.", {"type": "llama.cpp"}, "llamacpp"),
        ("_llm._tcp.local.", {"type": "LM-Studio"}, "lmstudio"),
        ("_llm._tcp.local.", {"type": "exo"}, "exo"),
        ("_llm._tcp.local.", {"type": "nonsense"}, "generic"),
        ("_ollama._tcp.local.", {"type": "vllm"}, "vllm"),
        ("_http._tcp.local.", {"type": "ollama"}, "ollama"),
        ("_vllm._tcp.local.", {}, "vllm"),
    ],
)
def test_backend_type(service_type: str, txt: dict[str, str], kind: str) -> None:
    assert backend_type(service_type, txt) == kind


def test_default_types() -> None:
    assert default_type("_ollama._tcp.local.") == "ollama"
    assert default_type("_llm._tcp.local.") == "generic"


@pytest.mark.parametrize(
    ("api_path", "kind", "expected"),
    [
        ("", "generic", ""),
        ("/", "generic", ""),
        ("/v1", "vllm", ""),
        ("v1/", "vllm", ""),
        ("/v1/", "generic", ""),
        ("/openai/v1", "generic", "/openai"),
        ("/proxy/llm/v1/", "generic", "/proxy/llm"),
        ("/v1/chat/completions", "generic", ""),
        ("/api", "ollama", ""),
        ("/api", "generic", "/api"),
        ("/prefix", "generic", "/prefix"),
    ],
)
def test_base_path(api_path: str, kind: str, expected: str) -> None:
    assert base_path(api_path, kind) == expected


@pytest.mark.parametrize(
    ("address", "port", "api_path", "kind", "url"),
    [
        ("192.168.1.20", 11434, "", "ollama", "http://192.168.1.20:11434"),
        ("192.168.1.20", 8000, "/v1", "vllm", "http://192.168.1.20:8000"),
        ("192.168.1.20", 8000, "/v1/", "vllm", "http://192.168.1.20:8000"),
        ("10.0.0.5", 8080, "/gateway/v1", "generic", "http://10.0.0.5:8080/gateway"),
        ("::1", 8000, "/v1", "vllm", "http://[::1]:8000"),
        ("2001:db8::7", 11434, "", "ollama", "http://[2001:db8::7]:11434"),
        ("fe80::1%3", 8000, "/v1", "vllm", "http://[fe80::1%253]:8000"),
        ("fe80::1%eth0", 8000, "", "generic", "http://[fe80::1%25eth0]:8000"),
    ],
)
def test_build_url(address: str, port: int, api_path: str, kind: str, url: str) -> None:
    assert build_url(address, port, api_path, kind) == url
    assert "/v1" not in build_url(address, port, api_path, kind)


def test_pick_address_prefers_ipv4_then_global_ipv6() -> None:
    assert pick_address([ip("fe80::1"), ip("2001:db8::1"), ip("192.168.1.2")]) == ip("192.168.1.2")
    assert pick_address([ip("fe80::1"), ip("2001:db8::1")]) == ip("2001:db8::1")
    assert pick_address([ip("169.254.3.4"), ip("fe80::1")]) == ip("169.254.3.4")
    assert pick_address([]) is None


def test_instance_label() -> None:
    assert instance_label("gpu-box._ollama._tcp.local.", "_ollama._tcp.local.") == "gpu-box"
    assert instance_label("GPU Box._llm._tcp.local.", "_llm._tcp.local.") == "GPU-Box"
    assert instance_label("._llm._tcp.local.", "_llm._tcp.local.") == "mdns-backend"


LOCALHOST = LocalHost(
    names=frozenset({"localhost", "mybox", "mybox.local"}),
    addresses=frozenset({ip("192.168.1.10"), ip("fd00::10")}),
)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:11434",
        "http://127.0.0.1:11434",
        "http://127.0.1.1:11434/",
        "http://[::1]:11434",
        "http://[::ffff:127.0.0.1]:11434",
        "http://192.168.1.10:11434",
        "http://[fd00::10]:11434",
        "http://MyBox:11434",
        "http://mybox.local.:11434",
        "http://localhost:11434/v1",
    ],
)
def test_every_name_of_this_host_is_one_address(url: str) -> None:
    assert LOCALHOST.url_key(url) == (LOCAL, 11434, "")


def test_other_hosts_ports_and_prefixes_differ() -> None:
    key = LOCALHOST.url_key
    assert key("http://192.168.1.11:11434") == ("192.168.1.11", 11434, "")
    assert key("http://gpu.lan:11434") == ("gpu.lan", 11434, "")
    assert key("http://localhost:11435") == (LOCAL, 11435, "")
    assert key("http://localhost") == (LOCAL, 80, "")
    assert key("https://localhost/openai/v1") == (LOCAL, 443, "/openai")
    assert key("not a url") is None


def advert(**kw: object) -> Advert:
    base: dict[str, object] = {
        "name": "gpu._llm._tcp.local.",
        "service_type": "_llm._tcp.local.",
        "server": "gpu.local.",
        "addresses": (ip("192.168.1.50"), ip("fe80::5%2")),
        "port": 8000,
        "txt": {"type": "vllm", "api_path": "/v1", "version": "0.6", "models": "a, b"},
    }
    base.update(kw)
    return Advert(**base)  # type: ignore[arg-type]


def test_advert_backend_fields() -> None:
    a = advert()
    assert a.kind == "vllm"
    assert a.url == "http://192.168.1.50:8000"
    assert a.metadata() == {
        "mdns_service": "gpu._llm._tcp.local.",
        "mdns_host": "gpu.local",
        "version": "0.6",
        "api_path": "/v1",
        "models": "a,b",
    }
    assert a.keys(LOCALHOST) == {
        ("192.168.1.50", 8000, ""),
        ("fe80::5", 8000, ""),
        ("gpu.local", 8000, ""),
        ("gpu", 8000, ""),
    }
    assert advert(addresses=(ip("fe80::5%2"),)).url == "http://[fe80::5%252]:8000"


def test_advert_acceptance() -> None:
    assert advert().acceptable
    assert not advert(addresses=()).acceptable
    assert not advert(port=0).acceptable
    # _http._tcp is every web server on the LAN: only adverts that say they are LLMs count.
    assert not advert(service_type="_http._tcp.local.", txt={}).acceptable
    assert advert(service_type="_http._tcp.local.", txt={"type": "ollama"}).acceptable


def test_advert_of_this_host_matches_localhost() -> None:
    a = advert(addresses=(ip("192.168.1.10"),), port=11434, txt={}, server="mybox.local.")
    assert (LOCAL, 11434, "") in a.keys(LOCALHOST)


def test_resolve_interfaces() -> None:
    assert resolve_interfaces(["127.0.0.1", " ::1 ", "127.0.0.1"]) == ["127.0.0.1", "::1"]
    if any(a.name == "lo" for a in ifaddr.get_adapters()):
        assert "127.0.0.1" in resolve_interfaces(["lo"])
    with pytest.raises(ValueError, match="no-such-if0"):
        resolve_interfaces(["no-such-if0"])


@pytest.mark.parametrize(
    "raw",
    ["evil\r\nX-Injected: 1\x07", 'a "quoted"=name', "ünïcödé box", "x" * 200, "\x00\x01", "-.-"],
)
def test_instance_labels_from_the_network_are_made_safe(raw: str) -> None:
    label = instance_label(f"{raw}._ollama._tcp.local.", "_ollama._tcp.local.")
    assert name_problem(label) is None, (raw, label)

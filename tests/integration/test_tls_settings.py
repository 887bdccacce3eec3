"""Per-backend TLS settings for home-lab boxes with their own certificates: ``ca_file``
names the CA that signed one backend's certificate, ``tls_verify = false`` trusts a
self-signed one; neither changes how any other backend is checked."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus

MSG = [{"role": "user", "content": "hi"}]


def tls_fake(tmp_path: Path, model: str, name: str) -> tuple[FakeVLLM, Path]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeVLLM([FakeModel(model)])
    fake.ssl_context = context
    return fake, ca_file


async def test_ca_file_and_tls_verify_are_per_backend(tmp_path: Path) -> None:
    lab, lab_ca = tls_fake(tmp_path, "lab-model", "lab")
    selfsigned, _ = tls_fake(tmp_path, "box-model", "box")
    strict, _ = tls_fake(tmp_path, "strict-model", "strict")
    async with lab, selfsigned, strict:
        backends = [
            backend_entry(lab, "lab", "vllm", ca_file=str(lab_ca)),
            backend_entry(selfsigned, "box", "vllm", tls_verify=False),
            backend_entry(strict, "strict", "vllm"),  # system CAs only: must be refused
        ]
        async with running_nexus(tmp_path, backends) as nexus:
            registry = nexus.state.registry
            assert [registry.find(n).status.value for n in ("lab", "box", "strict")] == [  # type: ignore[union-attr]
                "healthy",
                "healthy",
                "unhealthy",
            ]
            assert "certificate verify failed" in (registry.find("strict").last_error or "")  # type: ignore[union-attr]
            for model in ("lab-model", "box-model"):
                reply = await nexus.client.chat.completions.create(model=model, messages=MSG)  # type: ignore[arg-type]
                assert reply.choices[0].message.content
            assert len(lab.chat_requests) == 1 and len(selfsigned.chat_requests) == 1


async def test_unreadable_ca_file_is_a_named_probe_failure(tmp_path: Path) -> None:
    lab, _ = tls_fake(tmp_path, "lab-model", "lab")
    async with lab:
        backends = [backend_entry(lab, "lab", "vllm", ca_file=str(tmp_path / "missing.pem"))]
        async with running_nexus(tmp_path, backends) as nexus:
            backend = nexus.state.registry.find("lab")
            assert backend is not None and backend.status.value == "unhealthy"
            assert "cannot read CA file" in (backend.last_error or "")

"""Fake LLM inference servers for Nexus tests.

Real aiohttp HTTP servers on 127.0.0.1 emulating Ollama, vLLM, llama.cpp,
LM Studio and generic OpenAI-compatible APIs, able to misbehave on command.

    async with FakeOllama([FakeModel("llama3:latest")]) as fake:
        fake.chat_behavior = Behavior.CUT_STREAM
        ...  # point the gateway at fake.url
"""

from .backends import FakeLlamaCpp, FakeLMStudio, FakeOllama, FakeOpenAI, FakeVLLM
from .base import FakeBackend
from .models import Behavior, FakeModel, HeaderDict, ReceivedRequest

__all__ = [
    "Behavior",
    "FakeBackend",
    "FakeLMStudio",
    "FakeLlamaCpp",
    "FakeModel",
    "FakeOllama",
    "FakeOpenAI",
    "FakeVLLM",
    "HeaderDict",
    "ReceivedRequest",
]

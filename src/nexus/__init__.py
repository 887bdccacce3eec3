"""Nexus: one OpenAI-compatible endpoint in front of every inference server you own."""

__version__ = "0.1.0"

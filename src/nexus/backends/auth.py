"""A backend's credentials, sent the same way by traffic and by probes.

Keys come only from the environment variable the config names (``api_key_env``); the
config file never holds one. Each provider expects its key in its own header, and only
there: never in a URL, where proxies and logs would keep it.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from nexus.dialects.anthropic import ANTHROPIC_VERSION
from nexus.registry import Backend

PROVIDERS = {"openai": "OpenAI", "anthropic": "Anthropic", "google": "Google"}


def api_key(backend: Backend) -> str | None:
    """The backend's key, or None when it has none configured (or the variable is empty)."""
    if not backend.api_key_env:
        return None
    return os.environ.get(backend.api_key_env, "").strip() or None


def headers_for(backend: Backend) -> dict[str, str]:
    """The headers that carry ``backend``'s key, as its provider expects them."""
    key = api_key(backend)
    if backend.type == "anthropic":
        # The API version is a header too, with or without a key (a keyless proxy).
        version = {"anthropic-version": ANTHROPIC_VERSION}
        return {"x-api-key": key, **version} if key else version
    if key is None:
        return {}
    if backend.type == "google":
        return {"x-goog-api-key": key}
    return {"Authorization": f"Bearer {key}"}


def provider_name(backend: Backend) -> str:
    """Who runs a cloud backend, as a person would name it."""
    if backend.type == "openai" and urlsplit(backend.url).hostname != "api.openai.com":
        return urlsplit(backend.url).hostname or "the provider"  # Groq, OpenRouter...
    return PROVIDERS.get(backend.type, backend.type)


def key_rejected(backend: Backend, status: int, body: bytes) -> bool:
    """Whether a cloud backend's answer says its API key was refused: 401 or 403, and
    Google's 400 whose error reason is API_KEY_INVALID (how the Gemini API answers a bad
    key)."""
    if not backend.cloud:
        return False
    if status in (401, 403):
        return True
    return backend.type == "google" and status == 400 and b"API_KEY_INVALID" in body


def missing_key(backend: Backend) -> str | None:
    """Why a cloud backend cannot be used for want of its key, or None."""
    if backend.cloud and api_key(backend) is None:
        return f"environment variable {backend.api_key_env} is not set"
    return None

"""Cloud providers' model listings: Anthropic (``GET /v1/models``) and Google
(``GET /v1beta/models``), both paged. Probes of cloud backends only ever list models: a
listing costs nothing, a completion would be billed every interval. OpenAI and the
OpenAI-compatible clouds use :class:`~nexus.backends.openai_compat.OpenAICompatAdapter`.
"""

from __future__ import annotations

from urllib.parse import quote

from nexus.backends.base import Listing, ProbeClient
from nexus.dialects import anthropic, gemini
from nexus.registry import Backend, Model

MAX_PAGES = 20  # a listing of thousands of models is someone else's bug


class AnthropicAdapter:
    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        models: list[Model] = []
        after = ""
        for _ in range(MAX_PAGES):
            path = "/v1/models?limit=1000" + (f"&after_id={quote(after)}" if after else "")
            page = await client.fetch(backend, "GET", path)
            models += anthropic.parse_models(page)
            last = page.get("last_id") if isinstance(page, dict) else None
            if not (isinstance(page, dict) and page.get("has_more") and isinstance(last, str)):
                break
            after = last
        return Listing(models)


class GoogleAdapter:
    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        models: list[Model] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            path = "/v1beta/models?pageSize=1000" + (f"&pageToken={quote(token)}" if token else "")
            page = await client.fetch(backend, "GET", path)
            # Embedding-only models are listed too; Nexus translates chat, not embedContent.
            models += [m for m in gemini.parse_models(page) if m.supports_chat]
            token = gemini.next_page_token(page)
            if not token:
                break
        for model in models:
            model.supports_embeddings = False
        return Listing(models)

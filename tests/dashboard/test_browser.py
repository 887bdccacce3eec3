"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright).

Set up with ``scripts/setup-browser``. Screenshots land in ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.dashboard.conftest import ARTIFACTS, XSS_MODEL, XSS_NAME, Fleet, chat, seed_traffic

CHROMIUM = "/usr/bin/chromium"
expect: Any = None

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: run scripts/setup-browser (installs Debian's chromium)",
)

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is missing: run scripts/setup-browser"
)
expect = playwright_api.expect

ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
SEED = {"ollama-box": "llama3:8b", XSS_NAME: "meta-llama/Llama-3.1-8B-Instruct"}
PHONE = {"width": 360, "height": 780}


class Watched:
    """A page whose console errors, uncaught exceptions and dialogs are collected."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("dialog", self._dialog)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(
    browser: Any,
    url: str,
    *,
    viewport: dict[str, int] = DESKTOP,
    scheme: str = "light",
    js: bool = True,
) -> Watched:
    context = await browser.new_context(
        viewport=viewport, color_scheme=scheme, java_script_enabled=js, device_scale_factor=1
    )
    watched = Watched(await context.new_page())
    await watched.page.goto(url)
    if js:
        await watched.page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
    return watched


async def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / f"{name}-viewport.png"))


async def test_page_shows_backends_and_history_updates_live(fleet: Fleet, browser: Any) -> None:
    nexus = fleet.nexus
    watched = await open_page(browser, nexus.url + "/")
    page = watched.page
    names = await page.locator("#backends .card .name").all_text_contents()
    assert sorted(names) == sorted(["ollama-box", XSS_NAME])
    assert await page.locator("#backends .card.lvl-ok").count() == 2
    matrix = await page.locator("#matrix").inner_text()
    assert "llama3:8b" in matrix and "meta-llama/Llama-3.1-8B-Instruct" in matrix
    assert await page.locator("#history li.req").count() == 0

    await chat(nexus)
    await chat(nexus, "meta-llama/Llama-3.1-8B-Instruct", stream=True)
    # (Locator waits: wait_for_function would need 'unsafe-eval', which the CSP forbids.)
    await expect(page.locator("#history li.req")).to_have_count(2, timeout=10_000)
    rows = await page.locator("#history li.req").all_inner_texts()
    assert "meta-llama/Llama-3.1-8B-Instruct" in rows[0] and "stream" in rows[0]
    assert "llama3:8b" in rows[1]
    # An error, expandable for details.
    for _ in range(3):
        await chat(nexus)
    with pytest.raises(openai.NotFoundError):
        await chat(nexus, "no-such-model")
    await page.wait_for_selector("#history li.req.lvl-bad details", timeout=10_000)
    await expect(page.locator('[data-tile="requests"] .tile-value')).to_have_text(
        "6", timeout=10_000
    )
    await page.locator("#history li.req.lvl-bad summary").first.click()
    details = await page.locator("#history li.req.lvl-bad dl.err").first.inner_text()
    assert "no-such-model" in details or "Request id" in details
    assert await page.locator("#traffic svg rect.bar").count() >= 1
    assert "SECRET-CONTENT" not in await page.content()
    # A window of past traffic (through the recorder sink): the charts draw all of it.
    seeded = seed_traffic(nexus, SEED)
    await page.reload()
    await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
    await expect(page.locator('[data-tile="requests"] .tile-value')).to_have_text(
        str(seeded + 6), timeout=10_000
    )
    assert await page.locator("#traffic svg rect.bar").count() >= 58  # every seeded bucket
    assert await page.locator("#traffic svg path.line").count() >= 2
    assert await page.locator("#history li.req").count() == 100
    with pytest.raises(openai.NotFoundError):
        await chat(nexus, "no-such-model")
    await chat(nexus, stream=True)
    await expect(page.locator("#history li.req").first).to_contain_text("stream", timeout=10_000)
    assert await page.locator("#history li.req").count() == 100  # still the last 100 only
    await page.locator("#history li.req.lvl-bad summary").first.click()
    await shoot(page, "desktop-light")
    assert watched.errors == []
    assert watched.dialogs == []


async def test_dark_mode_and_status_notice(fleet: Fleet, browser: Any) -> None:
    nexus = fleet.nexus
    seed_traffic(nexus, SEED)
    watched = await open_page(browser, nexus.url + "/", scheme="dark")
    page = watched.page
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"  # the dark palette
    await chat(nexus)
    await chat(nexus, stream=True)
    await fleet.vllm.stop()
    await page.wait_for_selector("#notices .notice.lvl-bad", timeout=10_000)
    text = await page.locator("#notices .notice.lvl-bad").first.inner_text()
    assert f"{XSS_NAME} is now unhealthy" in text
    await page.wait_for_selector("#backends .card.lvl-bad", timeout=10_000)
    await shoot(page, "desktop-dark")
    assert watched.errors == []
    assert watched.dialogs == []


async def test_markup_in_names_renders_as_text(fleet: Fleet, browser: Any) -> None:
    nexus = fleet.nexus
    watched = await open_page(browser, nexus.url + "/")
    page = watched.page
    await chat(nexus, XSS_MODEL)  # a history row rendered by the script, from a delta
    await page.wait_for_selector("#history li.req", timeout=10_000)
    await expect(page.locator("#traffic")).to_contain_text("max 1", timeout=10_000)
    for scope in ("#backends", "#matrix", "#history", "#traffic"):
        text = await page.locator(scope).inner_text()
        assert XSS_NAME in text, scope
    assert XSS_MODEL in await page.locator("#matrix").inner_text()
    assert XSS_MODEL in await page.locator("#history").inner_text()
    assert await page.locator('img[src="x"]').count() == 0
    assert await page.locator("img").count() == 0
    assert await page.locator("main b").count() == 0
    # Also through the polling path: a fresh snapshot rendered by the script.
    await page.evaluate("fetch('/dashboard.json').then(r => r.json())")
    assert watched.dialogs == []
    assert watched.errors == []


async def test_phone_width_has_no_horizontal_scroll(fleet: Fleet, browser: Any) -> None:
    nexus = fleet.nexus
    seed_traffic(nexus, SEED)
    for i in range(4):
        await chat(nexus, "meta-llama/Llama-3.1-8B-Instruct", stream=i % 2 == 0)
    with pytest.raises(openai.NotFoundError):
        await chat(nexus, "a-very-long-model-name-that-nobody-serves-anywhere/at-all-q4_K_M")
    for scheme in ("light", "dark"):
        watched = await open_page(browser, nexus.url + "/", viewport=PHONE, scheme=scheme)
        page = watched.page
        await page.wait_for_selector("#history li.req.lvl-bad details", timeout=10_000)
        await page.locator("#history li.req.lvl-bad summary").first.click()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{scheme}: page is {width}px wide"
        await shoot(page, f"phone-{scheme}")
        assert watched.errors == []


async def test_without_javascript_the_page_still_lists_backends(fleet: Fleet, browser: Any) -> None:
    await chat(fleet.nexus)
    watched = await open_page(browser, fleet.nexus.url + "/", js=False)
    page = watched.page
    names = await page.locator("#backends .card .name").all_text_contents()
    assert sorted(names) == sorted(["ollama-box", XSS_NAME])
    badges = await page.locator("#backends .card .badge").all_text_contents()
    assert badges == ["healthy", "healthy"]
    matrix = await page.locator("#matrix").inner_text()
    for model in ("llama3:8b", "llava:7b", XSS_MODEL):
        assert model in matrix
    assert await page.locator("#history li.req").count() == 1
    assert await page.locator("a.refresh").get_attribute("href") == "/"
    assert await page.locator("img").count() == 0
    await shoot(page, "desktop-nojs")
    assert watched.dialogs == []


async def test_polls_every_5_s_when_the_websocket_is_unavailable(
    fleet: Fleet, browser: Any
) -> None:
    context = await browser.new_context(viewport=DESKTOP)

    async def refuse(ws: Any) -> None:
        await ws.close()

    await context.route_web_socket("**/ws", refuse)
    watched = Watched(await context.new_page())
    page = watched.page
    await page.goto(fleet.nexus.url + "/")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "polling", timeout=10_000)
    await chat(fleet.nexus)
    await chat(fleet.nexus, stream=True)
    await expect(page.locator("#history li.req")).to_have_count(2, timeout=12_000)
    assert await page.locator("#backends .card").count() == 2
    assert watched.errors == []

"""A real browser for the web command picture's tests: Debian's chromium, headless, through Playwright.

One browser per test module (starting chromium costs about a second), a fresh context per test (its
own cookies and storage). Every page opened through ``Pages`` is watched: a console error, an uncaught
exception in the page, or a request to anything but a loopback address fails the test when it ends.
Requests to other hosts are also refused, so a page that tried to load a CDN or a map tile would fail
here even on a machine with a network.

Use from a test module::

    from tests import browser as browser_fixtures
    from tests.browser import Pages

    chromium, browser, pages = browser_fixtures.chromium, browser_fixtures.browser, browser_fixtures.pages
    pytestmark = pytest.mark.asyncio(loop_scope="module")
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Error, Page, Route, async_playwright

from gateway import config

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright's own browser downloads are not used
SCREENSHOTS = Path(os.environ.get("YIWANG_SCREENSHOTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (or is not a network address at all, like data:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return config.is_loopback(parts.hostname or "")


@dataclass
class Watch:
    """What went wrong on a context's pages: console errors, page exceptions, requests leaving the machine."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Console errors matching ``pattern`` are expected in this test (e.g. a refused connection while
        the test restarts the node); anything else still fails it."""
        self.allowed.append(re.compile(pattern))

    def problems(self) -> list[str]:
        unexpected = [e for e in self.console_errors if not any(p.search(e) for p in self.allowed)]
        return (
            [f"console error: {e}" for e in unexpected]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"request to a non-loopback host: {u}" for u in self.external_requests]
        )


class Pages:
    """Opens watched pages in fresh browser contexts; checks them when the test ends."""

    def __init__(self, browser: Browser, test_name: str) -> None:
        self.browser = browser
        self.test_name = test_name
        self.watch = Watch()
        self._contexts: list[BrowserContext] = []

    async def new(self, **context_options: Any) -> Page:
        """A page in a new context (``ignore_https_errors=True`` for a node with the test CA, etc.)."""
        context = await self.browser.new_context(viewport={"width": 1600, "height": 900}, **context_options)
        self._contexts.append(context)
        await context.route("**/*", self._only_loopback)
        page = await context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.watch.page_errors.append(str(error)))
        return page

    async def _only_loopback(self, route: Route) -> None:
        url = route.request.url
        if is_loopback(url):
            await route.continue_()
        else:
            self.watch.external_requests.append(url)
            await route.abort("blockedbyclient")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            self.watch.console_errors.append(f"{message.text} ({where})")

    async def screenshot(self, page: Page, name: str) -> Path:
        """Saves a screenshot of ``page`` as a test artifact and returns its path."""
        await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await page.screenshot(path=str(path))
        return path

    async def close(self) -> None:
        for context in self._contexts:
            try:
                await context.close()
            except Error:  # the browser may have gone already when a test failed hard
                continue


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium, which `make test` installs: a machine without it fails the browser tests, saying so."""
    if not CHROMIUM.exists():
        pytest.fail(f"no chromium at {CHROMIUM}: `make test` installs Debian's package (apt-get install chromium)")
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Debian's chromium, headless, for the whole module."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def pages(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Pages]:
    """Watched pages for one test; the test fails on any console error or external request."""
    opened = Pages(browser, request.node.name)
    try:
        yield opened
    finally:
        await opened.close()
    problems = opened.watch.problems()
    if problems:
        pytest.fail("the page misbehaved:\n" + "\n".join(problems))

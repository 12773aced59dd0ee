"""One stack and one browser for the browser tests, and a signed-in page per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.browser.stack import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Stack,
    feed,
    new_seed,
    running_stack,
    simulation,
)
from tests.support import ADMIN_TOKEN, Infra

pytestmark = pytest.mark.browser

USERS = 32
DAYS = 20


@pytest.fixture(scope="session")
async def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Every service, reports as the one origin, fed a simulated organisation."""
    sim, events = simulation(new_seed(), users=USERS, days=DAYS)
    with running_stack(infra, tmp_path_factory.mktemp("console-logs")) as services:
        await feed(services, events)
        yield Stack(services=services, sim=sim, events=events)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, driven by Playwright (which never downloads a browser)."""
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make browser`"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (no cookies) per test."""
    ctx = await browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    try:
        yield ctx
    finally:
        await ctx.close()


async def sign_in(page: Page, base: str, token: str) -> None:
    """Sign in through the login page's form."""
    await page.goto(f"{base}/console/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_load_state("networkidle")


@pytest.fixture
async def admin_page(stack: Stack, context: BrowserContext) -> Page:
    """A page signed in with the admin token."""
    page = await context.new_page()
    await sign_in(page, stack.url, ADMIN_TOKEN)
    return page

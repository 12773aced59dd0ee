"""axe-core on every console page: no serious or critical accessibility violation.

axe-core is vendored for the tests only (`tests/browser/vendor/axe-core`, see its VENDORED.md)
and injected into each page after it has rendered its data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page

from tests.browser.conftest import sign_in
from tests.browser.stack import Stack
from tests.browser.test_console import mint, top_spender_this_month

pytestmark = pytest.mark.browser

AXE = Path(__file__).with_name("vendor") / "axe-core" / "axe.min.js"
SEVERE = ("serious", "critical")
AXE_SOURCE = AXE.read_text() + "\n;undefined"


async def violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical WCAG 2.1 A/AA and best-practice violations on the page as it is."""
    # Evaluated through the debugging protocol: the console's CSP (rightly) refuses injected tags.
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE_SOURCE)
    result: dict[str, Any] = await page.evaluate(
        """async () => await axe.run(document, {
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']},
            resultTypes: ['violations'],
        })"""
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in SEVERE
    ]


async def settle(page: Page, selector: str) -> None:
    """Wait for the page's data to be drawn."""
    await page.wait_for_selector(selector)
    await page.wait_for_load_state("networkidle")


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/console/costs", "#cost-results table"),
        ("/console/activity", "#activity-users"),
        ("/console/chargeback", "#chargeback table"),
        ("/console/settings", "#user-overrides"),
        ("/console/pricing", "#price-list"),
        ("/console/billing", "#billing-title"),
        ("/console/notifications", "#deliveries-title"),
        ("/console/me", "main h1"),
    ],
)
async def test_admin_pages_have_no_serious_violations(
    stack: Stack, admin_page: Page, path: str, ready: str
) -> None:
    """Each admin page, with its data loaded, has no serious or critical axe violation."""
    await admin_page.goto(f"{stack.url}{path}")
    await settle(admin_page, ready)
    assert await violations(admin_page) == []


async def test_user_detail_with_a_limit_and_an_open_form_has_no_serious_violations(
    stack: Stack, admin_page: Page
) -> None:
    """The user page (cards, limit bar, tables) and the settings page with its add forms and a dialog open pass axe."""
    spender = await top_spender_this_month(stack)
    await admin_page.goto(f"{stack.url}/console/users/{spender['user_id']}")
    await settle(admin_page, "#by-chat table")
    assert await violations(admin_page) == []
    await admin_page.goto(f"{stack.url}/console/settings")
    await settle(admin_page, "#user-overrides")
    await admin_page.click("text=Add user limit")
    await admin_page.click("text=Add group limit")
    await admin_page.fill("#user-search", stack.sim.users[0].username)
    await admin_page.wait_for_selector("#user-results button")
    assert await violations(admin_page) == []


async def test_sign_in_and_own_pages_have_no_serious_violations(
    stack: Stack, context: BrowserContext
) -> None:
    """The sign-in page (also with an error) and a user's own page opened with a portal token pass axe."""
    page = await context.new_page()
    await page.goto(f"{stack.url}/console/login")
    assert await violations(page) == []
    # The check itself must be able to fail: an image without a text alternative is critical.
    await page.evaluate("() => document.body.append(document.createElement('img'))")
    assert "image-alt" in [v["id"] for v in await violations(page)]
    await sign_in(page, stack.url, "not-a-token")
    await page.wait_for_selector("#login-error:not([hidden])")
    assert await violations(page) == []
    token = await mint(stack, stack.sim.users[0].id)
    await sign_in(page, stack.url, token)
    await settle(page, "#my-status")
    assert await violations(page) == []

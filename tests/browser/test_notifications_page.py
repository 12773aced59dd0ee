"""The Notifications page in headless Chromium: add an endpoint, see its secret once, test, delete.

The endpoint is a real HTTP receiver started by the test; the test event it gets is checked
with the `standardwebhooks` library and the secret the page showed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Page

from tests.browser.stack import Stack, admin_get
from tests.browser.test_accessibility import settle, violations
from tests.notify_support import WebhookReceiver
from tests.support import ADMIN, eventually

pytestmark = pytest.mark.browser


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook endpoint answering 200."""
    hooks = await WebhookReceiver().start()
    try:
        yield hooks
    finally:
        await hooks.stop()


async def test_an_endpoint_is_added_tested_and_deleted_and_its_secret_shown_once(
    stack: Stack, admin_page: Page, receiver: WebhookReceiver
) -> None:
    """The secret appears once after adding; a test event reaches the receiver signed with it; delete removes the row."""
    page = admin_page
    url = receiver.url("/console-test")
    await page.goto(f"{stack.url}/console/notifications")
    await settle(page, "#notify-status-title")
    await page.fill("#webhook-url", url)
    await page.fill("#webhook-description", "browser test")
    await page.get_by_role("button", name="Add endpoint").click()
    secret = await page.locator("#new-secret").input_value()
    assert secret.startswith("whsec_")
    row = page.locator("#webhook-list tr", has_text=url)
    await row.wait_for()
    assert secret not in await page.locator("#webhook-list").inner_text()
    assert await violations(page) == []
    await page.get_by_role("button", name="Done").click()
    assert await page.locator("#new-secret").count() == 0
    await page.reload()
    await settle(page, "#webhook-list table")
    assert secret not in await page.content()

    await page.get_by_role("button", name=f"Send test event to {url}").click()
    await page.locator("#webhook-status", has_text="Test event queued").wait_for()

    async def received() -> bool:
        return len(receiver.answered()) == 1

    await eventually(received, timeout_s=30)
    doc = receiver.answered()[0].verified(secret)
    assert doc["type"] == "webhook.test"

    async def shown_delivered() -> bool:
        await page.get_by_role("button", name="Refresh").click()
        await page.wait_for_load_state("networkidle")
        rows = page.locator("#delivery-list tr", has_text=url)
        return await rows.count() >= 1 and "Delivered" in await rows.first.inner_text()

    await eventually(shown_delivered, timeout_s=30, interval_s=0.5)
    first = page.locator("#delivery-list tr", has_text=url).first
    assert await first.locator("[data-col='attempts']").get_attribute("data-value") == "1"
    assert await first.locator("[data-col='type']").get_attribute("data-value") == "webhook.test"

    await page.get_by_role("button", name=f"Delete {url}").click()
    await page.locator("dialog").get_by_role("button", name="Delete").click()
    await page.locator("#webhook-list tr", has_text=url).wait_for(state="detached")
    async with aiohttp.ClientSession() as session:
        listed = await admin_get(session, f"{stack.url}/api/v1/notifications/webhooks")
    assert url not in {w["url"] for w in listed["webhooks"]}


async def test_a_gone_endpoint_is_enabled_its_failed_delivery_sent_again_and_its_secret_rotated(
    stack: Stack, admin_page: Page
) -> None:
    """A 410 disables the endpoint and fails the test event; Enable and Send again deliver it
    under the same id; Rotate secret shows a new secret, and both secrets verify until the old
    one expires."""
    page = admin_page
    hooks = await WebhookReceiver(script=[410]).start()
    try:
        url = hooks.url("/console-gone")
        await page.goto(f"{stack.url}/console/notifications")
        await settle(page, "#notify-status-title")
        await page.fill("#webhook-url", url)
        await page.get_by_role("button", name="Add endpoint").click()
        secret = await page.locator("#new-secret").input_value()
        await page.get_by_role("button", name="Done").click()
        await page.get_by_role("button", name=f"Send test event to {url}").click()

        async def shown(row_text: str, locator: str) -> bool:
            await page.get_by_role("button", name="Refresh").click()
            await page.wait_for_load_state("networkidle")
            rows = page.locator(locator, has_text=url)
            return await rows.count() >= 1 and row_text in await rows.first.inner_text()

        await eventually(lambda: shown("Failed", "#delivery-list tr"), timeout_s=30, interval_s=0.5)
        await page.reload()
        await settle(page, "#webhook-list table")
        assert "Disabled" in await page.locator("#webhook-list tr", has_text=url).inner_text()
        await page.get_by_role("button", name=f"Enable {url}").click()
        await page.locator("#webhook-status", has_text="is sent to again").wait_for()
        await page.locator("#webhook-list tr", has_text=url).get_by_text("Active").wait_for()

        failed = page.locator("#delivery-list tr", has_text=url).first
        await failed.get_by_role(
            "button", name=re.compile(r"^Send again: msg_[0-9a-f]{32}$")
        ).click()
        await page.locator("#delivery-status", has_text="is sent again").wait_for()
        await eventually(
            lambda: shown("Delivered", "#delivery-list tr"), timeout_s=30, interval_s=0.5
        )
        assert [h.answered for h in hooks.hooks] == [410, 200]
        assert hooks.hooks[0].webhook_id == hooks.hooks[1].webhook_id
        assert hooks.hooks[1].verifies(secret)

        await page.get_by_role("button", name=f"Rotate secret of {url}").click()
        await page.locator("dialog").get_by_role("button", name="Rotate").click()
        rotated = await page.locator("#new-secret").input_value()
        assert rotated.startswith("whsec_")
        assert rotated != secret
        assert (
            "previous secret signs too until" in await page.locator("#new-secret-help").inner_text()
        )
        assert await violations(page) == []
        await page.get_by_role("button", name="Done").click()
        await page.get_by_role("button", name=f"Send test event to {url}").click()
        await eventually(lambda: _answered(hooks, 2), timeout_s=30)
        last = hooks.answered()[-1]
        assert last.verifies(rotated)
        assert last.verifies(secret)
        await page.get_by_role("button", name=f"Delete {url}").click()
        await page.locator("dialog").get_by_role("button", name="Delete").click()
        await page.locator("#webhook-list tr", has_text=url).wait_for(state="detached")
    finally:
        await hooks.stop()


async def _answered(hooks: WebhookReceiver, count: int) -> bool:
    return len(hooks.answered()) >= count


async def test_a_refused_url_is_shown_under_the_field(stack: Stack, admin_page: Page) -> None:
    """A URL the API refuses (another scheme) shows its reason under the URL field, nothing is added."""
    page = admin_page
    await page.goto(f"{stack.url}/console/notifications")
    await settle(page, "#notify-status-title")
    await page.fill("#webhook-url", "ftp://files.example.com/drop")
    await page.get_by_role("button", name="Add endpoint").click()
    error = page.locator("#webhook-url-error")
    await error.wait_for()
    assert "http:// or https://" in await error.inner_text()
    assert await page.locator("#new-secret").count() == 0


async def test_the_warning_share_is_saved_from_the_settings_page(
    stack: Stack, admin_page: Page
) -> None:
    """The settings form stores the warning share in limits, and a blank one turns warnings off."""
    page = admin_page
    await page.goto(f"{stack.url}/console/settings")
    await settle(page, "#limits-warning")
    async with aiohttp.ClientSession() as session:
        before = await admin_get(session, f"{stack.url}/api/v1/limits/config")
        try:
            await page.fill("#limits-warning", "70")
            await page.click("#limits-form button[type=submit]")
            await page.locator("#limits-status", has_text="Saved!").wait_for()
            assert (await admin_get(session, f"{stack.url}/api/v1/limits/config"))[
                "warning_threshold_percent"
            ] == 70
            await page.fill("#limits-warning", "150")
            await page.click("#limits-form button[type=submit]")
            await page.locator("#limits-warning-error", has_text="1 to 99").wait_for()
        finally:
            body = {
                k: before[k]
                for k in ("enabled", "period", "default_limit_micros", "warning_threshold_percent")
            }
            async with session.put(
                f"{stack.url}/api/v1/limits/config", json=body, headers=ADMIN
            ) as resp:
                assert resp.status == 200

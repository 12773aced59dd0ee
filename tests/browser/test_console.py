"""The console in headless Chromium, as an admin, a read-only emitter and a user with a portal token.

Every figure a page shows is compared with what the API answers for the same query.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import BrowserContext, Page

from libs.service.portal import PortalClaims, PortalSigner
from tests.browser.conftest import sign_in
from tests.browser.stack import PORTAL_SECRET, Stack, admin_get
from tests.support import ADMIN, ADMIN_TOKEN, EMITTER, EMITTER_TOKEN, eventually

pytestmark = pytest.mark.browser


def last_30_days() -> tuple[str, str]:
    """The console's default range as the API's half-open window (today included)."""
    today = datetime.now(UTC).date()
    return (today - timedelta(days=29)).isoformat(), (today + timedelta(days=1)).isoformat()


async def column_values(page: Page, table: str, column: str) -> list[str]:
    """The raw `data-value`s of one column of a table, top to bottom."""
    values: list[str] = await page.locator(f"{table} [data-col='{column}']").evaluate_all(
        "cells => cells.map(c => c.dataset.value)"
    )
    return values


async def top_spender_this_month(stack: Stack) -> dict[str, Any]:
    """The simulated user who spent the most in the current month, per the API."""
    now = datetime.now(UTC)
    start = now.replace(day=1).date().isoformat()
    end = (now.date() + timedelta(days=1)).isoformat()
    async with aiohttp.ClientSession() as session:
        page = await admin_get(
            session, f"{stack.url}/api/v1/costs/users", start_date=start, end_date=end, limit="1000"
        )
    mine: list[dict[str, Any]] = [
        u for u in page["users"] if u["user_id"].startswith(stack.sim.config.prefix)
    ]
    return mine[0]


async def check_status(stack: Stack, user_id: str) -> int:
    """The limits service's answer to a chat check for this user."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.services['limits'].url}/api/v1/limits/check",
            json={"user_id": user_id},
            headers=EMITTER,
        ) as resp,
    ):
        return resp.status


async def restore_limits(stack: Stack) -> None:
    """Limits off and no default, as other tests expect to find them."""
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{stack.url}/api/v1/limits/config",
            json={"enabled": False, "period": "month", "default_limit_micros": None},
            headers=ADMIN,
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_cost_table_matches_the_api_pages_searches_and_sorts(
    stack: Stack, admin_page: Page
) -> None:
    """The cost table shows the API's rows for the last 30 days, pages 25 at a time, searches by username and sorts by cost both ways."""
    page = admin_page
    start, end = last_30_days()
    await page.goto(f"{stack.url}/console/costs")
    await page.wait_for_selector("#cost-results table")
    async with aiohttp.ClientSession() as session:
        first = await admin_get(
            session, f"{stack.url}/api/v1/costs/users", start_date=start, end_date=end
        )
        assert first["count"] > 25
        shown = await column_values(page, "#cost-results", "user")
        assert shown == [u["user_id"] for u in first["users"]]
        costs = await column_values(page, "#cost-results", "cost")
        assert costs == [str(u["total_cost_micros"]) for u in first["users"]]
        chats = await column_values(page, "#cost-results", "chats")
        assert chats == [str(u["chat_count"]) for u in first["users"]]
        headers = await page.locator("#cost-results thead th").all_inner_texts()
        assert [h.split()[0] for h in headers] == [
            "User", "Cost", "Messages", "Chats", "Input", "Output", "Cache", "Cache",
        ]  # fmt: skip

        await page.click("text=Next")
        await page.wait_for_function(
            "() => document.querySelector('#cost-results .pager span')?.textContent.startsWith('Showing 26')"
        )
        second = await admin_get(
            session, f"{stack.url}/api/v1/costs/users", start_date=start, end_date=end, offset="25"
        )
        assert await column_values(page, "#cost-results", "user") == [
            u["user_id"] for u in second["users"]
        ]
        assert "page=2" in page.url

        sort = page.locator("#cost-results th button.sort")
        await sort.focus()
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "() => document.querySelector('#cost-results th[aria-sort]')?.getAttribute('aria-sort') === 'ascending'"
        )
        ascending = await admin_get(
            session, f"{stack.url}/api/v1/costs/users", start_date=start, end_date=end, order="asc"
        )
        assert await column_values(page, "#cost-results", "user") == [
            u["user_id"] for u in ascending["users"]
        ]
        assert "page=" not in page.url

        target = stack.sim.users[3]
        await page.fill("#cost-search", target.username)
        await page.wait_for_function(
            f"() => [...document.querySelectorAll('#cost-results [data-col=user]')].map(c => c.dataset.value).includes({orjson.dumps(target.id).decode()})"
            " && !document.querySelector('#cost-results [aria-busy]')"
        )
        found = await admin_get(
            session, f"{stack.url}/api/v1/costs/users", start_date=start, end_date=end,
            q=target.username, order="asc",
        )  # fmt: skip
        await eventually(lambda: _same(page, [u["user_id"] for u in found["users"]]), timeout_s=5)


async def _same(page: Page, expected: list[str]) -> bool:
    return await column_values(page, "#cost-results", "user") == expected


async def test_csv_download_equals_the_api_for_the_same_view(
    stack: Stack, admin_page: Page
) -> None:
    """The CSV link downloads the same users and figures the API lists for the same range and search."""
    page = admin_page
    start, end = last_30_days()
    await page.goto(f"{stack.url}/console/costs")
    await page.wait_for_selector("#cost-results table")
    async with page.expect_download() as info:
        await page.click("#cost-csv")
    download = await info.value
    path = await download.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    async with aiohttp.ClientSession() as session:
        listed = await admin_get(
            session, f"{stack.url}/api/v1/costs/users", start_date=start, end_date=end,
            limit="1000",
        )  # fmt: skip
    assert len(rows) == listed["count"] == len(listed["users"])
    assert [r["user_id"] for r in rows] == [u["user_id"] for u in listed["users"]]
    for row, user in zip(rows, listed["users"], strict=True):
        assert int(row["total_cost_micros"]) == user["total_cost_micros"]
        assert int(row["message_count"]) == user["message_count"]
        assert int(row["total_cache_creation_tokens"]) == user["total_cache_creation_tokens"]


async def test_a_one_dollar_default_blocks_a_big_spender_within_a_second_and_turns_the_bar_red(
    stack: Stack, admin_page: Page
) -> None:
    """Saving a $1 monthly default in the form makes the limits check answer 409 within a second, and the user's page shows a red bar marked limit reached."""
    page = admin_page
    spender = await top_spender_this_month(stack)
    assert spender["total_cost_micros"] > 1_000_000
    try:
        await page.goto(f"{stack.url}/console/settings")
        await page.wait_for_selector("#limits-form")
        if not await page.is_checked("#limits-enabled"):
            await page.check("#limits-enabled")
        await page.select_option("#limits-period", "month")
        await page.fill("#limits-default", "1")
        await page.click("#limits-form button[type=submit]")
        await page.wait_for_selector("#limits-status .saved")
        saved = time.monotonic()
        status = await eventually(
            lambda: _blocked(stack, spender["user_id"]), timeout_s=1.0, interval_s=0.02
        )
        assert status == 409
        assert time.monotonic() - saved <= 1.0

        await page.goto(f"{stack.url}/console/users/{spender['user_id']}")
        card = page.locator("#limit-card")
        await card.wait_for()
        assert await card.get_attribute("data-colour") == "red"
        assert await card.get_attribute("data-reached") == "true"
        assert (await page.locator("#limit-status").inner_text()).lower() == "limit reached"
        assert "Monthly Spend Limit" in await card.inner_text()
        assert "$1.00" in await page.locator("#limit-amounts").inner_text()
        assert await page.locator(".progress.red").count() == 1
        assert "the default limit" in await card.inner_text()
    finally:
        await restore_limits(stack)


async def _blocked(stack: Stack, user_id: str) -> int | None:
    status = await check_status(stack, user_id)
    return status if status == 409 else None


async def test_validation_errors_from_the_api_show_next_to_the_field(
    stack: Stack, admin_page: Page
) -> None:
    """A negative default limit is refused by the API and its message appears under the field."""
    page = admin_page
    await page.goto(f"{stack.url}/console/settings")
    await page.wait_for_selector("#limits-form")
    await page.fill("#limits-default", "-5")
    await page.click("#limits-form button[type=submit]")
    error = page.locator("#limits-default-error")
    await error.wait_for()
    assert "greater than 0" in await error.inner_text()
    assert await page.get_attribute("#limits-default", "aria-invalid") == "true"


async def test_user_override_is_added_and_removed_through_the_form(
    stack: Stack, admin_page: Page
) -> None:
    """Adding a user limit through the directory picker stores it in limits, and removing it after confirmation deletes it."""
    page = admin_page
    user = stack.sim.users[5]
    await page.goto(f"{stack.url}/console/settings")
    await page.wait_for_selector("#user-overrides")
    await page.click("text=Add user limit")
    await page.fill("#user-search", user.username)
    await page.click(f"#user-results button[data-id='{user.id}']")
    await page.fill("#user-amount", "12.34")
    await page.click("#user-add button[type=submit]")
    row = page.locator(f"#user-overrides tr[data-key='{user.id}']")
    await row.wait_for()
    assert "$12.34" in await row.inner_text()
    async with aiohttp.ClientSession() as session:
        config = await admin_get(session, f"{stack.url}/api/v1/limits/config")
        assert {"user_id": user.id, "limit_micros": 12_340_000} in [
            {k: o[k] for k in ("user_id", "limit_micros")} for o in config["user_overrides"]
        ]
        await row.get_by_role("button", name="Remove").click()
        await page.locator("dialog").get_by_role("button", name="Remove").click()
        await row.wait_for(state="detached")
        config = await admin_get(session, f"{stack.url}/api/v1/limits/config")
        assert user.id not in [o["user_id"] for o in config["user_overrides"]]


async def test_group_limits_name_their_organisation(stack: Stack, admin_page: Page) -> None:
    """A group limit added through the form shows the group's organisation, as limits' API does,
    for a simulated group and for a group of a second organisation."""
    page = admin_page
    prefix = stack.sim.config.prefix
    home_group = f"{prefix}-g-engineering"
    other_org, other_group = f"{prefix}-org-b", f"{prefix}-g-other-org"
    event = {
        "id": f"{prefix}-other-group",
        "type": "directory.group.v1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "org_id": other_org,
        "data": {"group_id": other_group, "name": f"other ({prefix})", "member_ids": []},
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{stack.services['ingest'].url}/api/v1/events",
            json={"events": [event]},
            headers=EMITTER,
        ) as resp:
            assert (await resp.json())["accepted"] == [event["id"]]

        async def reports_knows_it() -> bool:
            groups = await admin_get(session, f"{stack.url}/api/v1/directory/groups")
            return other_group in [g["group_id"] for g in groups["groups"]]

        await eventually(reports_knows_it, timeout_s=10)
        async with session.put(
            f"{stack.url}/api/v1/limits/overrides/groups/{home_group}",
            json={"limit_micros": 3_000_000},
            headers=ADMIN,
        ) as resp:
            assert resp.status == 200, await resp.text()
        try:
            await page.goto(f"{stack.url}/console/settings")
            await page.wait_for_selector("#group-overrides")
            await page.click("text=Add group limit")
            await page.select_option("#group-pick", other_group)
            assert other_org in await page.locator("#group-pick option:checked").inner_text()
            await page.fill("#group-amount", "7.50")
            await page.click("#group-add button[type=submit]")
            other_row = page.locator(f"#group-overrides tr[data-key='{other_group}']")
            await other_row.wait_for()
            home_row = page.locator(f"#group-overrides tr[data-key='{home_group}']")
            shown = {
                other_group: await other_row.locator("[data-col='org']").get_attribute(
                    "data-value"
                ),
                home_group: await home_row.locator("[data-col='org']").get_attribute("data-value"),
            }
            assert shown == {other_group: other_org, home_group: stack.sim.config.org_id}
            assert "$7.50" in await other_row.inner_text()

            async def limits_names_both() -> dict[str, Any] | None:
                config = await admin_get(session, f"{stack.url}/api/v1/limits/config")
                orgs = {o["group_id"]: o["org_id"] for o in config["group_overrides"]}
                return orgs if orgs.get(other_group) == other_org else None

            orgs = await eventually(limits_names_both, timeout_s=10)
            assert orgs is not None
            assert {g: orgs[g] for g in shown} == shown
        finally:
            for group_id in (home_group, other_group):
                await session.delete(
                    f"{stack.url}/api/v1/limits/overrides/groups/{group_id}", headers=ADMIN
                )


async def test_user_detail_figures_equal_the_api(stack: Stack, admin_page: Page) -> None:
    """The user page's cards and per-model and per-chat tables show the API's figures for the range."""
    page = admin_page
    start, end = last_30_days()
    spender = await top_spender_this_month(stack)
    await page.goto(f"{stack.url}/console/users/{spender['user_id']}")
    await page.wait_for_selector("#by-model table")
    async with aiohttp.ClientSession() as session:
        detail = await admin_get(
            session,
            f"{stack.url}/api/v1/costs/users/{spender['user_id']}",
            start_date=start,
            end_date=end,
        )
    assert await column_values(page, "#by-model", "cost") == [
        str(m["total_cost_micros"]) for m in detail["by_model"][:10]
    ]
    assert await column_values(page, "#by-chat", "chat") == [
        c["root_chat_id"] for c in detail["by_chat"][:10]
    ]
    messages = await page.locator("[data-card=messages] .value").inner_text()
    assert messages == f"{detail['message_count']:,}"
    assert detail["name"] in await page.locator(".identity").inner_text()


async def test_activity_chart_and_table_follow_the_pickers(stack: Stack, admin_page: Page) -> None:
    """The activity chart has one bar per bucket of the chosen interval, and the per-user table lists the API's users."""
    page = admin_page
    start, end = last_30_days()
    await page.goto(f"{stack.url}/console/activity")
    await page.wait_for_selector("#activity-chart")
    await page.select_option("#activity-interval", "1 week")
    await page.select_option("#activity-category", "ide")
    await page.wait_for_function("() => location.search.includes('category=ide')")
    await page.wait_for_selector("#activity-chart")
    async with aiohttp.ClientSession() as session:
        body = await admin_get(
            session, f"{stack.url}/api/v1/metrics/activity", start=start, end=end,
            interval="1 week", category="ide",
        )  # fmt: skip

    async def drawn() -> bool:
        bars: list[int] = await page.locator("#activity-chart rect.bar").evaluate_all(
            "bars => bars.map(b => Number(b.dataset.users))"
        )
        return bars == [len(b["user_activity"]) for b in body["activity"]]

    await eventually(drawn, timeout_s=5)
    users = await column_values(page, "#activity-users", "user")
    assert sorted(users) == sorted(body["users"])


async def test_chargeback_for_a_month_matches_the_api_and_downloads(
    stack: Stack, admin_page: Page
) -> None:
    """Picking a month shows that month's workspaces with the API's LLM costs, and the JSON download is the report."""
    page = admin_page
    month = datetime.now(UTC).strftime("%Y-%m")
    await page.goto(f"{stack.url}/console/chargeback")
    await page.fill("#chargeback-month", month)
    await page.wait_for_selector("#chargeback table")
    async with aiohttp.ClientSession() as session:
        report = await admin_get(
            session, f"{stack.url}/api/v1/chargeback/report", reportMonth=month
        )
    costs = (
        await page.locator("#chargeback table")
        .first.locator("[data-col=cost]")
        .evaluate_all("cells => cells.map(c => Number(c.dataset.value))")
    )
    assert costs == [w["llmCostMicros"] for w in report["workspaces"]]
    assert await page.locator("#cb-users").inner_text() == f"{report['users']['numberOfUsers']:,}"
    async with page.expect_download() as info:
        await page.click("#download-json")
    downloaded = orjson.loads((await (await info.value).path()).read_bytes())
    assert downloaded["workspaces"] == report["workspaces"]


async def test_billing_status_reads_in_plain_words(stack: Stack, admin_page: Page) -> None:
    """Without a billing server the status says that usage is queued, and how much waits."""
    page = admin_page
    await page.goto(f"{stack.url}/console/billing")
    line = page.locator("#billing-title")
    await line.wait_for()
    assert "usage is queued" in await line.inner_text()
    assert "Waiting to be sent" in await page.locator("#billing").inner_text()


async def test_pricing_add_edit_delete(stack: Stack, admin_page: Page) -> None:
    """A price added in the form is listed by ingest's API with the kinds left blank unset, a price
    with no kind is refused, and deleting it after confirmation removes it."""
    page = admin_page
    model = f"{stack.sim.config.prefix}-console-model"
    await page.goto(f"{stack.url}/console/pricing?model={model}")
    await page.wait_for_selector("#price-form")
    await page.click("#price-form button[type=submit]")
    error = page.locator("#price-form-error")
    await error.wait_for()
    assert "set at least one of" in await error.inner_text()
    await page.fill("#price-input_price_per_million", "2.50")
    await page.fill("#price-output_price_per_million", "10")
    await page.click("#price-form button[type=submit]")
    row = page.locator(f"#price-list tr[data-key='{model}']")
    await row.wait_for()
    async with aiohttp.ClientSession() as session:
        price = await admin_get(session, f"{stack.url}/api/v1/pricing/models/{model}")
        assert (price["input_price_per_million"], price["cache_read_price_per_million"]) == (
            "2.50",
            None,
        )
        cache_read = row.locator("[data-col='cache_read_price_per_million']")
        assert await cache_read.get_attribute("data-value") == ""
        assert (await cache_read.inner_text()).strip() == "—"
        await page.fill("#price-input_price_per_million", "abc")
        await page.click("#price-form button[type=submit]")
        await page.locator("#price-input_price_per_million-error").wait_for()
        await row.get_by_role("button", name=f"Delete {model}").click()
        await page.locator("dialog").get_by_role("button", name="Delete").click()
        await row.wait_for(state="detached")
        async with session.get(f"{stack.url}/api/v1/pricing/models/{model}", headers=ADMIN) as resp:
            assert resp.status == 404


async def test_sign_out_ends_the_session_on_the_server(
    stack: Stack, context: BrowserContext
) -> None:
    """After signing out, the old session cookie no longer opens any page or API, even if replayed."""
    page = await context.new_page()
    await sign_in(page, stack.url, ADMIN_TOKEN)
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    session_cookie = cookies["tollgate_session"]
    assert ADMIN_TOKEN not in session_cookie
    assert ADMIN_TOKEN not in await page.content()
    await page.click("text=Sign out")
    await page.wait_for_url("**/console/login?reason=signed_out")
    assert "signed out" in (await page.locator("main").inner_text()).lower()
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{stack.url}/console/api/v1/limits/config",
            headers={"Cookie": f"tollgate_session={session_cookie}"},
        ) as resp,
    ):
        assert resp.status == 401
    await page.goto(f"{stack.url}/console/costs")
    assert "/console/login" in page.url


async def test_emitter_sessions_are_read_only(stack: Stack, context: BrowserContext) -> None:
    """An emitter sign-in sees cost tracking but no admin pages, and cannot change anything even with its CSRF token."""
    page = await context.new_page()
    await sign_in(page, stack.url, EMITTER_TOKEN)
    assert page.url.endswith("/console/costs")
    nav = await page.locator("#nav").inner_text()
    assert "Cost tracking" in nav
    assert "Spend limits" not in nav
    await page.goto(f"{stack.url}/console/settings")
    # The page script fetches the session before it draws anything.
    await page.locator("main h1", has_text="Admin only").wait_for()
    status = await page.evaluate(
        """async () => {
          const s = await (await fetch('/console/api/session')).json();
          const r = await fetch('/console/api/v1/limits/config', {method: 'PUT',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token},
            body: JSON.stringify({enabled: true, period: 'day', default_limit_micros: 1})});
          return r.status;
        }"""
    )
    assert status == 403


async def test_state_changes_need_the_csrf_token(stack: Stack, admin_page: Page) -> None:
    """An admin session's PUT without the CSRF header, or with a wrong one, is refused with 403."""
    statuses = await admin_page.evaluate(
        """async () => {
          const body = JSON.stringify({enabled: false, period: 'month', default_limit_micros: null});
          const a = await fetch('/console/api/v1/limits/config', {method: 'PUT', headers: {'Content-Type': 'application/json'}, body});
          const b = await fetch('/console/api/v1/limits/config', {method: 'PUT', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'nope'}, body});
          return [a.status, b.status];
        }"""
    )
    assert statuses == [403, 403]


async def mint(stack: Stack, user_id: str, ttl: int = 600) -> str:
    """A portal token for the user, minted with the emitter token as the platform would."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.url}/api/v1/portal/tokens",
            json={"user_id": user_id, "ttl_seconds": ttl},
            headers=EMITTER,
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        assert body["user_id"] == user_id
        token: str = body["token"]
        return token


async def bearer_status(url: str, token: str) -> int:
    """The status of a GET with this bearer token."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status


async def test_portal_token_opens_only_its_own_users_page(
    stack: Stack, context: BrowserContext
) -> None:
    """A portal token for user A signs in to A's own page with A's figures; B's status and costs and every admin route answer 403."""
    a, b = stack.sim.users[0], stack.sim.users[1]
    token = await mint(stack, a.id)
    page = await context.new_page()
    await sign_in(page, stack.url, token)
    assert page.url.endswith("/console/me")
    await page.wait_for_selector("#my-status")
    async with aiohttp.ClientSession() as session:
        status = await admin_get(session, f"{stack.url}/api/v1/limits/status/{a.id}")
    assert await page.get_attribute("#my-spent", "data-value") == str(status["spent_micros"])
    assert token not in await page.content()
    assert "My spend" in await page.locator("#nav").inner_text()

    limits, reports = stack.services["limits"].url, stack.url
    assert await bearer_status(f"{limits}/api/v1/limits/status/{a.id}", token) == 200
    assert await bearer_status(f"{reports}/api/v1/costs/users/{a.id}", token) == 200
    assert await bearer_status(f"{reports}/api/v1/limits/status/{a.id}", token) == 200
    for url in (
        f"{limits}/api/v1/limits/status/{b.id}",
        f"{reports}/api/v1/costs/users/{b.id}",
        f"{reports}/api/v1/limits/status/{b.id}",
        f"{limits}/api/v1/limits/config",
        f"{reports}/api/v1/costs/users",
        f"{reports}/api/v1/chargeback/report?reportMonth=2026-01",
        f"{reports}/api/v1/metrics/activity",
        f"{reports}/api/v1/directory/users",
        f"{reports}/api/v1/publisher/status",
        f"{reports}/api/v1/pricing/models",
    ):
        assert await bearer_status(url, token) == 403, url

    from_page = await page.evaluate(
        f"""async () => [
          (await fetch('/console/api/v1/costs/users/{b.id}')).status,
          (await fetch('/console/api/v1/limits/config')).status,
        ]"""
    )
    assert from_page == [403, 403]
    await page.goto(f"{stack.url}/console/users/{b.id}")
    await page.wait_for_function(
        "() => !document.querySelector('main').innerText.includes('Loading')"
    )
    assert "Not available" in await page.locator("main").inner_text()


async def test_expired_tampered_and_revoked_portal_tokens_get_401(
    stack: Stack, context: BrowserContext
) -> None:
    """An expired or altered portal token is refused with 401; revoking a user's tokens refuses them on every service within a second and ends the user's console session."""
    a = stack.sim.users[2]
    signer = PortalSigner(PORTAL_SECRET)
    expired = signer.encode(PortalClaims(a.id, 0, int(time.time()) - 120, int(time.time()) - 60))
    limits, reports = stack.services["limits"].url, stack.url
    assert await bearer_status(f"{limits}/api/v1/limits/status/{a.id}", expired) == 401
    assert await bearer_status(f"{reports}/api/v1/costs/users/{a.id}", expired) == 401

    token = await mint(stack, a.id)
    payload, signature = token.split(".")
    tampered = f"{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    assert await bearer_status(f"{limits}/api/v1/limits/status/{a.id}", tampered) == 401
    other_key = PortalSigner("another-secret-of-at-least-32-characters!").encode(
        PortalClaims(a.id, 99, int(time.time()), int(time.time()) + 600)
    )
    assert await bearer_status(f"{reports}/api/v1/costs/users/{a.id}", other_key) == 401

    page = await context.new_page()
    await sign_in(page, stack.url, token)
    await page.wait_for_selector("#my-status")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.url}/api/v1/portal/tokens/revoke", json={"user_id": a.id}, headers=ADMIN
        ) as resp,
    ):
        assert resp.status == 204
    revoked = time.monotonic()

    async def refused_everywhere() -> bool:
        return (
            await bearer_status(f"{limits}/api/v1/limits/status/{a.id}", token) == 401
            and await bearer_status(f"{reports}/api/v1/costs/users/{a.id}", token) == 401
        )

    await eventually(refused_everywhere, timeout_s=1.0, interval_s=0.02)
    assert time.monotonic() - revoked <= 1.0
    await page.goto(f"{stack.url}/console/me")
    assert "/console/login" in page.url
    fresh = await mint(stack, a.id)
    assert await bearer_status(f"{limits}/api/v1/limits/status/{a.id}", fresh) == 200


async def test_loading_errors_offer_retry_and_empty_results_say_so(
    stack: Stack, admin_page: Page
) -> None:
    """When the cost list fails the page shows the server's message with Retry, Retry recovers, and a search that matches nobody says so."""
    page = admin_page
    failing = True

    async def fail_once(route: Any) -> None:
        if failing:
            await route.fulfill(
                status=503,
                content_type="application/json",
                body=orjson.dumps({"message": "the reports database is unavailable"}),
            )
        else:
            await route.continue_()

    await page.route("**/console/api/v1/costs/users?*", fail_once)
    await page.goto(f"{stack.url}/console/costs")
    alert = page.locator("#cost-results [role=alert]")
    await alert.wait_for()
    assert "the reports database is unavailable" in await alert.inner_text()
    failing = False
    await alert.get_by_role("button", name="Retry").click()
    await page.wait_for_selector("#cost-results table")
    await page.fill("#cost-search", f"nobody-{stack.sim.config.prefix}")
    empty = page.locator("#cost-results .empty")
    await empty.wait_for()
    assert "No users match" in await empty.inner_text()


async def test_a_platform_page_hands_a_portal_token_over_by_form_post(
    stack: Stack, context: BrowserContext
) -> None:
    """A form on another page posting a portal token to /console/portal signs the user in and opens their own page, with no token in any address."""
    user = stack.sim.users[4]
    token = await mint(stack, user.id)
    page = await context.new_page()
    await page.set_content(
        f"""<form method="post" action="{stack.url}/console/portal">
              <input type="hidden" name="token" value="{token}">
              <button type="submit">Open my spend</button></form>"""
    )
    await page.click("text=Open my spend")
    await page.wait_for_url("**/console/me")
    await page.wait_for_selector("#my-status")
    assert token not in page.url
    async with aiohttp.ClientSession() as session:
        status = await admin_get(session, f"{stack.url}/api/v1/limits/status/{user.id}")
    assert await page.get_attribute("#my-spent", "data-value") == str(status["spent_micros"])


async def test_numbers_and_the_bar_follow_coders_rules(stack: Stack, admin_page: Page) -> None:
    """Dollars, tokens and the usage bar's colour are formatted exactly as Coder's Spend page formats them."""
    result = await admin_page.evaluate(
        """async () => {
          const f = await import('/console/assets/js/format.js');
          return {
            dollars: [0, 4200, 10000, 1234500000, 999].map(f.dollars),
            tokens: [999, 1000, 123456, 1000000, 1500000, 2000000, 12345678].map(f.tokens),
            bars: [[74, 100], [75, 100], [90, 100], [91, 100], [100, 100], [120, 100]].map(
              ([s, l]) => { const b = f.limitState(s, l); return [b.colour, b.reached, b.percent]; }),
          };
        }"""
    )
    assert result["dollars"] == ["$0.00", "$0.0042", "$0.01", "$1,234.50", "$0.0010"]
    assert result["tokens"] == ["999", "1,000", "123,456", "1M", "1.5M", "2M", "12.3M"]
    assert result["bars"] == [
        ["green", False, 74],
        ["orange", False, 75],
        ["orange", False, 90],
        ["red", False, 91],
        ["red", True, 100],
        ["red", True, 100],
    ]

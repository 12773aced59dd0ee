"""The console's calls over the dataset the reports benchmark loaded (up to 10M events).

Runs after `bench.reports`. Signs in as an admin through the login form, then times the calls
the pages make, through the console's gateway (session check, forwarding) as a browser makes
them: the cost table (30 days, 25 rows), the top spender's detail, and the activity page (30
days by day). With Chromium installed, it also loads the cost-tracking page in a real browser
and times navigation until the table has rendered.
"""

from __future__ import annotations

import re
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
import orjson

from bench import BenchContext, Figure, not_available, percentile

TARGET_P95_MS: Final = 300.0
REQUESTS: Final = 30
PAGE_LOADS: Final = 10


async def _sign_in(session: aiohttp.ClientSession, base: str, token: str) -> None:
    async with session.get(f"{base}/console/login") as resp:
        text = await resp.text()
    match = re.search(r'name="csrf" value="([^"]+)"', text)
    if match is None:
        raise RuntimeError("the sign-in page has no form token")
    async with session.post(
        f"{base}/console/login",
        data={"token": token, "csrf": match.group(1), "next": ""},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    ) as resp:
        if resp.status != 303:
            raise RuntimeError(f"sign-in failed: {resp.status}")


async def _timed(
    session: aiohttp.ClientSession, url: str, params: dict[str, str]
) -> tuple[list[float], Any]:
    samples: list[float] = []
    body: Any = None
    for i in range(REQUESTS + 2):
        t0 = time.perf_counter()
        async with session.get(url, params=params) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: {resp.status} {raw[:300]!r}")
        if i >= 2:
            samples.append(time.perf_counter() - t0)
        body = orjson.loads(raw)
    return samples, body


def _figure(name: str, samples: list[float], note: str) -> Figure:
    p95 = percentile(samples, 95) * 1000
    return Figure(
        "console",
        f"{name}, p95",
        p95,
        "ms",
        target=f"< {TARGET_P95_MS:.0f} ms",
        meets=p95 < TARGET_P95_MS,
        note=f"p50 {statistics.median(samples) * 1000:.0f} ms; {note}",
    )


async def _browser_table_ms(base: str, token: str) -> list[float]:
    from playwright.async_api import async_playwright  # noqa: PLC0415  # optional: needs chromium

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            await page.goto(f"{base}/console/login")
            await page.fill("#token", token)
            await page.click("button[type=submit]")
            await page.wait_for_load_state("networkidle")
            times: list[float] = []
            for i in range(PAGE_LOADS + 1):
                t0 = time.perf_counter()
                await page.goto(f"{base}/console/costs")
                await page.wait_for_selector("#cost-results table", timeout=30_000)
                if i:
                    times.append(time.perf_counter() - t0)
            return times
        finally:
            await browser.close()


async def run(ctx: BenchContext) -> list[Figure]:
    """`make bench`: the console's API calls and the cost table's time to render."""
    base = ctx.url("reports")
    assert base is not None
    today = datetime.now(UTC).date()
    window = {
        "start_date": (today - timedelta(days=29)).isoformat(),
        "end_date": (today + timedelta(days=1)).isoformat(),
    }
    figures: list[Figure] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _sign_in(session, base, ctx.admin_token)
        api = f"{base}/console/api/v1"
        costs, body = await _timed(session, f"{api}/costs/users", {**window, "limit": "25"})
        figures.append(
            _figure("cost table API", costs, f"{body['count']:,} users; 30 days; via the gateway")
        )
        if body["users"]:
            top = body["users"][0]
            detail, one = await _timed(session, f"{api}/costs/users/{top['user_id']}", window)
            figures.append(
                _figure(
                    "user detail API",
                    detail,
                    f"the top spender: {one['message_count']:,} messages, "
                    f"{len(one['by_chat']):,} chats, {len(one['by_model'])} models",
                )
            )
        activity, act = await _timed(
            session,
            f"{api}/metrics/activity",
            {"start": window["start_date"], "end": window["end_date"], "interval": "1 day"},
        )
        figures.append(
            _figure("activity page API", activity, f"30 days by day; {len(act['users']):,} users")
        )
    if shutil.which("chromium") is None:
        figures.append(
            not_available("console", "cost table rendered in Chromium", "chromium not installed")
        )
        return figures
    try:
        loads = await _browser_table_ms(base, ctx.admin_token)
    except ImportError:
        figures.append(
            not_available("console", "cost table rendered in Chromium", "playwright missing")
        )
        return figures
    p95 = percentile(loads, 95) * 1000
    figures.append(
        Figure(
            "console",
            "cost table rendered in Chromium, p95",
            p95,
            "ms",
            note=f"navigation to table drawn, {PAGE_LOADS} loads; "
            f"p50 {statistics.median(loads) * 1000:.0f} ms",
        )
    )
    return figures

"""`make screenshots`: every console page, drawn from a simulated organisation, as PNGs in docs/.

Starts its own embedded broker and PostgreSQL in a temporary directory, every service as in
`make run`, sends a simulation through ingest, registers two webhook endpoints (one working, one
offline) and a local SMTP server, sets a few limits so the bars and notifications have something
to show, then signs in (admin, and a portal token for one user) and photographs each page.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from playwright.async_api import Page, async_playwright

from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from libs.service.kafka import ensure_topics
from tests.browser.stack import CHROMIUM, CHROMIUM_ARGS, feed, running_stack, simulation
from tests.notify_support import SmtpSink, WebhookReceiver
from tests.support import ADMIN, ADMIN_TOKEN, EMITTER, Infra
from tools.simulator.send import register_prices

SEED = 20_261_127
PAGES = (
    ("console-costs", "/console/costs", "#cost-results table"),
    ("console-activity", "/console/activity?interval=1%20week", "#activity-chart"),
    ("console-chargeback", "/console/chargeback", "#chargeback table"),
    ("console-settings", "/console/settings", "#user-overrides table"),
    ("console-pricing", "/console/pricing", "#price-list table"),
    ("console-billing", "/console/billing", "#billing-title"),
    ("console-notifications", "/console/notifications", "#delivery-list table"),
)


async def _put(session: aiohttp.ClientSession, url: str, body: object) -> None:
    async with session.put(url, json=body, headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()


async def _shoot(page: Page, url: str, ready: str, path: Path) -> None:
    await page.goto(url)
    await page.wait_for_selector(ready)
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}")  # noqa: T201


async def _endpoints(session: aiohttp.ClientSession, base: str, receiver: WebhookReceiver) -> None:
    """A working endpoint and one that refuses connections, added before limits apply."""
    for url, description in (
        (receiver.url("/tollgate"), "Chat ops bot"),
        (f"http://127.0.0.1:{free_port()}/hooks", "Finance alerts (offline)"),
    ):
        async with session.post(
            f"{base}/api/v1/notifications/webhooks",
            json={"url": url, "description": description},
            headers=ADMIN,
        ) as resp:
            assert resp.status == 201, await resp.text()


async def _delivered(session: aiohttp.ClientSession, base: str) -> bool:
    async with session.get(
        f"{base}/api/v1/notifications/deliveries", params={"status": "delivered"}, headers=ADMIN
    ) as resp:
        return bool((await resp.json())["deliveries"])


async def _capture(base: str, out: Path, users: list[str], groups: list[str], top: str) -> None:
    receiver = await WebhookReceiver().start()
    async with aiohttp.ClientSession() as session:
        await _endpoints(session, base, receiver)
        await _put(
            session,
            f"{base}/api/v1/limits/config",
            {
                "enabled": True,
                "period": "month",
                "default_limit_micros": 25_000_000,
                "warning_threshold_percent": 85,
            },
        )
        await _put(
            session, f"{base}/api/v1/limits/overrides/users/{top}", {"limit_micros": 15_000_000}
        )
        await _put(
            session,
            f"{base}/api/v1/limits/overrides/users/{users[4]}",
            {"limit_micros": 80_000_000},
        )
        for group_id, limit in zip(groups, (40_000_000, 10_000_000), strict=False):
            await _put(
                session,
                f"{base}/api/v1/limits/overrides/groups/{group_id}",
                {"limit_micros": limit},
            )
        async with session.post(
            f"{base}/api/v1/portal/tokens", json={"user_id": users[1]}, headers=EMITTER
        ) as resp:
            portal = (await resp.json())["token"]
        # Lowering the limits made users past them due: their notifications go out now.
        for _ in range(150):
            if await _delivered(session, base):
                break
            await asyncio.sleep(0.2)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1360, "height": 900})
        page = await context.new_page()
        await page.goto(f"{base}/console/login")
        await page.screenshot(path=str(out / "console-login.png"))
        await page.fill("#token", ADMIN_TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_load_state("networkidle")
        for name, path, ready in PAGES:
            await _shoot(page, f"{base}{path}", ready, out / f"{name}.png")
        await _shoot(
            page, f"{base}/console/users/{top}", "#by-chat table", out / "console-user.png"
        )
        portal_context = await browser.new_context(viewport={"width": 1360, "height": 900})
        me = await portal_context.new_page()
        await me.goto(f"{base}/console/login")
        await me.fill("#token", portal)
        await me.click("button[type=submit]")
        await _shoot(me, f"{base}/console/me", "#my-status", out / "console-me.png")
        await browser.close()
    await receiver.stop()


async def _top_spender(base: str, prefix: str) -> str:
    now = datetime.now(UTC)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{base}/api/v1/costs/users",
            params={"start_date": now.replace(day=1).date().isoformat(), "limit": "1000"},
            headers=ADMIN,
        ) as resp,
    ):
        users = (await resp.json())["users"]
    found: str = next(u["user_id"] for u in users if u["user_id"].startswith(prefix))
    return found


def main(argv: list[str]) -> int:
    """Write the screenshots into the directory given (default docs/)."""
    out = Path(argv[0] if argv else "docs").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tollgate-shots-") as tmp:
        work = Path(tmp)
        broker = EmbeddedBroker(port=free_port())
        broker.start(log_path=work / "tansu.log")
        postgres = EmbeddedPostgres(work / "pgdata")
        smtp = SmtpSink().start()
        try:
            url = postgres.start()
            asyncio.run(migrate(url))
            asyncio.run(
                ensure_topics(
                    broker.bootstrap, events_topic="usage.events", dlq_topic="usage.events.dlq"
                )
            )
            infra = Infra(broker=broker, postgres=postgres, database_url=url)
            sim, events = simulation(SEED, users=40, days=45)
            with running_stack(
                infra,
                work / "logs",
                TOLLGATE_SMTP_URL=smtp.url,
                TOLLGATE_SMTP_FROM="Tollgate <noreply@example.com>",
            ) as services:
                asyncio.run(feed(services, events))
                base = services["reports"].url
                asyncio.run(register_prices(services["ingest"].url, ADMIN_TOKEN, sim.prices))
                top = asyncio.run(_top_spender(base, sim.config.prefix))
                groups = [group_id for group_id, _, _ in sim.groups]
                asyncio.run(_capture(base, out, [u.id for u in sim.users], groups, top))
        finally:
            smtp.stop()
            broker.stop()
            postgres.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

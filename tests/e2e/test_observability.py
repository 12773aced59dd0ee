"""The services' real /metrics against the rules and dashboards, and a real Prometheus loading them."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from libs.events.client import TollgateClient
from libs.service.cli import available_services
from libs.service.embedded import free_port
from tests.deploy.support import METRIC_NAMES, RULES, tool
from tests.support import ADMIN, EMITTER, Infra, ServiceProcess, StartService, eventually, unique

pytestmark = pytest.mark.e2e

_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def exported_names(exposition: str) -> set[str]:
    """Base metric names in a Prometheus text exposition, as rules and dashboards name them."""
    names: set[str] = set()
    for name, _kind in _TYPE_LINE.findall(exposition):
        names.add(name)
    return names


def client_library_names() -> set[str]:
    """Names the client library registers in the caller's process (fail-open counter)."""
    registry = CollectorRegistry()
    TollgateClient(ingest_url=None, limits_url="http://127.0.0.1:1", token="t", registry=registry)
    return exported_names(generate_latest(registry).decode())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with a short timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def running(
    infra: Infra,
    topics: tuple[str, str],
    service_factory: StartService,
    http: aiohttp.ClientSession,
) -> dict[str, ServiceProcess]:
    """Every service, on a private topic, after some traffic that touches each metric family."""
    env = {
        "TOLLGATE_EVENTS_TOPIC": topics[0],
        "TOLLGATE_DLQ_TOPIC": topics[1],
        "TOLLGATE_REPORTS_GROUP": unique("reports"),
        "TOLLGATE_PUBLISHER_GROUP": unique("publisher"),
        "TOLLGATE_PUBLISHER_QUEUE": unique("queue"),
        "PUBLISH_INTERVAL": "1s",
        "PUBLISH_FIRST_DELAY": "100ms",
        "TOLLGATE_LIMITS_SNAPSHOT_INTERVAL": "1",
        # Off by default (user ids); the spend dashboard's top list needs it.
        "TOLLGATE_LIMITS_TOP_USERS": "5",
    }
    services: dict[str, ServiceProcess] = {}
    for spec in available_services():  # limits starts before reports, which calls it
        services[spec.name] = service_factory(spec.name, **env)  # type: ignore[arg-type]  # env holds no `port`
        if spec.name == "limits":
            env["TOLLGATE_LIMITS_URL"] = services["limits"].url
    ingest = services["ingest"].url
    model, user = unique("model"), unique("user")
    price = {"input_price_per_million": "3", "output_price_per_million": "15"}
    await http.put(f"{ingest}/api/v1/pricing/models/{model}", json=price, headers=ADMIN)
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "id": unique("evt"),
            "type": "chat.usage.v1",
            "occurred_at": now,
            "user_id": user,
            "data": {
                "chat_id": "c",
                "message_id": "m",
                "model": model,
                "input_tokens": 10,
                "output_tokens": 5,
            },
        },
        {
            "id": unique("evt"),
            "type": "workspace.build.v1",
            "occurred_at": now,
            "user_id": user,
            "data": {"workspace_id": "w", "build_id": "b", "template": "t", "agent_managed": True},
        },
        {"id": unique("evt"), "type": "nope.v1"},
    ]
    resp = await http.post(f"{ingest}/api/v1/events", json={"events": events}, headers=EMITTER)
    assert resp.status == 200
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics[0], b"\xff garbage", key=b"x")
    finally:
        await producer.stop()
    if "limits" in services:

        async def checked() -> bool:
            r = await http.post(
                f"{services['limits'].url}/api/v1/limits/check",
                json={"user_id": user},
                headers=EMITTER,
            )
            return r.status == 200

        await eventually(checked, timeout_s=20)
    for name, svc in services.items():
        if name == "reports":
            await http.get(f"{svc.url}/api/v1/costs/users", headers=ADMIN)
        if name == "publisher":
            await http.get(f"{svc.url}/api/v1/publisher/status", headers=ADMIN)
    return services


async def test_every_metric_in_rules_and_dashboards_is_exported(
    running: dict[str, ServiceProcess], http: aiohttp.ClientSession
) -> None:
    """Each name in metric-names.txt appears on a running service's /metrics (or the client library's registry)."""
    assert set(running) == {"ingest", "limits", "reports", "publisher"}, "a service is missing"
    exported = client_library_names()
    for svc in running.values():

        async def scraped(svc: ServiceProcess = svc) -> str:
            r = await http.get(svc.metrics_url)
            return await r.text() if r.status == 200 else ""

        exported |= exported_names(await eventually(scraped))
    wanted = {line.strip() for line in METRIC_NAMES.read_text().splitlines() if line.strip()}
    assert sorted(wanted - exported) == []


def _get(url: str) -> dict[str, object]:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback
        body: dict[str, object] = json.loads(resp.read())
        return body


async def test_prometheus_loads_the_rules_and_their_queries_return_series(
    running: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    """A real Prometheus scraping the services' metrics ports evaluates every rule without error, the recording rules return series, and no down alert is pending."""
    port = free_port()
    # The labels the chart's ServiceMonitor gives every target (docs/runbooks.md).
    static = [
        {
            "targets": [f"127.0.0.1:{svc.metrics_port}"],
            "labels": {"service": name, "namespace": "e2e"},
        }
        for name, svc in running.items()
    ]
    targets = [t for s in static for t in s["targets"]]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES.resolve())],
                "scrape_configs": [{"job_name": "tollgate", "static_configs": static}],
            }
        )
    )
    prometheus = tool("prometheus")  # before anything is opened: it raises when missing
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:

        async def groups_evaluated() -> list[dict[str, object]]:
            try:
                data = _get(f"{api}/rules")["data"]
            except OSError:
                return []
            assert isinstance(data, dict)
            groups: list[dict[str, object]] = data["groups"]
            rules = [r for g in groups for r in g["rules"]]  # type: ignore[attr-defined]
            evaluated = rules and all(
                r.get("lastEvaluation", "0001").startswith("20") for r in rules
            )
            return rules if evaluated else []

        async def targets_up() -> bool:
            try:
                data = _get(f"{api}/targets")["data"]
            except OSError:
                return False
            assert isinstance(data, dict)
            active = data["activeTargets"]
            return len(active) == len(targets) and all(t["health"] == "up" for t in active)

        # Prometheus applies discovered targets in a 5 s rhythm.
        await eventually(targets_up, timeout_s=40, interval_s=0.5)
        rules = await eventually(groups_evaluated, timeout_s=30, interval_s=0.5)
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        # Let rate() see a few scrapes before asking the recorded series.
        await asyncio.sleep(4)
        recorded = [str(r["name"]) for r in rules if r["type"] == "recording"]
        empty = []
        for name in recorded:
            result = _get(f"{api}/query?query={urllib.parse.quote(name)}")["data"]
            assert isinstance(result, dict)
            if not result["result"]:
                empty.append(name)
        # The fail-open counter lives in the callers' processes (the client library), not here.
        targets_health = _get(f"{api}/targets")["data"]
        assert [n for n in empty if "failopen" not in n] == [], targets_health
        # Every service is up and ready: no down alert stays even pending (a consumer may
        # still be reading the log when Prometheus first looks).
        down = 'ALERTS{alertname=~"Tollgate(Ingest|Limits|Reports|Publisher)Down"}'

        async def no_down_alert() -> bool:
            alerts = _get(f"{api}/query?query={urllib.parse.quote(down)}")["data"]
            assert isinstance(alerts, dict)
            pending: list[object] = alerts["result"]
            return not pending

        await eventually(no_down_alert, timeout_s=30, interval_s=0.5)
        ready = _get(
            f"{api}/query?query={urllib.parse.quote('namespace_service:tollgate_ready:sum')}"
        )
        data = ready["data"]
        assert isinstance(data, dict)
        assert {r["metric"]["service"] for r in data["result"]} == set(running)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()

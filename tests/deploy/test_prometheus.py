"""The Prometheus rules: promtool accepts them, their unit tests pass, and each alert is tested."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    REPO,
    RULES,
    RULES_TEST,
    alert_names,
    load_yaml,
    ok,
    recorded_names,
    rule_queries,
    run,
    tool,
)

#: The alert each operator concern has.
REQUIRED_ALERTS = {
    "no ingest replica ready, or none at all": "TollgateIngestDown",
    "no limits replica ready, or none at all": "TollgateLimitsDown",
    "no reports replica ready, or none at all": "TollgateReportsDown",
    "no publisher replica ready, or none at all": "TollgatePublisherDown",
    "PostgreSQL down": "TollgateDatabaseDown",
    "ingest error rate": "TollgateIngestErrorRate",
    "ingest 503s": "TollgateIngestUnavailable",
    "unpriced usage": "TollgateUnpricedUsage",
    "consumer lag": "TollgateConsumerLagHigh",
    "consumer making no progress": "TollgateConsumerStalled",
    "projection lag": "TollgateReportsProjectionLagHigh",
    "limits replica not caught up": "TollgateLimitsReplicaNotCaughtUp",
    "check latency": "TollgateLimitCheckSlow",
    "snapshot age": "TollgateLimitsSnapshotStale",
    "fail-open checks": "TollgateLimitCheckFailOpen",
    "publisher failure streak": "TollgatePublisherFailing",
    "oldest pending age": "TollgatePublisherBacklogOld",
    "air-gapped export overdue": "TollgatePublisherExportOverdue",
    "events expiring": "TollgatePublisherEventsExpired",
    "dlq growth": "TollgateDeadLetters",
}
DOWN_ALERTS = {
    f"Tollgate{s.capitalize()}Down" for s in ("ingest", "limits", "reports", "publisher")
}
SERVICES = {"ingest", "limits", "reports", "publisher"}
RUNBOOKS = REPO / "docs" / "runbooks.md"
#: The labels every aggregation keeps, so one install never hides another.
KEPT = {"cluster", "namespace"}
_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s*"
    r"(?:(by|without)\s*\(([^)]*)\))?\s*\("
)


def _alerts() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def unkept_aggregations(expr: str) -> list[str]:
    """Aggregations in an expression that do not keep `cluster` and `namespace` by name."""
    problems = []
    for match in _AGGREGATION.finditer(expr):
        _, clause, labels = match.groups()
        kept = {label.strip() for label in (labels or "").split(",")}
        if clause != "by" or not kept >= KEPT:
            problems.append(match.group(0).strip())
    return problems


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Each section of docs/runbooks.md by its anchor, with its text up to the next heading."""
    sections: dict[str, str] = {}
    anchor = None
    for line in RUNBOOKS.read_text().splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            anchor = github_anchor(heading.group(1))
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def _copy_rules(tmp_path: Path) -> tuple[Path, Path]:
    rules = Path(shutil.copy(RULES, tmp_path / "rules.yml"))
    tests = Path(shutil.copy(RULES_TEST, tmp_path / "rules.test.yml"))
    return rules, tests


def _tested_alerts(tests: Any) -> set[str]:
    return {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts rules.yml."""
    output = ok(run([tool("promtool"), "check", "rules", RULES]))
    assert "SUCCESS" in output


def test_rules_unit_tests_pass() -> None:
    """`promtool test rules` passes every case of rules.test.yml."""
    output = ok(run([tool("promtool"), "test", "rules", RULES_TEST]))
    assert "SUCCESS" in output


def test_every_concern_has_its_alert_with_severity_summary_description_and_runbook() -> None:
    """Each operator concern has its alert; every alert has a severity, a summary, a description and a runbook link."""
    alerts = _alerts()
    assert set(REQUIRED_ALERTS.values()) <= {a["alert"] for a in alerts}
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
        assert alert["annotations"]["runbook_url"] == f"docs/runbooks.md#{name.lower()}", name


def test_every_runbook_link_leads_to_a_section_that_says_what_to_do() -> None:
    """Each alert's runbook section exists and says what it means, how to check and how to fix."""
    sections = runbook_sections()
    for alert in _alerts():
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in sections, f"docs/runbooks.md has no section #{anchor}"
        text = sections[anchor]
        for part in ("**Meaning**", "**Check**", "**Fix**"):
            assert part in text, f"#{anchor} lacks {part}"


def test_the_dead_letter_runbook_says_how_to_replay() -> None:
    """The dead-letter runbook gives the replay procedure step by step."""
    text = runbook_sections()["tollgatedeadletters"]
    assert "usage.events.dlq" in text
    assert "Replay" in text
    assert "kcat" in text


def test_every_alert_names_the_service_it_is_about() -> None:
    """Alerts about one service carry `service` for routing: a name, or the consumer that is also one."""
    for alert in _alerts():
        if alert["alert"] == "TollgateDatabaseDown":
            assert "service" not in alert["labels"], "the database is shared"
            continue
        service = alert["labels"]["service"]
        assert service in SERVICES or service == "{{ $labels.consumer }}", alert["alert"]


def test_every_aggregation_keeps_cluster_and_namespace() -> None:
    """No rule aggregates across installs: every sum, max, min and count keeps cluster and namespace."""
    problems = [
        f"{q.where}: {agg}"
        for q in rule_queries(load_yaml(RULES))
        for agg in unkept_aggregations(q.expr)
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("expr", "problems"),
    [
        ("sum by (cluster, namespace, le) (rate(x[5m]))", []),
        ("max(x) < 1", ["max("]),
        ("sum by (service) (rate(x[5m]))", ["sum by (service) ("]),
        ("histogram_quantile(0.9, sum without (pod) (x))", ["sum without (pod) ("]),
        ("count by (namespace,cluster) (up) or absent(up)", []),
    ],
)
def test_the_aggregation_reader(expr: str, problems: list[str]) -> None:
    """The aggregation check flags exactly the aggregations that drop cluster or namespace."""
    assert unkept_aggregations(expr) == problems


def test_the_everything_gone_case_fires_every_down_alert() -> None:
    """rules.test.yml has a case without a single Tollgate series in which every service's down alert fires."""
    tests = load_yaml(RULES_TEST)["tests"]
    (gone,) = [t for t in tests if t.get("name") == "everything gone"]
    assert not any("tollgate" in s["series"] or "up{" in s["series"] for s in gone["input_series"])
    firing = {c["alertname"] for c in gone["alert_rule_test"] if c.get("exp_alerts")}
    assert firing >= DOWN_ALERTS


def test_every_alert_is_seen_firing_in_a_unit_test() -> None:
    """rules.test.yml expects each alert of rules.yml to fire at least once."""
    names = alert_names(load_yaml(RULES))
    assert len(names) == len(set(names)), "alert names are unique"
    assert set(names) - _tested_alerts(load_yaml(RULES_TEST)) == set()


def test_recording_rules_follow_the_naming_convention() -> None:
    """Recording rules are named level:metric:operations and each name is defined once."""
    rules = load_yaml(RULES)
    records = [r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r]
    assert len(records) == len(set(records)) == len(recorded_names(rules))
    assert all(name.count(":") == 2 for name in records), records


def test_promtool_check_catches_a_broken_expression(tmp_path: Path) -> None:
    """A syntax error in a rule's expression fails `promtool check rules`."""
    rules, _ = _copy_rules(tmp_path)
    text = rules.read_text()
    broken = "max by (cluster, namespace) (tollgate_reports_projection_lag_seconds)"
    assert broken in text
    rules.write_text(
        text.replace(broken, "max by cluster (tollgate_reports_projection_lag_seconds)")
    )
    result = run([tool("promtool"), "check", "rules", rules])
    assert result.returncode != 0
    assert "namespace:tollgate_reports_projection_lag_seconds:max" in result.stdout + result.stderr


def test_promtool_test_catches_a_changed_threshold(tmp_path: Path) -> None:
    """An alert threshold that no longer matches its unit test fails `promtool test rules`."""
    rules, tests = _copy_rules(tmp_path)
    text = rules.read_text()
    assert "namespace_consumer:tollgate_consumer_lag:sum > 10000" in text
    rules.write_text(
        text.replace(
            "namespace_consumer:tollgate_consumer_lag:sum > 10000",
            "namespace_consumer:tollgate_consumer_lag:sum > 20000",
        )
    )
    result = run([tool("promtool"), "test", "rules", tests])
    assert result.returncode != 0
    assert "TollgateConsumerLagHigh" in result.stdout + result.stderr


def test_promtool_test_catches_one_namespace_masking_another(tmp_path: Path) -> None:
    """Readiness taken across namespaces lets staging hide prod's outage, and the unit tests say so."""
    rules, tests = _copy_rules(tmp_path)
    text = rules.read_text()
    per_namespace = (
        "unless on (cluster, namespace)\n"
        '          max by (cluster, namespace) (tollgate_ready{service="limits"} == 1)'
    )
    assert per_namespace in text
    across = (
        'unless on (cluster)\n          max by (cluster) (tollgate_ready{service="limits"} == 1)'
    )
    rules.write_text(text.replace(per_namespace, across))
    result = run([tool("promtool"), "test", "rules", tests])
    assert result.returncode != 0
    assert "every limits pod gone in one namespace" in result.stdout + result.stderr

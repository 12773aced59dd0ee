"""The Prometheus rules: promtool accepts them, their unit tests pass, and each alert is tested."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.deploy.support import (
    RULES,
    RULES_TEST,
    alert_names,
    load_yaml,
    ok,
    recorded_names,
    run,
    tool,
)

#: Alerts the issue asks for, by the condition each one covers.
REQUIRED_ALERTS = {
    "ingest error rate": "TollgateIngestErrorRate",
    "ingest 503s": "TollgateIngestUnavailable",
    "consumer lag": "TollgateConsumerLagHigh",
    "projection lag": "TollgateReportsProjectionLagHigh",
    "limits replica not caught up": "TollgateLimitsReplicaNotCaughtUp",
    "fail-open checks": "TollgateLimitCheckFailOpen",
    "publisher failure streak": "TollgatePublisherFailing",
    "oldest pending age": "TollgatePublisherBacklogOld",
    "events expiring": "TollgatePublisherEventsExpired",
    "dlq growth": "TollgateDeadLetters",
}


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


def test_every_alert_the_issue_names_exists() -> None:
    """Each operator concern has its alert, with a severity, a summary and a description."""
    rules = load_yaml(RULES)
    assert set(REQUIRED_ALERTS.values()) <= set(alert_names(rules))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]
                assert rule["annotations"]["description"], rule["alert"]


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
    rules.write_text(text.replace("sum by (consumer) (max by", "sum by consumer (max by", 1))
    result = run([tool("promtool"), "check", "rules", rules])
    assert result.returncode != 0
    assert "consumer:tollgate_consumer_lag:sum" in result.stdout + result.stderr


def test_promtool_test_catches_a_changed_threshold(tmp_path: Path) -> None:
    """An alert threshold that no longer matches its unit test fails `promtool test rules`."""
    rules, tests = _copy_rules(tmp_path)
    text = rules.read_text()
    assert "consumer:tollgate_consumer_lag:sum > 10000" in text
    rules.write_text(
        text.replace(
            "consumer:tollgate_consumer_lag:sum > 10000",
            "consumer:tollgate_consumer_lag:sum > 20000",
        )
    )
    result = run([tool("promtool"), "test", "rules", tests])
    assert result.returncode != 0
    assert "TollgateConsumerLagHigh" in result.stdout + result.stderr

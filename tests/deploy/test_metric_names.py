"""Rules and dashboards use only metrics the services export, as metric-names.txt lists them."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tests.deploy.support import (
    DASHBOARDS,
    METRIC_NAMES,
    RULES,
    Query,
    base_name,
    dashboard_queries,
    load_json,
    load_yaml,
    metric_names,
    recorded_names,
    rule_queries,
    selected_names,
    substitute,
    variable_values,
)


def _all_queries() -> list[Query]:
    queries = list(rule_queries(load_yaml(RULES)))
    for path in DASHBOARDS:
        dashboard = load_json(path)
        values = variable_values(dashboard)
        queries += [
            Query(q.where, substitute(q.expr, values)) for q in dashboard_queries(dashboard)
        ]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                # label_values(metric, label): the metric is what Grafana asks Prometheus for.
                definition = variable["definition"]
                metric = definition.removeprefix("label_values(").rsplit(",", 1)[0].strip()
                queries.append(Query(f"{dashboard['uid']} variable {variable['name']}", metric))
    return queries


#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})


def _unknown(queries: Iterable[Query], exported: set[str], recorded: set[str]) -> list[str]:
    problems = []
    for query in queries:
        for name in sorted(selected_names(query.expr)):
            if name in recorded or name in exported or base_name(name) in exported:
                continue
            if name in PROMETHEUS_SERIES:
                continue
            problems.append(f"{query.where}: {name}")
    return problems


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (service, le) (rate(tollgate_http_request_duration_seconds_bucket{route!~"/x|/y"}[5m]))',
            {"tollgate_http_request_duration_seconds_bucket"},
        ),
        (
            "a_total / on (job) group_left (x) b:c:rate5m > bool 1e6 unless absent(c) offset 5m",
            {"a_total", "b:c:rate5m", "c"},
        ),
        ('max(x{reason="rate(y)"}) * 3600 / 1e6', {"x"}),
        (
            "topk(10, max by (user_id) (tollgate_limits_top_user_spend_micros)) / 1e6",
            {"tollgate_limits_top_user_spend_micros"},
        ),
    ],
)
def test_metric_name_reader(expr: str, names: set[str]) -> None:
    """The reader finds exactly the selected metric names, not functions, labels or keywords."""
    assert selected_names(expr) == names


def test_metric_names_file_is_sorted_base_names() -> None:
    """metric-names.txt lists each base name once, sorted, without histogram suffixes."""
    lines = [line for line in METRIC_NAMES.read_text().splitlines() if line]
    assert lines == sorted(set(lines))
    assert all(base_name(line) == line and line.startswith("tollgate_") for line in lines)


def test_rules_and_dashboards_use_only_exported_metrics() -> None:
    """Every metric a rule, a panel or a variable selects is exported or recorded by a rule."""
    problems = _unknown(_all_queries(), metric_names(), recorded_names(load_yaml(RULES)))
    assert not problems, "not in metric-names.txt:\n" + "\n".join(problems)


def test_every_listed_metric_is_used() -> None:
    """metric-names.txt lists only names that rules or dashboards use, so it stays the exact set."""
    used = {base_name(n) for q in _all_queries() for n in selected_names(q.expr)}
    assert metric_names() - used == set()


def test_an_unexported_metric_is_reported() -> None:
    """A query selecting a metric that no service exports is reported with where it is."""
    broken = [Query("panel 1 (Spend)", "sum(rate(tollgate_spend_total[5m]))")]
    assert _unknown(broken, metric_names(), set()) == ["panel 1 (Spend): tollgate_spend_total"]

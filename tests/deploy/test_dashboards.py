"""The Grafana dashboards: well-formed, uniquely identified, and every query valid PromQL."""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    DASHBOARDS,
    Query,
    check_with_promtool,
    dashboard_queries,
    load_json,
    panels,
    substitute,
    variable_values,
)

_VARIABLE_USE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def _dashboards() -> list[dict[str, Any]]:
    return [load_json(path) for path in DASHBOARDS]


def _substituted(dashboards: list[dict[str, Any]]) -> list[Query]:
    queries = []
    for dashboard in dashboards:
        values = variable_values(dashboard)
        queries += [
            Query(q.where, substitute(q.expr, values)) for q in dashboard_queries(dashboard)
        ]
    return queries


def test_dashboard_uids_are_unique_and_valid() -> None:
    """Each dashboard has its own uid, short enough for Grafana, and a title."""
    dashboards = _dashboards()
    uids = [d["uid"] for d in dashboards]
    assert len(set(uids)) == len(uids)
    for dashboard in dashboards:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), dashboard["uid"]
        assert dashboard["title"].startswith("Tollgate / ")
        assert "tollgate" in dashboard["tags"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panel_ids_are_unique_and_placed(path: Path) -> None:
    """Panel ids are unique and every panel sits inside the 24-column grid without overlapping another."""
    dashboard = load_json(path)
    ids = [p["id"] for p in panels(dashboard)]
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"duplicate panel ids {duplicated}"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']} overlaps {other}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_query_the_datasource_variable(path: Path) -> None:
    """Every data panel and target uses the dashboard's Prometheus data source variable."""
    dashboard = load_json(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_variable_a_query_uses_is_defined(path: Path) -> None:
    """Queries use only Grafana's built-in variables and the dashboard's own."""
    dashboard = load_json(path)
    known = set(variable_values(dashboard))
    for query in dashboard_queries(dashboard):
        used = {next(g for g in m.groups() if g) for m in _VARIABLE_USE.finditer(query.expr)}
        assert used <= known, f"{query.where}: undefined {used - known}"


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Each panel query, its variables substituted as Grafana would, is valid PromQL."""
    queries = _substituted(_dashboards())
    assert len(queries) > 40
    result = check_with_promtool(queries, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_broken_dashboard_query(tmp_path: Path) -> None:
    """A dashboard query with a syntax error fails the check and names its panel."""
    dashboard = copy.deepcopy(load_json(DASHBOARDS[0]))
    panel = next(p for p in panels(dashboard) if p["type"] == "timeseries")
    panel["targets"][0]["expr"] = (
        "sum by (service) (rate(tollgate_http_requests_total[$__rate_interval])"
    )
    result = check_with_promtool(_substituted([dashboard]), tmp_path)
    assert result.returncode != 0
    assert f"panel {panel['id']} ({panel['title']})" in result.stdout + result.stderr


#: A metric selector in a dashboard query (not a function call, not a recorded series).
_SELECTOR = re.compile(r"(?<![\w:.$])(tollgate_[a-z0-9_]+|up)\b(\{[^}]*\})?(?!\s*\()")
_BY = re.compile(r"\bby \(([^)]*)\)")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_is_scoped_to_the_chosen_cluster_and_namespaces(path: Path) -> None:
    """Every selector filters on $cluster and $namespace, and every breakdown keeps namespace apart."""
    dashboard = load_json(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["cluster"]["allValue"] == ".*"
    assert variables["namespace"]["multi"] is True
    assert "$cluster" in variables["namespace"]["definition"]
    for query in dashboard_queries(dashboard):
        for match in _SELECTOR.finditer(query.expr):
            matchers = match.group(2) or ""
            assert 'cluster=~"$cluster"' in matchers, f"{query.where}: {match.group(0)}"
            assert 'namespace=~"$namespace"' in matchers, f"{query.where}: {match.group(0)}"
    for panel in panels(dashboard):
        if panel["type"] not in {"timeseries", "bargauge"}:
            continue
        for target in panel["targets"]:
            outer = _BY.search(target["expr"])
            if outer is not None and "model" not in outer.group(1):
                assert "namespace" in outer.group(1), f"{panel['title']}: {target['expr']}"


def test_operator_overview_opens_with_targets_readiness_lag_and_dead_letters() -> None:
    """The first row shows targets up, replicas ready, consumer lag and dead letters."""
    dashboard = load_json(DASHBOARDS[0])
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    first_row_end = rows[1]["gridPos"]["y"]
    first = [
        p for p in dashboard["panels"] if p["type"] != "row" and p["gridPos"]["y"] < first_row_end
    ]
    exprs = " ".join(t["expr"] for p in first for t in p["targets"])
    for needle in (
        'up{job="tollgate"',
        "tollgate_ready{",
        "tollgate_consumer_lag{",
        "tollgate_consumer_dlq_total{",
    ):
        assert needle in exprs, needle

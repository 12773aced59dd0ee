"""What the deploy checks share: where things are, how to run the tools, how to read PromQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import yaml
except ImportError as exc:  # the deploy tools bring PyYAML along with kubernetes-validate
    raise ImportError("PyYAML is not installed: run `make deploy-tools`") from exc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "tollgate"
PRODUCTION_VALUES = DEPLOY / "helm" / "values-production.yaml"
#: The monitoring's one copy: the chart ships it, operators load it, the tests check it.
MONITORING = CHART / "files"
RULES = MONITORING / "prometheus" / "rules.yml"
RULES_TEST = MONITORING / "prometheus" / "rules.test.yml"
METRIC_NAMES = MONITORING / "prometheus" / "metric-names.txt"
DASHBOARDS = (
    MONITORING / "grafana" / "operator-overview.json",
    MONITORING / "grafana" / "spend-overview.json",
)
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion), the one its helm comes
#: with, and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.27.0", "1.31.0", "1.37.0")
#: The version `helm template` renders for unless a test says otherwise.
KUBE_VERSION = "1.31.0"
MONITORING_API = "monitoring.coreos.com/v1"
#: How long `helm install`/`upgrade` wait for a hook Job unless --timeout says otherwise.
HELM_DEFAULT_TIMEOUT_S = 300
SERVICES = ("ingest", "limits", "reports", "publisher")

#: Tokens for renders that own their Secret: `helm template` cannot read generated ones back
#: from a cluster, so the chart refuses to generate them there.
TOKENS = (
    "--set",
    "secrets.emitterTokens={trial-emitter-token-0001},secrets.adminTokens={trial-admin-token-0001}",
    "--set",
    "secrets.portalSecret=trial-portal-secret-0123456789abcdef0123456789",
)
#: The trial install as `helm template` renders it: the defaults plus what it cannot generate.
TRIAL = (*TOKENS, "--set", "postgresql.auth.password=trial-password")
#: The value sets every chart check runs with.
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "default": TRIAL,
    "production": ("--values", str(PRODUCTION_VALUES), "--api-versions", MONITORING_API),
    "trial-networkpolicy": (
        *TRIAL,
        "--set",
        "networkPolicy.enabled=true,publisher.billingUrl=https://billing.example.com",
    ),
    "ingress": (
        *TRIAL,
        "--set",
        "ingress.enabled=true,ingress.host=tollgate.example.com,ingress.className=nginx",
        "--set",
        "ingress.tls[0].secretName=tollgate-tls,ingress.tls[0].hosts[0]=tollgate.example.com",
    ),
}

_TOOL_DIRS = (REPO / ".tools" / "bin", Path(sys.executable).parent)
_TIMEOUT_S = 60


def tool(name: str) -> str:
    """The path of a deploy tool; a missing tool fails the test with how to install it."""
    for directory in _TOOL_DIRS:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make deploy-tools`", pytrace=False)
    return found


def run(args: Sequence[str | Path], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool and return what it did, whatever its exit status."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a tool run that must have succeeded; otherwise fail with everything it said."""
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(result.args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


def helm_template(
    *args: str | Path,
    chart: Path = CHART,
    release: str = "tollgate",
    kube_version: str = KUBE_VERSION,
) -> subprocess.CompletedProcess[str]:
    """Render the chart offline, as `helm template` does in a pipeline."""
    return run(
        [
            tool("helm"),
            "template",
            release,
            chart,
            "--namespace",
            "tollgate",
            "--kube-version",
            kube_version,
            *args,
        ]
    )


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def write_yaml(path: Path, *docs: Any) -> None:
    """Write one or more YAML documents to a file."""
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def load_yaml(path: Path) -> Any:
    """One YAML file, parsed."""
    return yaml.safe_load(path.read_text())


def load_json(path: Path) -> Any:
    """One JSON file, parsed."""
    return json.loads(path.read_text())


def by_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """The rendered objects of one kind."""
    return [d for d in docs if d.get("kind") == kind]


def named(docs: Sequence[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any]:
    """The rendered object of a kind with a name; the test fails when there is none."""
    for doc in by_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    pytest.fail(f"no {kind} named {name} in the rendered chart", pytrace=False)


def metric_names() -> set[str]:
    """The metric names the services export, as deploy/helm/tollgate/files/prometheus/metric-names.txt lists them."""
    return {line.strip() for line in METRIC_NAMES.read_text().splitlines() if line.strip()}


# --- PromQL ---------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def selected_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out).

    Our expressions select metrics by name, never with `{__name__=...}`, so reading the
    identifiers that remain once strings, label matchers, ranges and grouping clauses are
    gone is enough; promtool checks the syntax separately.
    """
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENTIFIER.findall(text) if m.lower() not in _KEYWORDS}


def base_name(name: str) -> str:
    """A histogram series' metric name without its _bucket, _count or _sum suffix."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


# --- Rules and dashboards --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL expression found in a rules file or a dashboard, and where it came from."""

    where: str
    expr: str


def rule_queries(rules: Mapping[str, Any]) -> Iterator[Query]:
    """Every expression of a Prometheus rules document."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            yield Query(f"rule {name}", rule["expr"])


def recorded_names(rules: Mapping[str, Any]) -> set[str]:
    """The series names the recording rules define."""
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def alert_names(rules: Mapping[str, Any]) -> list[str]:
    """The alerts a rules document defines, in order."""
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel of a dashboard, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterator[Query]:
    """Every PromQL expression of a dashboard's panels, with its variables still in it."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                where = (
                    f"{dashboard['uid']} panel {panel['id']} ({panel['title']}) {target['refId']}"
                )
                yield Query(where, target["expr"])


#: Values for Grafana's built-in variables, as Grafana would put them in a query.
BUILTIN_VARIABLES = {
    "__rate_interval": "2m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def variable_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """A value for each of a dashboard's variables, as Grafana substitutes it into PromQL."""
    values = dict(BUILTIN_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable["type"] == "datasource":
            continue
        if variable.get("includeAll") and variable.get("allValue"):
            values[name] = variable["allValue"]
        else:
            current = variable.get("current", {}).get("value")
            values[name] = str(current[0] if isinstance(current, list) else current)
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """The expression with every dashboard variable replaced; unknown ones raise KeyError."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values[name]

    return _VARIABLE.sub(replace, expr)


def check_with_promtool(
    queries: Sequence[Query], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Parse each expression with promtool, as one recording rule in a group named after it."""
    groups = [
        {"name": q.where, "rules": [{"record": f"dashboard:check_{i}", "expr": q.expr}]}
        for i, q in enumerate(queries)
    ]
    path = workdir / "queries.rules.yml"
    write_yaml(path, {"groups": groups})
    return run([tool("promtool"), "check", "rules", path])

"""The Helm chart: it lints, renders valid Kubernetes objects, and says what operators rely on."""

from __future__ import annotations

import base64
import json
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from libs.service.runtime import SHUTDOWN_TIMEOUT_S
from libs.service.settings import CommonSettings
from libs.service.spec import services
from services.limits.app import FINAL_SNAPSHOT_TIMEOUT_S
from tests.deploy.support import (
    CHART,
    DASHBOARDS,
    HELM_DEFAULT_TIMEOUT_S,
    KUBE_VERSIONS,
    MONITORING_API,
    REPO,
    RULES,
    SERVICES,
    TOKENS,
    TRIAL,
    VALUE_SETS,
    by_kind,
    documents,
    helm_template,
    load_yaml,
    named,
    ok,
    run,
    tool,
    write_yaml,
)

CUSTOM_RESOURCES = frozenset({"ServiceMonitor", "PrometheusRule"})
EXTERNAL = (
    *TOKENS,
    "--set",
    "kafka.enabled=false,postgresql.enabled=false",
    "--set",
    "externalKafka.bootstrapServers=kafka:9092",
)

Doc = Mapping[str, Any]


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    """The chart rendered with its default values (and what `helm template` cannot generate)."""
    return documents(ok(helm_template(*TRIAL)))


@pytest.fixture(scope="module")
def production_docs() -> list[dict[str, Any]]:
    """The chart rendered with the production values, on a cluster with the Prometheus Operator."""
    return documents(ok(helm_template(*VALUE_SETS["production"])))


def _pod_spec(doc: Doc) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _containers(doc: Doc) -> list[Mapping[str, Any]]:
    spec = _pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _fullname(service: str) -> str:
    return f"tollgate-{service}"


def _render_fails(*args: str) -> str:
    result = helm_template(*TRIAL, *args)
    assert result.returncode != 0, f"helm template {' '.join(args)} rendered:\n{result.stdout}"
    return result.stderr


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_chart_lints_strictly(values: str) -> None:
    """`helm lint --strict` passes with the default and the production values."""
    extra = [a for a in VALUE_SETS[values] if a not in {"--api-versions", MONITORING_API}]
    ok(run([tool("helm"), "lint", "--strict", "--with-subcharts", CHART, *extra]))


def test_chart_packages_and_renders_from_the_archive(tmp_path: Path) -> None:
    """`helm package` builds an archive with the vendored dependencies that renders offline."""
    ok(run([tool("helm"), "package", CHART, "--destination", tmp_path]))
    (archive,) = tmp_path.glob("tollgate-*.tgz")
    docs = documents(ok(helm_template(*TRIAL, chart=archive)))
    assert {d["metadata"]["name"] for d in by_kind(docs, "StatefulSet")} == {
        "tollgate-kafka",
        "tollgate-postgresql",
    }
    assert by_kind(docs, "Job"), "the migration hook is in the archive"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_objects_validate_strictly(values: str, kube_version: str, tmp_path: Path) -> None:
    """Every built-in object validates with `kubernetes-validate --strict` for that Kubernetes."""
    docs = documents(ok(helm_template(*VALUE_SETS[values], kube_version=kube_version)))
    builtin = [d for d in docs if d["kind"] not in CUSTOM_RESOURCES]
    manifest = tmp_path / "rendered.yaml"
    write_yaml(manifest, *builtin)
    result = run([tool("kubernetes-validate"), "--strict", "-k", kube_version, "--quiet", manifest])
    # A kind without a schema is only a warning to the tool; here it is a typo to fix.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout, result.stdout


def test_kubernetes_validate_rejects_an_unknown_field(
    default_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The strict validation fails a Deployment carrying a field Kubernetes does not know."""
    deployment = dict(named(default_docs, "Deployment", _fullname("limits")))
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    manifest = tmp_path / "broken.yaml"
    write_yaml(manifest, deployment)
    result = run([tool("kubernetes-validate"), "--strict", "-k", "1.31.0", "--quiet", manifest])
    assert result.returncode != 0
    assert "'replica' was unexpected" in result.stdout


def test_every_service_has_a_deployment_service_and_pdb(
    production_docs: list[dict[str, Any]],
) -> None:
    """Each service gets a Deployment, a Service on its port and a PodDisruptionBudget."""
    ports = {"ingest": 8081, "limits": 8082, "reports": 8083, "publisher": 8084}
    for service in SERVICES:
        name = _fullname(service)
        deployment = named(production_docs, "Deployment", name)
        container = _pod_spec(deployment)["containers"][0]
        assert container["args"] == ["serve", service]
        assert container["ports"] == [
            {"name": "http", "containerPort": ports[service], "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports[service] + 1000, "protocol": "TCP"},
        ]
        env = _env(container)
        assert env[f"TOLLGATE_{service.upper()}_PORT"]["value"] == str(ports[service])
        assert env[f"TOLLGATE_{service.upper()}_METRICS_PORT"]["value"] == str(
            ports[service] + 1000
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", probe
        svc = named(production_docs, "Service", name)
        assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
            ("http", ports[service], "http"),
            ("metrics", ports[service] + 1000, "metrics"),
        ]
        assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        pdb = named(production_docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        assert pdb["spec"]["maxUnavailable"] == 1


def test_only_ingest_autoscales(production_docs: list[dict[str, Any]]) -> None:
    """Ingest has an HPA and leaves its replica count to it; the others set replicas."""
    hpas = by_kind(production_docs, "HorizontalPodAutoscaler")
    assert [h["metadata"]["name"] for h in hpas] == [_fullname("ingest")]
    assert hpas[0]["spec"]["scaleTargetRef"]["name"] == _fullname("ingest")
    assert hpas[0]["spec"]["minReplicas"] == 3
    assert "replicas" not in named(production_docs, "Deployment", _fullname("ingest"))["spec"]
    for service in ("limits", "reports", "publisher"):
        assert named(production_docs, "Deployment", _fullname(service))["spec"]["replicas"] >= 2


def test_limits_is_replicated_and_gated_on_readyz(production_docs: list[dict[str, Any]]) -> None:
    """Limits runs several replicas, receives traffic only when /readyz passes, and rolls surge-first."""
    deployment = named(production_docs, "Deployment", _fullname("limits"))
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = _pod_spec(deployment)["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_production_limits_pods_get_a_whole_cpu(production_docs: list[dict[str, Any]]) -> None:
    """Limits pods are Guaranteed with an integer CPU: the static CPU manager gives them one."""
    pod = _pod_spec(named(production_docs, "Deployment", _fullname("limits")))
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], container["name"]
        assert set(resources["limits"]) >= {"cpu", "memory"}, container["name"]
    cpu = str(pod["containers"][0]["resources"]["limits"]["cpu"])
    assert cpu.isdigit(), cpu
    assert int(cpu) >= 1


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_tollgate_containers_are_locked_down(values: str) -> None:
    """Every Tollgate container runs non-root, read-only, unprivileged, with only /tmp writable."""
    docs = documents(ok(helm_template(*VALUE_SETS[values])))
    workloads = [
        d
        for d in by_kind(docs, "Deployment") + by_kind(docs, "Job")
        if d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "tollgate"
    ]
    assert len(workloads) == 5
    for workload in workloads:
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
        for container in _containers(workload):
            context = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"]["memory"], where


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_chart_never_sets_the_dev_broker_epoch(values: str) -> None:
    """TOLLGATE_BROKER_EPOCH belongs to the embedded dev broker and appears nowhere in the chart."""
    assert "TOLLGATE_BROKER_EPOCH" not in ok(helm_template(*VALUE_SETS[values]))


def test_production_settings(production_docs: list[dict[str, Any]]) -> None:
    """Production talks to the external Kafka idempotently and reads every secret from its Secret."""
    config = named(production_docs, "ConfigMap", "tollgate")["data"]
    assert config["TOLLGATE_KAFKA_IDEMPOTENT"] == "true"
    assert config["KAFKA_BOOTSTRAP_SERVERS"].startswith("kafka-0.kafka.example.internal:9092,")
    assert config["TOLLGATE_LIMITS_URL"] == "http://tollgate-limits:8082"
    assert config["BILLING_URL"] == "https://billing.example.com"
    assert config["PUBLISH_INTERVAL"] == "17m"
    assert not by_kind(production_docs, "Secret"), "existingSecret: the chart owns none"
    assert not by_kind(production_docs, "StatefulSet"), "no bundled Kafka or PostgreSQL"
    for service in SERVICES:
        env = _env(
            _pod_spec(named(production_docs, "Deployment", _fullname(service)))["containers"][0]
        )
        for key in ("DATABASE_URL", "TOLLGATE_EMITTER_TOKENS", "TOLLGATE_ADMIN_TOKENS"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "tollgate-secrets"
        assert ("LICENSE_KEY" in env) == (service == "publisher")


def test_default_install_generates_tokens_and_uses_bundled_backends(
    default_docs: list[dict[str, Any]],
) -> None:
    """The default install stores the tokens given and points at the bundled Kafka and PostgreSQL."""
    secret = named(default_docs, "Secret", "tollgate")
    assert (
        base64.b64decode(secret["data"]["TOLLGATE_EMITTER_TOKENS"]) == b"trial-emitter-token-0001"
    )
    assert base64.b64decode(secret["data"]["TOLLGATE_ADMIN_TOKENS"]) == b"trial-admin-token-0001"
    password = named(default_docs, "Secret", "tollgate-postgresql")["data"]["password"]
    assert base64.b64decode(password) == b"trial-password"
    config = named(default_docs, "ConfigMap", "tollgate")["data"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == "tollgate-kafka:9092"
    assert config["TOLLGATE_KAFKA_IDEMPOTENT"] == "false"
    env = _env(_pod_spec(named(default_docs, "Deployment", _fullname("reports")))["containers"][0])
    assert (
        env["TOLLGATE_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
        == "tollgate-postgresql"
    )
    assert env["DATABASE_URL"]["value"] == (
        "postgresql://tollgate:$(TOLLGATE_DATABASE_PASSWORD)@tollgate-postgresql:5432/tollgate"
    )
    assert {s["metadata"]["name"] for s in by_kind(default_docs, "StatefulSet")} == {
        "tollgate-kafka",
        "tollgate-postgresql",
    }


def test_template_never_generates_what_it_cannot_read_back() -> None:
    """Without a cluster to read generated secrets back from, rendering fails and names the values to set."""
    result = helm_template()
    assert result.returncode != 0
    assert "set postgresql.auth.password" in result.stderr
    result = helm_template("--set", "postgresql.auth.password=pw")
    assert result.returncode != 0
    assert "set secrets.emitterTokens and secrets.adminTokens" in result.stderr
    result = helm_template(*EXTERNAL[2:], "--set", "externalDatabase.url=postgresql://db/x")
    assert result.returncode != 0
    assert "secrets.existingSecret" in result.stderr


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_renders_are_identical_every_time(values: str) -> None:
    """Two renders of the same values are byte for byte the same: nothing random, GitOps stays in sync."""
    first, second = (ok(helm_template(*VALUE_SETS[values])) for _ in range(2))
    assert first == second


def test_migration_job_runs_before_changes_with_external_backends(
    production_docs: list[dict[str, Any]],
) -> None:
    """With an external database the migration Job is a pre-install and pre-upgrade hook."""
    job = named(production_docs, "Job", "tollgate-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    pod = _pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert "initContainers" not in pod, "production creates its topics itself"
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert (
        _env(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "tollgate-secrets"
    )


def test_migration_job_waits_for_bundled_backends(default_docs: list[dict[str, Any]]) -> None:
    """With bundled Kafka and PostgreSQL the Job runs after install, creating topics first."""
    job = named(default_docs, "Job", "tollgate-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    pod = _pod_spec(job)
    assert [c["args"] for c in pod["initContainers"]] == [["create-topics"]]
    assert [c["args"] for c in pod["containers"]] == [["migrate"]]


def test_chart_owned_database_url_reaches_the_pre_install_hook() -> None:
    """A database URL given as a value is in a hook Secret created before the migration Job."""
    url = "postgresql://tollgate:pw@db:5432/tollgate"
    docs = documents(ok(helm_template(*EXTERNAL, "--set", f"externalDatabase.url={url}")))
    hook_secret = named(docs, "Secret", "tollgate-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    assert base64.b64decode(hook_secret["data"]["DATABASE_URL"]).decode() == url
    job = named(docs, "Job", "tollgate-migrate")
    env = _env(_pod_spec(job)["containers"][0])
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "tollgate-migrate"
    secret = named(docs, "Secret", "tollgate")
    assert base64.b64decode(secret["data"]["DATABASE_URL"]).decode() == url


def test_monitoring_objects_need_the_operator_api(default_docs: list[dict[str, Any]]) -> None:
    """Without monitoring.coreos.com/v1 the chart renders no ServiceMonitor or PrometheusRule."""
    assert not [d for d in default_docs if d["kind"] in CUSTOM_RESOURCES]
    with_api = documents(ok(helm_template(*TRIAL, "--api-versions", MONITORING_API)))
    assert sorted(d["kind"] for d in with_api if d["kind"] in CUSTOM_RESOURCES) == sorted(
        CUSTOM_RESOURCES
    )
    switched_off = documents(
        ok(
            helm_template(
                *TRIAL,
                "--api-versions",
                MONITORING_API,
                "--set",
                "metrics.serviceMonitor.enabled=false,metrics.prometheusRule.enabled=false",
            )
        )
    )
    assert not [d for d in switched_off if d["kind"] in CUSTOM_RESOURCES]


def test_service_monitor_scrapes_every_service(production_docs: list[dict[str, Any]]) -> None:
    """The ServiceMonitor selects each service's Service and scrapes its http port's /metrics."""
    (monitor,) = by_kind(production_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s
        for s in by_kind(production_docs, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == sorted(map(_fullname, SERVICES))
    assert all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in selected)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # `service` comes from the target, so overrideHonorLabels cannot take it away.
    assert "honorLabels" not in endpoint
    assert endpoint["relabelings"][:2] == [
        {"targetLabel": "job", "replacement": "tollgate", "action": "replace"},
        {
            "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
            "targetLabel": "service",
            "action": "replace",
        },
    ]
    components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected}
    assert components == set(SERVICES)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["tollgate"]}


def test_prometheus_rule_carries_the_rules_file(
    production_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The PrometheusRule holds exactly the chart's files/prometheus/rules.yml; promtool accepts it."""
    (rule,) = by_kind(production_docs, "PrometheusRule")
    assert rule["apiVersion"] == MONITORING_API
    assert rule["spec"] == load_yaml(RULES)
    spec = tmp_path / "spec.yml"
    write_yaml(spec, rule["spec"])
    ok(run([tool("promtool"), "check", "rules", spec]))


def test_grafana_dashboards_ship_as_sidecar_config_maps(
    production_docs: list[dict[str, Any]],
) -> None:
    """With grafanaDashboards enabled each dashboard is a labelled ConfigMap holding its JSON."""
    maps = [
        m
        for m in by_kind(production_docs, "ConfigMap")
        if m["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    shipped = {key: json.loads(value) for m in maps for key, value in m["data"].items()}
    assert shipped == {path.name: json.loads(path.read_text()) for path in DASHBOARDS}
    assert all(m["metadata"]["annotations"] == {"grafana_folder": "Tollgate"} for m in maps)


def test_rules_and_dashboards_exist_in_one_copy() -> None:
    """No tracked file besides the chart's own repeats the rules or a dashboard."""
    originals = {path: path.read_bytes() for path in (RULES, *DASHBOARDS)}
    listed = ok(run(["git", "-C", str(REPO), "ls-files", "-z"])).split("\0")
    copies = [
        name
        for name in listed
        if name
        and (REPO / name) not in originals
        and (REPO / name).is_file()
        and (REPO / name).read_bytes() in originals.values()
    ]
    assert copies == [], f"copies of the monitoring files: {copies}"


def test_packaged_chart_ships_the_rules_and_dashboards_without_their_tests(
    tmp_path: Path,
) -> None:
    """`helm package` carries rules.yml and the dashboards, and leaves out their tests."""
    ok(run([tool("helm"), "package", str(CHART), "--destination", str(tmp_path)]))
    (package,) = tmp_path.glob("*.tgz")
    with tarfile.open(package) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames()}
    assert {"files/prometheus/rules.yml"} | {f"files/grafana/{d.name}" for d in DASHBOARDS} <= names
    assert "files/prometheus/rules.test.yml" not in names
    assert "files/prometheus/metric-names.txt" not in names


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "limits.replicaCount=0"), "limits.replicaCount"),
        (("--set", "config.logLevel=verbose"), "config.logLevel"),
        (("--set", "secrets.adminTokens={short}"), "secrets.adminTokens"),
        (("--set", "ingest.port=80"), "ingest.port"),
        (("--set", "publisher.publishInterval=soon"), "publisher.publishInterval"),
        (("--set", "replicas=3"), "replicas"),
        (("--set", "postgresql.auth.password=p@ss/word"), "postgresql.auth.password"),
        (("--set", "limits.metricsPort=80"), "limits.metricsPort"),
        (("--set", "topologySpread.nodes=Sometimes"), "topologySpread.nodes"),
        (("--set", "priorityClassName=Not_Valid"), "priorityClassName"),
        (("--set", "networkPolicy.kafka.ports=null"), "networkPolicy.kafka"),
        (("--set", "migrations.database.grantTo=a b"), "migrations.database.grantTo"),
        (("--set", "migrations.activeDeadlineSeconds=5"), "migrations.activeDeadlineSeconds"),
    ],
)
def test_schema_rejects_bad_values(values: Sequence[str], message: str) -> None:
    """values.schema.json turns a mistyped, out-of-range or unknown value into a render error."""
    assert message in _render_fails(*values)


def test_metrics_port_must_differ_from_the_api_port() -> None:
    """A metrics port equal to the API port fails the render, naming both values."""
    stderr = _render_fails("--set", "reports.metricsPort=8083")
    assert "reports.metricsPort must differ from reports.port (both 8083)" in stderr


def test_external_kafka_needs_bootstrap_servers() -> None:
    """Turning the bundled Kafka off without naming an external one fails with the value to set."""
    stderr = _render_fails("--set", "kafka.enabled=false")
    assert "externalKafka.bootstrapServers is required" in stderr


def test_external_database_needs_a_url_or_secret() -> None:
    """Turning the bundled PostgreSQL off without a database URL source fails with what to set."""
    stderr = _render_fails(*EXTERNAL)
    assert "no database: set externalDatabase.url" in stderr
    stderr = _render_fails(
        *EXTERNAL, "--set", "secrets.existingSecret=s,externalDatabase.url=postgresql://db/x"
    )
    assert "externalDatabase.url is not used when secrets.existingSecret is set" in stderr


def _copy_chart(tmp_path: Path) -> Path:
    # copytree follows symlinks, so the copy is self-contained.
    return Path(shutil.copytree(CHART, tmp_path / "tollgate"))


def test_a_broken_template_fails_lint_and_render(tmp_path: Path) -> None:
    """A template error in a copy of the chart makes both `helm lint` and `helm template` fail."""
    chart = _copy_chart(tmp_path)
    deployment = chart / "templates" / "deployment.yaml"
    deployment.write_text(
        deployment.read_text().replace("{{- end }}\n{{- end }}\n", "{{- end }}\n", 1)
    )
    assert run([tool("helm"), "lint", "--strict", chart, *TRIAL]).returncode != 0
    assert helm_template(*TRIAL, chart=chart).returncode != 0


def test_a_template_rendering_bad_yaml_fails_lint(tmp_path: Path) -> None:
    """A template that renders malformed YAML fails `helm lint --strict`."""
    chart = _copy_chart(tmp_path)
    service = chart / "templates" / "service.yaml"
    service.write_text(service.read_text().replace("  type: ClusterIP", "type: ClusterIP: x"))
    result = run([tool("helm"), "lint", "--strict", chart])
    assert result.returncode != 0
    assert "YAML" in result.stdout + result.stderr


def _notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` would print it (helm template does not render it)."""
    chart = _copy_chart(tmp_path)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-preview.txt")
    (chart / "templates" / "notes-preview.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-preview\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes-preview.txt") . | quote }}\n'
    )
    docs = documents(ok(helm_template(*args, chart=chart)))
    notes: str = named(docs, "ConfigMap", "notes-preview")["data"]["notes"]
    return notes


def test_notes_warn_about_idle_consumer_replicas_and_trial_backends(tmp_path: Path) -> None:
    """NOTES warn when reports has more replicas than partitions and when bundled backends run."""
    notes = _notes(tmp_path, *TRIAL, "--set", "reports.replicaCount=14")
    assert "reports has 14 replicas but usage.events has 12 partitions" in notes
    assert "2 replicas stay idle" in notes
    assert "bundled single-node Kafka and PostgreSQL are for trying Tollgate out" in notes
    assert "publisher.billingUrl is empty" in notes
    assert "http://tollgate-limits.tollgate.svc:8082" in notes


def test_notes_stay_quiet_for_production(tmp_path: Path) -> None:
    """With the production values NOTES carry no warning."""
    notes = _notes(tmp_path, *VALUE_SETS["production"])
    assert "WARNING" not in notes
    assert "NOTE" not in notes
    assert "come from the Secret tollgate-secrets" in notes
    restart = (
        "kubectl -n tollgate rollout restart deployment -l app.kubernetes.io/instance=tollgate"
    )
    assert restart in notes
    assert "kubectl label namespace <platform-namespace> tollgate.io/client=true" in notes


def _spread(doc: Doc) -> dict[str, str]:
    constraints = _pod_spec(doc)["topologySpreadConstraints"]
    assert all(c["nodeTaintsPolicy"] == "Honor" for c in constraints)
    assert all(
        c["labelSelector"]["matchLabels"] == doc["spec"]["selector"]["matchLabels"]
        for c in constraints
    )
    return {c["topologyKey"]: c["whenUnsatisfiable"] for c in constraints}


def test_limits_replicas_never_share_a_node(
    production_docs: list[dict[str, Any]], default_docs: list[dict[str, Any]]
) -> None:
    """Limits replicas must land on different nodes; everything else only prefers to, over nodes and zones."""
    hostname, zone = "kubernetes.io/hostname", "topology.kubernetes.io/zone"
    for docs in (production_docs, default_docs):
        assert _spread(named(docs, "Deployment", _fullname("limits"))) == {
            hostname: "DoNotSchedule",
            zone: "ScheduleAnyway",
        }
        for service in ("ingest", "reports", "publisher"):
            assert _spread(named(docs, "Deployment", _fullname(service))) == {
                hostname: "ScheduleAnyway",
                zone: "ScheduleAnyway",
            }
    docs = documents(ok(helm_template(*TRIAL, "--set", "topologySpread.zones=")))
    assert _spread(named(docs, "Deployment", _fullname("reports"))) == {hostname: "ScheduleAnyway"}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_grace_period_covers_the_worst_case_shutdown(values: str) -> None:
    """Each pod's grace period covers the preStop pause, requests in flight, closing the producer and (limits) the final snapshot."""
    docs = documents(ok(helm_template(*VALUE_SETS[values])))
    producer_close = CommonSettings.model_fields["kafka_timeout_s"].default
    for service in SERVICES:
        pod = _pod_spec(named(docs, "Deployment", _fullname(service)))
        (container,) = pod["containers"]
        pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        worst = pause + SHUTDOWN_TIMEOUT_S + producer_close
        if service == "limits":
            worst += FINAL_SNAPSHOT_TIMEOUT_S
        assert pod["terminationGracePeriodSeconds"] >= worst + 5, (service, worst)


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_migration_job_gives_up_before_helm_does(values: str) -> None:
    """The migration Job's deadline is within Helm's default 5-minute wait, so its own error is what fails the release."""
    docs = documents(ok(helm_template(*VALUE_SETS[values])))
    job = named(docs, "Job", "tollgate-migrate")
    assert job["spec"]["activeDeadlineSeconds"] < HELM_DEFAULT_TIMEOUT_S


def test_migrations_can_run_as_their_own_role() -> None:
    """With a migration role, the Job reads its URL from that Secret and grants the services' role; the services keep theirs."""
    docs = documents(
        ok(
            helm_template(
                *VALUE_SETS["production"],
                "--set",
                "migrations.database.existingSecret=tollgate-migrations",
                "--set",
                "migrations.database.grantTo=tollgate_app",
            )
        )
    )
    env = _env(_pod_spec(named(docs, "Job", "tollgate-migrate"))["containers"][0])
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-migrations",
        "key": "DATABASE_URL",
    }
    assert env["TOLLGATE_MIGRATIONS_GRANT_TO"]["value"] == "tollgate_app"
    for service in SERVICES:
        container = _pod_spec(named(docs, "Deployment", _fullname(service)))["containers"][0]
        ref = _env(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "tollgate-secrets"
    url = "postgresql://migrator:pw@db:5432/tollgate"
    docs = documents(
        ok(
            helm_template(
                *EXTERNAL,
                "--set",
                f"externalDatabase.url=postgresql://app:pw@db:5432/tollgate,migrations.database.url={url}",
                "--set",
                "migrations.database.grantTo=app",
            )
        )
    )
    hook_secret = named(docs, "Secret", "tollgate-migrate")
    assert base64.b64decode(hook_secret["data"]["DATABASE_URL"]).decode() == url
    app_secret = named(docs, "Secret", "tollgate")
    assert b"app:pw" in base64.b64decode(app_secret["data"]["DATABASE_URL"])
    stderr = _render_fails(
        *EXTERNAL[2:],
        "--set",
        f"externalDatabase.url=postgresql://db/x,migrations.database.url={url}",
    )
    assert "migrations.database.grantTo is required" in stderr


def test_extra_env_volumes_and_priority_reach_every_pod(tmp_path: Path) -> None:
    """Shared extras reach every service and the migration Job; a service's own extras reach only it."""
    extras = {
        "extraEnvFrom": [{"secretRef": {"name": "shared-env"}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "pg-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/pg-ca", "readOnly": True}],
        "priorityClassName": "tollgate-high",
        "limits": {
            "extraEnvFrom": [{"configMapRef": {"name": "limits-env"}}],
            "priorityClassName": "tollgate-critical",
        },
    }
    values = tmp_path / "extras.yaml"
    write_yaml(values, extras)
    docs = documents(ok(helm_template(*TRIAL, "--values", values)))
    for service in SERVICES:
        pod = _pod_spec(named(docs, "Deployment", _fullname(service)))
        (container,) = pod["containers"]
        env_from = container["envFrom"]
        assert {"secretRef": {"name": "shared-env"}} in env_from
        assert ({"configMapRef": {"name": "limits-env"}} in env_from) == (service == "limits")
        assert {"name": "ca", "configMap": {"name": "pg-ca"}} in pod["volumes"]
        assert {"name": "ca", "mountPath": "/etc/pg-ca", "readOnly": True} in container[
            "volumeMounts"
        ]
        want = "tollgate-critical" if service == "limits" else "tollgate-high"
        assert pod["priorityClassName"] == want
    job = _pod_spec(named(docs, "Job", "tollgate-migrate"))
    assert job["priorityClassName"] == "tollgate-high"
    for container in [*job["initContainers"], *job["containers"]]:
        assert container["envFrom"] == [{"secretRef": {"name": "shared-env"}}]
        assert {"name": "ca", "mountPath": "/etc/pg-ca", "readOnly": True} in container[
            "volumeMounts"
        ]


def _policy_ports(rule: Mapping[str, Any]) -> set[tuple[object, str]]:
    return {(p["port"], p["protocol"]) for p in rule["ports"]}


def test_network_policies_guard_every_service(production_docs: list[dict[str, Any]]) -> None:
    """Each service's policy admits API calls from clients, the ingress controller and its own release, metrics from monitoring only, and egress to DNS, Kafka, PostgreSQL, its release's APIs and billing."""
    policies = {p["metadata"]["name"]: p for p in by_kind(production_docs, "NetworkPolicy")}
    assert set(policies) == {_fullname(s) for s in SERVICES}
    for service in SERVICES:
        policy = policies[_fullname(service)]["spec"]
        deployment = named(production_docs, "Deployment", _fullname(service))
        assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        api, metrics = policy["ingress"]
        assert _policy_ports(api) == {("http", "TCP")}
        assert [next(iter(peer)) for peer in api["from"]] == [
            "namespaceSelector",
            "namespaceSelector",
            "podSelector",
        ]
        assert api["from"][0]["namespaceSelector"] == {
            "matchLabels": {"tollgate.io/client": "true"}
        }
        assert api["from"][1]["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
        }
        assert _policy_ports(metrics) == {("metrics", "TCP")}
        assert metrics["from"] == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ]
        egress = [_policy_ports(rule) for rule in policy["egress"]]
        assert egress[:4] == [
            {(53, "UDP"), (53, "TCP")},
            {(9092, "TCP")},
            {(5432, "TCP")},
            {(8081, "TCP"), (8082, "TCP"), (8083, "TCP"), (8084, "TCP")},
        ]
        assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
        assert policy["egress"][3]["to"] == api["from"][2:]
        extra = {"publisher": [{(443, "TCP")}], "reports": [{(443, "TCP"), (80, "TCP")}]}
        assert egress[4:] == extra.get(service, [])


def test_network_policies_are_optional_and_follow_the_bundled_backends(
    default_docs: list[dict[str, Any]],
) -> None:
    """No policy by default; enabled with the bundled Kafka and PostgreSQL, egress goes to their pods, and billing to the URL's port."""
    assert not by_kind(default_docs, "NetworkPolicy")
    docs = documents(
        ok(
            helm_template(
                *TRIAL,
                "--set",
                "networkPolicy.enabled=true,publisher.billingUrl=http://billing.internal:8080/x",
            )
        )
    )
    policy = named(docs, "NetworkPolicy", _fullname("publisher"))["spec"]
    kafka, postgresql, _, billing = policy["egress"][1:]
    assert kafka["to"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "kafka",
                    "app.kubernetes.io/instance": "tollgate",
                }
            }
        }
    ]
    assert (
        postgresql["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "postgresql"
    )
    assert _policy_ports(billing) == {(8080, "TCP")}
    assert "to" not in billing


def test_notification_settings_reach_reports_and_its_policy_lets_deliveries_out() -> None:
    """The SMTP URL stays in the Secret; reports may reach webhook ports and the SMTP port."""
    docs = documents(
        ok(
            helm_template(
                *TRIAL,
                "--set",
                "networkPolicy.enabled=true,secrets.smtpUrl=smtp+starttls://u:p@mail.example.com",
                "--set",
                "notifications.smtpFrom=noreply@example.com,notifications.adminEmails={a@x.io,b@x.io}",
                "--set",
                "networkPolicy.notifications.to[0].ipBlock.cidr=10.99.0.0/16",
            )
        )
    )
    config = named(docs, "ConfigMap", "tollgate")["data"]
    assert config["TOLLGATE_SMTP_FROM"] == "noreply@example.com"
    assert config["TOLLGATE_NOTIFY_ADMIN_EMAILS"] == "a@x.io,b@x.io"
    assert config["TOLLGATE_WEBHOOK_ALLOW_PRIVATE"] == "false"
    assert "TOLLGATE_SMTP_URL" not in config
    reports = named(docs, "Deployment", _fullname("reports"))["spec"]["template"]["spec"]
    env = {e["name"]: e for e in reports["containers"][0]["env"]}
    assert env["TOLLGATE_SMTP_URL"]["valueFrom"]["secretKeyRef"]["key"] == "TOLLGATE_SMTP_URL"
    policy = named(docs, "NetworkPolicy", _fullname("reports"))["spec"]
    notifications = policy["egress"][-1]
    assert _policy_ports(notifications) == {(443, "TCP"), (80, "TCP"), (587, "TCP")}
    assert notifications["to"] == [{"ipBlock": {"cidr": "10.99.0.0/16"}}]
    publisher = named(docs, "NetworkPolicy", _fullname("publisher"))["spec"]
    assert all((587, "TCP") not in _policy_ports(rule) for rule in publisher["egress"])


def test_prometheus_rule_leaves_out_alerts_of_disabled_services() -> None:
    """With the publisher disabled, none of its alerts is shipped; every other rule still is."""
    docs = documents(
        ok(helm_template(*VALUE_SETS["production"], "--set", "publisher.enabled=false"))
    )
    (rule,) = by_kind(docs, "PrometheusRule")
    shipped = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    full = [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]
    publisher = [r for r in full if r.get("labels", {}).get("service") == "publisher"]
    assert publisher, "rules.yml has publisher alerts"
    assert shipped == [r for r in full if r not in publisher]


def test_runbook_links_can_be_made_absolute() -> None:
    """With runbookBaseUrl every alert's runbook link points into the repository at that URL."""
    base = "https://git.example.com/platform/tollgate/-/blob/main/"
    docs = documents(
        ok(
            helm_template(
                *VALUE_SETS["production"], "--set", f"metrics.prometheusRule.runbookBaseUrl={base}"
            )
        )
    )
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url == f"{base}docs/runbooks.md#{alert['alert'].lower()}", url


def test_ingress_routes_the_console_and_public_apis_and_nothing_else() -> None:
    """The optional Ingress sends /console and each /api/v1 prefix to its owner under one host, never health, metrics or OpenAPI paths, and makes reports trust the proxy."""
    docs = documents(ok(helm_template(*VALUE_SETS["ingress"])))
    ingress = named(docs, "Ingress", "tollgate")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "tollgate.example.com"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "tollgate-tls", "hosts": ["tollgate.example.com"]}
    ]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {
        "/console": "tollgate-reports",
        "/api/v1/events": "tollgate-ingest",
        "/api/v1/pricing": "tollgate-ingest",
        "/api/v1/limits": "tollgate-limits",
        "/api/v1/publisher": "tollgate-publisher",
        "/api/v1/metrics": "tollgate-reports",
        "/api/v1/costs": "tollgate-reports",
        "/api/v1/chargeback": "tollgate-reports",
        "/api/v1/directory": "tollgate-reports",
        "/api/v1/portal": "tollgate-reports",
    }
    for path in routes:
        assert not path.startswith(("/metrics", "/healthz", "/readyz", "/openapi.json"))
    assert {p["pathType"] for p in rule["http"]["paths"]} == {"Prefix"}
    config = named(docs, "ConfigMap", "tollgate")["data"]
    assert config["TOLLGATE_TRUST_PROXY"] == "true"
    assert config["TOLLGATE_INGEST_URL"] == "http://tollgate-ingest:8081"
    assert config["TOLLGATE_PUBLISHER_URL"] == "http://tollgate-publisher:8084"


def test_no_ingress_by_default_and_the_portal_secret_is_kept_in_the_secret(
    default_docs: list[dict[str, Any]],
) -> None:
    """Without ingress.enabled nothing is exposed; the chart's Secret holds the portal secret, which `helm template` cannot generate stably and so asks for by name."""
    assert by_kind(default_docs, "Ingress") == []
    secret = named(default_docs, "Secret", "tollgate")
    kept = base64.b64decode(secret["data"]["TOLLGATE_PORTAL_SECRET"]).decode()
    assert kept == "trial-portal-secret-0123456789abcdef0123456789"
    assert "TOLLGATE_TRUST_PROXY" not in named(default_docs, "ConfigMap", "tollgate")["data"]
    result = helm_template(
        "--set",
        "secrets.emitterTokens={trial-emitter-token-0001},secrets.adminTokens={trial-admin-token-0001}",
        "--set",
        "postgresql.auth.password=trial-password",
    )
    assert result.returncode != 0, result.stdout
    assert "secrets.portalSecret" in result.stderr


def test_a_short_portal_secret_is_refused() -> None:
    """The schema refuses a portal secret under 32 characters."""
    _render_fails("--set", "secrets.portalSecret=too-short")


def test_the_chart_serves_every_declared_service_on_its_declared_ports() -> None:
    """values.yaml's services and their ports are the ones each service package declares."""
    values = load_yaml(CHART / "values.yaml")
    declared = {s.name: (s.default_port, s.default_metrics_port) for s in services()}
    assert set(SERVICES) == set(declared)
    charted = {name: (values[name]["port"], values[name]["metricsPort"]) for name in SERVICES}
    assert charted == declared

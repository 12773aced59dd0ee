"""Helm's install and upgrade order, walked over the rendered chart.

`helm lint` and `helm template` cannot see that a pre-install hook names an object the
release creates only later: the pod is refused and the install times out. Here the rendered
objects are replayed in the order Helm creates them (hooks of each phase by weight and name,
then the ordinary objects by kind, then the post-phase hooks), and every object is checked,
at the moment it is created, to refer only to ServiceAccounts, Secrets, ConfigMaps and
claims that exist by then: created earlier in the walk, or created by the operator before
the install (what each scenario lists, as the README's production steps do).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.deploy.support import (
    HELM_DEFAULT_TIMEOUT_S,
    TOKENS,
    VALUE_SETS,
    documents,
    helm_template,
    ok,
)

Doc = Mapping[str, Any]
Key = tuple[str, str]

HOOK = "helm.sh/hook"
WEIGHT = "helm.sh/hook-weight"
DELETE_POLICY = "helm.sh/hook-delete-policy"

#: The order Helm 3 creates ordinary objects in (pkg/releaseutil/kind_sorter.go); other
#: kinds come after these, by kind name. Hooks of one weight follow it too.
INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]

#: Every namespace has this account from the start.
IMPLICIT: frozenset[Key] = frozenset({("ServiceAccount", "default")})


def _key(doc: Doc) -> Key:
    return doc["kind"], doc["metadata"]["name"]


def _annotations(doc: Doc) -> Mapping[str, str]:
    annotations: Mapping[str, str] = doc["metadata"].get("annotations") or {}
    return annotations


def _phases(doc: Doc) -> list[str]:
    return [p.strip() for p in _annotations(doc).get(HOOK, "").split(",") if p.strip()]


def _weight(doc: Doc) -> int:
    return int(_annotations(doc).get(WEIGHT, "0"))


def _policies(doc: Doc) -> set[str]:
    raw = _annotations(doc).get(DELETE_POLICY)
    # Helm's default when none is given.
    return {p.strip() for p in (raw or "before-hook-creation").split(",")}


def _pod_spec(doc: Doc) -> Mapping[str, Any] | None:
    spec = doc.get("spec") or {}
    if doc["kind"] == "Pod":
        return spec
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template = spec.get("template")
    pod: Mapping[str, Any] | None = template.get("spec") if isinstance(template, Mapping) else None
    return pod


def references(doc: Doc) -> set[Key]:
    """The ServiceAccounts, Secrets, ConfigMaps and claims an object needs to exist (optional ones left out)."""
    pod = _pod_spec(doc)
    if pod is None:
        return set()
    refs: set[Key] = {("ServiceAccount", pod.get("serviceAccountName") or "default")}
    refs |= {("Secret", s["name"]) for s in pod.get("imagePullSecrets", [])}
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for env in container.get("env", []):
            source = env.get("valueFrom") or {}
            for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if ref in source and not source[ref].get("optional"):
                    refs.add((kind, source[ref]["name"]))
        for env_from in container.get("envFrom", []):
            for kind, ref in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if ref in env_from and not env_from[ref].get("optional"):
                    refs.add((kind, env_from[ref]["name"]))
    for volume in pod.get("volumes", []):
        refs |= _volume_references(volume)
    return refs


def _volume_references(volume: Mapping[str, Any]) -> set[Key]:
    refs: set[Key] = set()
    sources = [volume, *volume.get("projected", {}).get("sources", [])]
    for source in sources:
        secret = source.get("secret")
        if secret and not secret.get("optional"):
            refs.add(("Secret", secret.get("secretName") or secret.get("name")))
        config_map = source.get("configMap")
        if config_map and not config_map.get("optional"):
            refs.add(("ConfigMap", config_map["name"]))
    if "persistentVolumeClaim" in volume:
        refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    return refs


@dataclass
class Walk:
    """The cluster as Helm changes it, and every problem met on the way."""

    external: frozenset[Key]
    existing: set[Key] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def create(self, doc: Doc, when: str) -> None:
        """Create one object, after checking that what it refers to exists."""
        for ref in sorted(references(doc)):
            if ref not in self.existing and ref not in self.external and ref not in IMPLICIT:
                self.problems.append(
                    f"{when}: {doc['kind']} {doc['metadata']['name']} refers to {ref[0]} "
                    f"{ref[1]}, which does not exist yet"
                )
        self.existing.add(_key(doc))

    def run_hooks(self, hooks: Sequence[Doc], phase: str) -> None:
        """One hook phase in Helm's order; replace leftovers; clean up after success."""
        ordered = sorted((h for h in hooks if phase in _phases(h)), key=_hook_rank)
        for hook in ordered:
            if _key(hook) in self.existing:
                if "before-hook-creation" in _policies(hook):
                    self.existing.discard(_key(hook))
                else:
                    self.problems.append(
                        f"{phase}: hook {hook['kind']} {hook['metadata']['name']} already "
                        "exists from an earlier run and is never replaced"
                    )
            self.create(hook, f"{phase} (weight {_weight(hook)})")
        # Helm 3 deletes hook-succeeded hooks once every hook of the phase has succeeded.
        for hook in ordered:
            if "hook-succeeded" in _policies(hook):
                self.existing.discard(_key(hook))

    def apply(self, ordinary: Sequence[Doc], when: str) -> None:
        """The release's own objects, in Helm's kind order."""
        for doc in sorted(ordinary, key=_kind_rank):
            self.create(doc, when)


def _kind_rank(doc: Doc) -> tuple[int, str]:
    kind = doc["kind"]
    if kind in INSTALL_ORDER:
        return INSTALL_ORDER.index(kind), ""
    return len(INSTALL_ORDER), kind


def _hook_rank(doc: Doc) -> tuple[int, tuple[int, str], str]:
    # Helm 3 (pkg/action/hooks.go): weight, then kind in install order, then name.
    return _weight(doc), _kind_rank(doc), doc["metadata"]["name"]


def split(docs: Sequence[Doc]) -> tuple[list[Doc], list[Doc]]:
    """Hooks and ordinary objects of a rendered release."""
    hooks = [d for d in docs if _phases(d)]
    return hooks, [d for d in docs if not _phases(d)]


def install_then_upgrade(docs: Sequence[Doc], external: frozenset[Key]) -> list[str]:
    """Walk `helm install`, then `helm upgrade` with the same objects; the problems met."""
    hooks, ordinary = split(docs)
    walk = Walk(external)
    walk.run_hooks(hooks, "pre-install")
    walk.apply(ordinary, "install")
    walk.run_hooks(hooks, "post-install")
    walk.run_hooks(hooks, "pre-upgrade")
    walk.apply(ordinary, "upgrade")
    walk.run_hooks(hooks, "post-upgrade")
    return walk.problems


@dataclass(frozen=True)
class Scenario:
    """Values to render with and what the operator creates before installing."""

    args: tuple[str, ...]
    external: frozenset[Key] = frozenset()


PRODUCTION_SECRET = ("Secret", "tollgate-secrets")
SCENARIOS = {
    "default": Scenario(VALUE_SETS["default"]),
    "production": Scenario(VALUE_SETS["production"], frozenset({PRODUCTION_SECRET})),
    "trial-networkpolicy": Scenario(VALUE_SETS["trial-networkpolicy"]),
    "database-url-as-value": Scenario(
        (
            *TOKENS,
            "--set",
            "kafka.enabled=false,postgresql.enabled=false",
            "--set",
            "externalKafka.bootstrapServers=kafka:9092",
            "--set",
            "externalDatabase.url=postgresql://tollgate:pw@db:5432/tollgate",
        )
    ),
    "production-migration-role-secret": Scenario(
        (
            *VALUE_SETS["production"],
            "--set",
            "migrations.database.existingSecret=tollgate-migrations",
            "--set",
            "migrations.database.grantTo=tollgate",
        ),
        frozenset({PRODUCTION_SECRET, ("Secret", "tollgate-migrations")}),
    ),
    "production-migration-role-url": Scenario(
        (
            *VALUE_SETS["production"],
            "--set",
            "migrations.database.url=postgresql://migrator:pw@db:5432/tollgate",
            "--set",
            "migrations.database.grantTo=tollgate",
        ),
        frozenset({PRODUCTION_SECRET}),
    ),
    "production-own-service-account-and-extras": Scenario(
        (
            *VALUE_SETS["production"],
            "--set",
            "serviceAccount.create=false,serviceAccount.name=platform-workloads",
            "--set-json",
            'extraEnvFrom=[{"secretRef":{"name":"tollgate-extra"}}]',
            "--set-json",
            'extraVolumes=[{"name":"ca","secret":{"secretName":"pg-ca"}}]',
            "--set-json",
            'extraVolumeMounts=[{"name":"ca","mountPath":"/etc/pg-ca"}]',
            "--set-json",
            'imagePullSecrets=[{"name":"registry"}]',
        ),
        frozenset(
            {
                PRODUCTION_SECRET,
                ("ServiceAccount", "platform-workloads"),
                ("Secret", "tollgate-extra"),
                ("Secret", "pg-ca"),
                ("Secret", "registry"),
            }
        ),
    ),
}


def _render(scenario: Scenario) -> list[dict[str, Any]]:
    return documents(ok(helm_template(*scenario.args)))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_install_and_upgrade_order_meet_no_missing_object(name: str) -> None:
    """Every hook and object refers only to what exists when Helm creates it, on install and on a later upgrade."""
    scenario = SCENARIOS[name]
    docs = _render(scenario)
    hooks, _ = split(docs)
    assert any(d["kind"] == "Job" for d in hooks), "the migration Job is a hook"
    assert install_then_upgrade(docs, scenario.external) == []


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_external_reference_is_one_the_operator_creates(name: str) -> None:
    """What the release refers to but does not render is exactly what the scenario's operator creates first."""
    scenario = SCENARIOS[name]
    docs = _render(scenario)
    rendered = {_key(d) for d in docs}
    referred = set().union(*(references(d) for d in docs)) - IMPLICIT
    assert referred - rendered == set(scenario.external)


@pytest.mark.parametrize("name", ["default", "production"])
def test_hooks_replace_their_leftovers_and_wait_within_helms_timeout(name: str) -> None:
    """Each hook is replaced before it is created again, and every hook Job's deadline is within Helm's default wait."""
    hooks, _ = split(_render(SCENARIOS[name]))
    for hook in hooks:
        assert "before-hook-creation" in _policies(hook), hook["metadata"]["name"]
        if hook["kind"] == "Job":
            assert hook["spec"]["activeDeadlineSeconds"] < HELM_DEFAULT_TIMEOUT_S


def _hook_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


def _problems_after(change: str, docs: list[dict[str, Any]], external: frozenset[Key]) -> list[str]:
    broken = copy.deepcopy(docs)
    job = _hook_job(broken)
    pod = job["spec"]["template"]["spec"]
    if change == "ordinary service account":
        pod["serviceAccountName"] = "tollgate"
    elif change == "ordinary secret":
        pod["containers"][0]["env"].append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "tollgate", "key": "X"}}}
        )
    elif change == "ordinary config map":
        pod["containers"][0]["envFrom"] = [{"configMapRef": {"name": "tollgate"}}]
    elif change == "no replacement on upgrade":
        job["metadata"]["annotations"][DELETE_POLICY] = "hook-failed"
    elif change == "supporting hook created after the job":
        account = next(d for d in broken if _key(d) == ("ServiceAccount", "tollgate-migrate"))
        account["metadata"]["annotations"][WEIGHT] = "5"
    return install_then_upgrade(broken, external)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "ordinary service account",
            "pre-install (weight 0): Job tollgate-migrate refers to ServiceAccount tollgate",
        ),
        (
            "ordinary secret",
            "pre-install (weight 0): Job tollgate-migrate refers to Secret tollgate",
        ),
        (
            "ordinary config map",
            "pre-install (weight 0): Job tollgate-migrate refers to ConfigMap tollgate",
        ),
        ("no replacement on upgrade", "pre-upgrade: hook Job tollgate-migrate already exists"),
        ("supporting hook created after the job", "refers to ServiceAccount tollgate-migrate"),
    ],
)
def test_the_walk_catches_what_would_break_an_install(change: str, expected: str) -> None:
    """A hook Job naming an ordinary object, a hook never replaced, or a supporting hook weighted after the Job is reported."""
    scenario = SCENARIOS["production"]
    docs = _render(scenario)
    assert install_then_upgrade(docs, scenario.external) == []
    problems = _problems_after(change, docs, scenario.external)
    assert any(expected in p for p in problems), problems


def test_the_walk_sees_references_in_every_place_a_pod_names_them() -> None:
    """Env, envFrom, volumes, projected volumes, pull secrets and claims count; optional ones do not."""
    pod = {
        "serviceAccountName": "sa",
        "imagePullSecrets": [{"name": "pull"}],
        "initContainers": [{"envFrom": [{"secretRef": {"name": "init-env"}}]}],
        "containers": [
            {
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                    {
                        "name": "C",
                        "valueFrom": {
                            "secretKeyRef": {"name": "opt", "key": "k", "optional": True}
                        },
                    },
                ],
                "envFrom": [{"configMapRef": {"name": "cm-env"}}],
            }
        ],
        "volumes": [
            {"name": "v1", "secret": {"secretName": "vol-secret"}},
            {"name": "v2", "configMap": {"name": "vol-cm"}},
            {"name": "v3", "projected": {"sources": [{"secret": {"name": "proj"}}]}},
            {"name": "v4", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "v5", "emptyDir": {}},
        ],
    }
    doc = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": pod}}}
    assert references(doc) == {
        ("ServiceAccount", "sa"),
        ("Secret", "pull"),
        ("Secret", "init-env"),
        ("Secret", "s"),
        ("ConfigMap", "c"),
        ("ConfigMap", "cm-env"),
        ("Secret", "vol-secret"),
        ("ConfigMap", "vol-cm"),
        ("Secret", "proj"),
        ("PersistentVolumeClaim", "data"),
    }


def _walk_order(docs: Sequence[Doc]) -> Iterator[str]:
    hooks, ordinary = split(docs)
    for hook in sorted((h for h in hooks if "pre-install" in _phases(h)), key=_hook_rank):
        yield f"pre-install {hook['kind']}"
    for doc in sorted(ordinary, key=_kind_rank):
        yield doc["kind"]


def test_production_install_creates_the_migration_hooks_first() -> None:
    """In production the migration's ServiceAccount, then the Job run before any object of the release."""
    order = list(_walk_order(_render(SCENARIOS["production-migration-role-url"])))
    assert order[:3] == ["pre-install ServiceAccount", "pre-install Secret", "pre-install Job"]

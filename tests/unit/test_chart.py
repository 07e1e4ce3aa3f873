"""The Helm chart, rendered and linted by the real helm (built with the test control plane).

What is checked is what a platform team relies on: the objects each mode creates,
that the Deployment's settings are ones the operator actually reads, that the
monitors select what the operator and its job pods really expose, that the
alerts and dashboard query metrics that really exist (the operator's and the
trainer's registries, vLLM's source), and that values.schema.json turns bad
values into an error naming the value.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from cluster.controlplane import ControlPlaneError, find_bin_dir
from grpo_operator.api import parse_job
from grpo_operator.children import Job, inference_pod, trainer_pod
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.main import parse_args, settings_from
from grpo_operator.settings import DEFAULT_INFERENCE_IMAGE, DEFAULT_TRAINER_IMAGE, OperatorSettings
from grpo_trainer.run.progress_server import TrainerMetrics
from support.jobdocs import ROOT, load_example

CHART = ROOT / "charts" / "grpo-operator"
RELEASE = "grpo"
FULLNAME = "grpo-grpo-operator"
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}

NON_DEFAULT = {
    "image": {"repository": "registry.example.com/ml/grpo-operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watchNamespaces": ["team-a", "team-b"],
    "crds": {"install": False},
    "serviceAccount": {"name": "grpo-operator", "annotations": {"example.com/owner": "ml-platform"}},
    "rbac": {"checkSecrets": False},
    "networkPolicy": {"enabled": False, "metricsNamespaces": ["prometheus"]},
    "admissionPolicy": {"enabled": False},
    "jobDefaults": {
        "trainerImage": "registry.example.com/ml/grpo-trainer:0.1.0",
        "inferenceImage": "registry.example.com/ml/vllm:0.32.0",
        "imagePullPolicy": "IfNotPresent",
        "trainerPort": 9500,
        "clusterDomain": "corp.internal",
    },
    "operator": {
        "logLevel": "DEBUG", "resyncSeconds": 5, "progressPollSeconds": 3, "replaceUnplaceableSeconds": 300,
        "livenessStallSeconds": 60,
    },  # fmt: skip
    "metrics": {"port": 9090, "service": {"port": 9090}},
    "health": {"port": 9091},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "stalledMinutes": 45},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "ML"}},
    "priorityClassName": "platform-critical",
    "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
}


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    if os.environ.get("GRPO_SKIP_CLUSTER") == "1":
        pytest.skip("GRPO_SKIP_CLUSTER=1: helm comes with the control-plane binaries")
    try:
        return find_bin_dir() / "helm"
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)


def helm(helm_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/helm-unit/cache", "HELM_CONFIG_HOME": "/tmp/helm-unit/config"}
    proc = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, env=env, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(helm_bin: Path, *args: str) -> list[dict[str, Any]]:
    out = helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", "grpo-system", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in by_kind(docs)[kind] if name is None or d["metadata"]["name"] == name]
    return doc


def operator_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "ClusterRole", FULLNAME)


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def operator_settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    """The settings the operator would run with, from the rendered container's env and args."""
    container = operator_container(docs)
    for key in list(os.environ):
        if key.startswith("GRPO_"):
            monkeypatch.delenv(key)
    for var in container["env"]:
        monkeypatch.setenv(var["name"], var["value"])
    return settings_from(parse_args(container["args"]))


# --------------------------------------------------------------------------- lint and kinds


def test_lint_strict_with_default_and_non_default_values(helm_bin: Path, tmp_path: Path):
    helm(helm_bin, "lint", "--strict", str(CHART))
    helm(helm_bin, "lint", "--strict", str(CHART), "-f", values_file(tmp_path, NON_DEFAULT))


def test_default_install_is_cluster_wide_with_the_crd_and_nothing_optional(helm_bin: Path):
    docs = render(helm_bin)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRoleBinding", "Service", "Deployment"]
        + ["CustomResourceDefinition"] * 2  # GRPOJob, GRPOInferencePool
        + ["ClusterRole"] * 3  # the operator's, and GRPOJob rights aggregated into edit and view
        + ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 2  # a job's pool, at create
    )
    for crd_file in ("crd.yaml", "crd-pool.yaml"):
        committed = yaml.safe_load((CHART / "files" / crd_file).read_text())
        crd = one(docs, "CustomResourceDefinition", committed["metadata"]["name"])
        assert crd == committed
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": "grpo-system"}]
    assert operator_container(docs)["args"] == ["--all-namespaces"]


def test_namespace_mode_uses_roles_in_each_watched_namespace_only(helm_bin: Path, monkeypatch: pytest.MonkeyPatch):
    cluster = render(helm_bin)
    docs = render(helm_bin, "--set", "watchNamespaces={team-a,team-b}", "--set", "crds.install=false")
    kinds = by_kind(docs)
    assert "ClusterRoleBinding" not in kinds and "CustomResourceDefinition" not in kinds
    # the only cluster-scoped RBAC left is for users (aggregation), never bound to the operator
    assert sorted(r["metadata"]["name"] for r in kinds["ClusterRole"]) == [f"{FULLNAME}-edit", f"{FULLNAME}-view"]
    tenant = by_kind(
        render(
            helm_bin,
            *("--set", "watchNamespaces={team-a}", "--set", "crds.install=false"),
            *("--set", "rbac.aggregateToDefaultRoles=false", "--set", "admissionPolicy.enabled=false"),
        )
    )
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ValidatingAdmissionPolicy"}
    assert not cluster_scoped & {k.removesuffix("Binding") for k in tenant}  # the README's tenant install
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in kinds["RoleBinding"]) == ["team-a", "team-b"]
    for role in kinds["Role"]:
        assert role["rules"] == operator_role(cluster)["rules"]  # the same least privilege, namespaced
    for binding in kinds["RoleBinding"]:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": "grpo-system"}]
    assert operator_settings(docs, monkeypatch).namespaces == ("team-a", "team-b")


def test_admission_policies_are_the_generated_ones_bound_where_the_operator_watches(helm_bin: Path):
    """files/admission-policies.yaml (generated from the operator's checks) as they are, one binding each: every
    namespace by default, the watched ones in namespace mode; none with admissionPolicy.enabled=false."""
    generated = yaml.safe_load((CHART / "files" / "admission-policies.yaml").read_text())
    names = {suffix: f"{FULLNAME}-{suffix}" for suffix in generated}
    kinds = by_kind(render(helm_bin))
    policies = {p["metadata"]["name"]: p["spec"] for p in kinds["ValidatingAdmissionPolicy"]}
    assert policies == {names[s]: g["policy"] for s, g in generated.items()}
    bindings = {b["metadata"]["name"]: b["spec"] for b in kinds["ValidatingAdmissionPolicyBinding"]}
    assert bindings == {names[s]: {"policyName": names[s], **g["binding"]} for s, g in generated.items()}
    assert bindings[names["pool-model"]]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}

    scoped = by_kind(render(helm_bin, "--set", "watchNamespaces={team-a,team-b}"))
    selector = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    watched = {"matchExpressions": [selector]}
    assert [b["spec"]["matchResources"] for b in scoped["ValidatingAdmissionPolicyBinding"]] == [
        {"namespaceSelector": watched}
    ] * 2
    off = by_kind(render(helm_bin, "--set", "admissionPolicy.enabled=false"))
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & off.keys()


def test_monitoring_on_renders_monitors_rule_and_dashboard(helm_bin: Path):
    docs = render(
        helm_bin,
        *("--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"),
        *("--set", "grafanaDashboard.enabled=true"),
    )
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    no_pods = render(helm_bin, "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.jobPods=false")
    assert "ServiceMonitor" in {d["kind"] for d in no_pods} and "PodMonitor" not in {d["kind"] for d in no_pods}


# --------------------------------------------------------------------------- the Deployment


def test_operator_deployment_is_one_restricted_replica_with_a_liveness_probe(helm_bin: Path):
    deployment = one(render(helm_bin), "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert RESTRICTED_CONTAINER.items() <= container["securityContext"].items()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "ghcr.io/grpo-operator/grpo-operator:0.1.0"
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe == {"path": "/healthz", "port": "health"} and ports == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_operator_pod_runs_as_the_operator_images_user(helm_bin: Path):
    """The pod's runAsUser/runAsGroup are the USER of the Dockerfile's operator target."""
    stage, user = None, None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            stage = words[-1] if len(words) >= 4 and words[-2].upper() == "AS" else None
        elif words[:1] == ["USER"] and stage == "operator":
            user = words[1]
    assert user is not None, "no USER in the Dockerfile's operator stage"
    uid, gid = (int(x) for x in user.split(":"))
    pod = one(render(helm_bin), "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)


def test_default_settings_are_the_operators_own_defaults(helm_bin: Path, monkeypatch: pytest.MonkeyPatch):
    """... but for what only the chart knows: where the operator runs, whom a job's trainer admits."""
    settings = operator_settings(render(helm_bin), monkeypatch)
    operator_pods = {"app.kubernetes.io/name": "grpo-operator", "app.kubernetes.io/instance": RELEASE}
    assert settings == OperatorSettings(
        network_policies=True, operator_namespace="grpo-system", operator_pod_labels=operator_pods
    )
    pod_labels = one(render(helm_bin), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert operator_pods.items() <= pod_labels.items()  # the peer the trainer's NetworkPolicy admits
    assert (settings.trainer_image, settings.inference_image) == (DEFAULT_TRAINER_IMAGE, DEFAULT_INFERENCE_IMAGE)


def test_non_default_values_reach_the_operator(helm_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    docs = render(helm_bin, "-f", values_file(tmp_path, NON_DEFAULT))
    settings = operator_settings(docs, monkeypatch)
    assert settings.model_dump() == {
        **OperatorSettings().model_dump(),
        "trainer_image": "registry.example.com/ml/grpo-trainer:0.1.0",
        "inference_image": "registry.example.com/ml/vllm:0.32.0",
        "image_pull_policy": "IfNotPresent",
        "trainer_port": 9500,
        "metrics_port": 9090,
        "health_port": 9091,
        "resync_seconds": 5.0,
        "progress_poll_seconds": 3.0,
        "replace_unplaceable_seconds": 300.0,
        "liveness_stall_seconds": 60.0,
        "namespaces": ("team-a", "team-b"),
        "check_secrets": False,
        "cluster_domain": "corp.internal",
        "log_level": "DEBUG",
        "network_policies": False,
    }
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert (
        pod["serviceAccountName"] == "grpo-operator"
        and one(docs, "ServiceAccount")["metadata"]["name"] == "grpo-operator"
    )
    assert pod["containers"][0]["image"] == "registry.example.com/ml/grpo-operator:0.1.0-rc1"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["priorityClassName"] == "platform-critical"
    for role in by_kind(docs)["Role"]:  # checkSecrets=false: Secrets are only created (the job's key), never read
        assert [r["verbs"] for r in role["rules"] if "secrets" in r["resources"]] == [["create"]]
        assert all("networkpolicies" not in rule["resources"] for rule in role["rules"])  # the cluster's own


def test_rbac_is_least_privilege(helm_bin: Path):
    rules = operator_role(render(helm_bin))["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
    updates = [r["resources"] for r in rules if "update" in r["verbs"]]
    # only for blockOwnerDeletion on children
    assert updates == [["grpojobs/finalizers"], ["grpoinferencepools/finalizers"]]
    # pools are the users': the operator reads them and writes their status, never creates, changes or deletes one
    pools = {tuple(r["resources"]): r["verbs"] for r in rules if any("grpoinferencepools" in x for x in r["resources"])}
    assert pools == {
        ("grpoinferencepools",): ["get", "list", "watch"],
        ("grpoinferencepools/status",): ["get", "patch"],
        ("grpoinferencepools/finalizers",): ["update"],
    }
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["create"], ["get"]]  # the job's key; checkSecrets
    policies = [r for r in rules if "networkpolicies" in r["resources"]]
    assert [(r["apiGroups"], r["verbs"]) for r in policies] == [(["networking.k8s.io"], ["get", "create"])]


def test_secret_namespaces_alone_get_a_role_to_read_secrets(helm_bin: Path, monkeypatch: pytest.MonkeyPatch):
    """rbac.secretNamespaces: no Secret read cluster-wide (nor in the other watched namespaces), a Role with
    `get` on Secrets in each listed namespace, and the operator told where it may check."""
    secret_get = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]  # never list or watch
    for mode in ([], ["--set", "watchNamespaces={team-a,team-b}"]):
        docs = render(helm_bin, "--set", "rbac.secretNamespaces={team-b}", *mode)
        kinds = by_kind(docs)
        roles = kinds.get("ClusterRole", []) + kinds.get("Role", [])
        main_roles = [r for r in roles if r["metadata"]["name"] == FULLNAME]
        secret_rules = [rule for r in main_roles for rule in r["rules"] if "secrets" in rule["resources"]]
        assert main_roles and all(rule["verbs"] == ["create"] for rule in secret_rules)  # the jobs' keys only
        role = one(docs, "Role", f"{FULLNAME}-secrets")
        assert role["metadata"]["namespace"] == "team-b" and role["rules"] == secret_get
        binding = one(docs, "RoleBinding", f"{FULLNAME}-secrets")
        assert binding["metadata"]["namespace"] == "team-b"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{FULLNAME}-secrets",
        }  # fmt: skip
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": "grpo-system"}]
        settings = operator_settings(docs, monkeypatch)
        assert settings.check_secrets and settings.secret_namespaces == ("team-b",)
    unchecked = render(helm_bin, "--set", "rbac.secretNamespaces={team-b}", "--set", "rbac.checkSecrets=false")
    assert not [r for r in by_kind(unchecked).get("Role", []) if r["metadata"]["name"] == f"{FULLNAME}-secrets"]


def test_users_get_grpojob_rights_through_the_default_roles(helm_bin: Path):
    docs = render(helm_bin)
    edit, view = one(docs, "ClusterRole", f"{FULLNAME}-edit"), one(docs, "ClusterRole", f"{FULLNAME}-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "create" in edit["rules"][0]["verbs"] and "grpojobs/status" not in edit["rules"][0]["resources"]
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in view["rules"])
    assert "ClusterRole" not in by_kind(render(helm_bin, "--set", "rbac.create=false"))


# --------------------------------------------------------------------------- monitoring


def exposed_names(text: str) -> set[str]:
    """Metric names a Prometheus scrape of this exposition yields (histograms: _bucket/_sum/_count)."""
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def vllm_metric_names() -> set[str]:
    """vLLM's Prometheus metric names, read from the installed vLLM's logger (counters get _total)."""
    spec = importlib.util.find_spec("vllm")  # locate without importing (vLLM's import is slow)
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    source = (Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text()
    names = set()
    for kind, name in re.findall(r"self\._(counter|gauge|histogram)_cls\(\s*name=\"(vllm:[a-z_:]+)\"", source):
        names.add(f"{name}_total" if kind == "counter" else name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


@pytest.fixture(scope="module")
def real_metric_names() -> set[str]:
    metrics = OperatorMetrics()
    status = {
        "conditions": [{"type": "Training", "status": "True"}],
        "step": 1, "maxSteps": 2, "progressPercentage": 50, "trainReward": 0.1, "valScore": 0.2,
        "bestValScore": 0.3, "restarts": 0, "inferenceRestarts": 0,
    }  # fmt: skip
    metrics.cache.update("ns", "job", status, {"model": "m"})
    operator = generate_latest(metrics.registry).decode()
    trainer = TrainerMetrics().render().decode()
    return exposed_names(operator) | exposed_names(trainer) | vllm_metric_names()


def queried_metrics(promql: str) -> set[str]:
    return set(re.findall(r"\b(grpo_[a-z_]+|vllm:[a-z_:]+)", promql))


def job_pods() -> list[dict[str, Any]]:
    spec = parse_job(load_example()).spec
    job, settings = Job("papillon", "ml", "uid", spec), OperatorSettings()
    return [trainer_pod(job, settings, 0), inference_pod(job, settings, 0)]


def test_service_monitor_selects_the_metrics_service_and_keeps_job_labels(helm_bin: Path):
    docs = render(helm_bin, "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True  # the per-job `namespace` label is the job's, not the operator's
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["grpo-system"]}


def test_pod_monitor_selects_the_operators_job_pods_and_their_metrics_port(helm_bin: Path):
    cluster = one(render(helm_bin, "--set", "serviceMonitor.enabled=true"), "PodMonitor")
    scoped = one(
        render(helm_bin, "--set", "serviceMonitor.enabled=true", "--set", "watchNamespaces={ml}"), "PodMonitor"
    )
    assert cluster["spec"]["namespaceSelector"] == {"any": True}
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    (endpoint,) = cluster["spec"]["podMetricsEndpoints"]
    for pod in job_pods():
        assert cluster["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert endpoint["port"] in {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    relabeled = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabeled["name"] == ["__meta_kubernetes_pod_label_grpo_dev_job"]
    assert "grpo.dev/job" in job_pods()[0]["metadata"]["labels"]


def test_alerts_query_real_metrics_with_the_configured_stall_window(helm_bin: Path, real_metric_names: set[str]):
    rule = one(render(helm_bin, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.stalledMinutes=45"),
               "PrometheusRule")  # fmt: skip
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"GRPOJobFailed", "GRPOJobStalled"}
    assert 'state="Failed"' in rules["GRPOJobFailed"]["expr"]
    stalled = rules["GRPOJobStalled"]["expr"]
    assert "changes(grpo_job_step[45m])" in stalled and "[30m]" not in stalled
    assert "45 minutes" in rules["GRPOJobStalled"]["annotations"]["summary"]
    for r in rules.values():
        assert queried_metrics(r["expr"]) and queried_metrics(r["expr"]) <= real_metric_names
        assert "{{ $labels.namespace }}/{{ $labels.name }}" in r["annotations"]["summary"]


def test_dashboard_configmap_shows_progress_and_vllm_throughput_from_real_metrics(
    helm_bin: Path, real_metric_names: set[str]
):
    docs = render(helm_bin, "--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring")
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "monitoring"
    (key,) = cm["data"]
    dashboard = json.loads(cm["data"][key])
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}
    queried = {title: set().union(*(queried_metrics(e) for e in exprs)) for title, exprs in panels.items()}
    assert {"grpo_job_step", "grpo_job_max_steps"} <= queried["Step / maxSteps"]
    assert queried["Train reward"] == {"grpo_job_train_reward"}
    assert queried["Validation score (latest and best)"] == {"grpo_job_val_score", "grpo_job_best_val_score"}
    assert queried["Restarts"] == {"grpo_job_restarts", "grpo_job_interruptions", "grpo_job_inference_restarts"}
    assert queried["vLLM generation throughput"] == {"vllm:generation_tokens_total"}
    assert queried["vLLM requests running"] == {"vllm:num_requests_running"}
    unknown = set().union(*queried.values()) - real_metric_names
    assert not unknown, f"the dashboard queries metrics nothing exports: {unknown}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- bad values


BAD_VALUES: list[tuple[str, list[str], str]] = [
    ("unknown pull policy", ["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    ("two replicas", ["--set", "replicaCount=2"], "/replicaCount"),
    ("negative metrics port", ["--set", "metrics.port=-1"], "/metrics/port"),
    ("health port out of range", ["--set", "health.port=70000"], "/health/port"),
    ("namespace not a DNS label", ["--set", "watchNamespaces={Team_A}"], "/watchNamespaces/0"),
    ("namespaces as a string", ["--set-json", 'watchNamespaces="team-a"'], "/watchNamespaces"),
    ("duplicate namespaces", ["--set", "watchNamespaces={team-a,team-a}"], "/watchNamespaces"),
    ("no image repository", ["--set-json", 'image={"repository":null}'], "repository"),
    ("empty image repository", ["--set", "image.repository="], "/image/repository"),
    ("crds.install not a boolean", ["--set", "crds.install=maybe"], "/crds/install"),
    ("zero resync interval", ["--set", "operator.resyncSeconds=0"], "/operator/resyncSeconds"),
    ("unknown log level", ["--set", "operator.logLevel=verbose"], "/operator/logLevel"),
    ("unknown job pull policy", ["--set", "jobDefaults.imagePullPolicy=always"], "/jobDefaults/imagePullPolicy"),
    ("trainer port zero", ["--set", "jobDefaults.trainerPort=0"], "/jobDefaults/trainerPort"),
    ("stall window zero", ["--set", "prometheusRule.stalledMinutes=0"], "/prometheusRule/stalledMinutes"),
    ("scrape interval without unit", ["--set", "serviceMonitor.interval=30"], "/serviceMonitor/interval"),
    ("unknown Service type", ["--set", "metrics.service.type=Ingress"], "/metrics/service/type"),
    ("non-string node selector", ["--set-json", 'nodeSelector={"gpu":true}'], "/nodeSelector/gpu"),
    ("misspelt top-level key", ["--set", "replicas=2"], "replicas"),
    ("misspelt nested key", ["--set", "serviceMonitor.enable=true"], "enable"),
]


@pytest.mark.parametrize("args,where", [(a, w) for _, a, w in BAD_VALUES], ids=[n for n, _, _ in BAD_VALUES])
def test_schema_rejects_bad_value(helm_bin: Path, args: list[str], where: str):
    proc = helm(helm_bin, "template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0, f"{args} was accepted"
    assert "don't meet the specifications of the schema" in proc.stderr
    assert where in proc.stderr, proc.stderr


def test_service_monitor_without_the_metrics_service_is_refused(helm_bin: Path):
    proc = helm(
        helm_bin, "template", RELEASE, str(CHART),
        "--set", "serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false", check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "serviceMonitor.enabled needs metrics.service.enabled" in proc.stderr


def walk_values(values: Any, path: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from walk_values(value, f"{path}/{key}")
    else:
        yield path


def test_schema_describes_every_default_value():
    """Every key of values.yaml has a schema entry (no value slips past validation)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in walk_values(values):
        node = schema
        for key in path.strip("/").split("/"):
            if node.get("type") == "object" and "properties" not in node:
                break  # a free-form object (resources, securityContext, ...)
            assert key in node.get("properties", {}), f"values.yaml {path} is not in values.schema.json"
            node = node["properties"][key]

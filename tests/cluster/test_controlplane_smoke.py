"""The test control plane itself works: scheduling on fake GPU nodes, pod lifecycle,
garbage collection, Pod Security admission, RBAC, volumes, helm."""

from __future__ import annotations

import json
import ssl
import textwrap
import urllib.error
import urllib.request

import pytest
import yaml
from controlplane import EXIT_ANNOTATION, GPU_PRODUCT, ControlPlane, wait_until

pytestmark = pytest.mark.cluster


def pod_manifest(name: str, gpus: int | None = None, annotations: dict | None = None, **spec_extra) -> str:
    container: dict = {"name": "main", "image": "busybox:1.36", "command": ["sleep", "infinity"]}
    if gpus is not None:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec_extra},
    }
    return yaml.safe_dump(pod)


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def test_nodes_are_fake_gpu_nodes(control_plane: ControlPlane):
    nodes = control_plane.get_json("nodes")["items"]
    assert len(nodes) == 2
    for node in nodes:
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        assert node["status"]["capacity"]["cpu"] == "64"
        assert condition(node, "Ready")["status"] == "True"
        assert {a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"} == {"127.0.0.1"}
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")


def test_gpu_pod_is_scheduled_and_runs(control_plane: ControlPlane, namespace: str):
    control_plane.apply_yaml(pod_manifest("three-gpus", gpus=3), namespace)
    pod = control_plane.wait_for_pod_phase(namespace, "three-gpus", "Running")
    assert pod["spec"]["nodeName"] in control_plane.nodes
    assert condition(pod, "Ready")["status"] == "True"
    assert pod["status"]["containerStatuses"][0]["state"]["running"]
    assert pod["status"]["podIP"].startswith("127.")


def test_too_many_gpus_stays_pending_unschedulable(control_plane: ControlPlane, namespace: str):
    control_plane.apply_yaml(pod_manifest("five-gpus", gpus=5), namespace)

    def unschedulable():
        pod = control_plane.get_json("pod", "five-gpus", namespace=namespace)
        cond = condition(pod, "PodScheduled")
        return pod if cond and cond["status"] == "False" and cond["reason"] == "Unschedulable" else None

    pod = wait_until(unschedulable, timeout=30, what="PodScheduled=False/Unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert "nvidia.com/gpu" in condition(pod, "PodScheduled")["message"]
    assert not pod["spec"].get("nodeName")


def test_garbage_collector_deletes_owned_pod(control_plane: ControlPlane, namespace: str):
    control_plane.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = control_plane.get_json("configmap", "owner", namespace=namespace)
    owned = yaml.safe_load(pod_manifest("owned"))
    owned["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    control_plane.apply_yaml(yaml.safe_dump(owned), namespace)
    control_plane.wait_for_pod_phase(namespace, "owned", "Running")
    control_plane.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_until(
        lambda: control_plane.kubectl("get", "pod", "owned", "-n", namespace, check=False).returncode != 0,
        timeout=30,
        what="the garbage collector to delete the owned pod",
    )


@pytest.mark.parametrize(("exit_code", "phase"), [("0", "Succeeded"), ("1", "Failed"), ("137", "Failed")])
def test_pod_exits_on_annotation(control_plane: ControlPlane, namespace: str, exit_code: str, phase: str):
    name = f"exit-{exit_code}"
    control_plane.apply_yaml(pod_manifest(name, gpus=1), namespace)
    control_plane.wait_for_pod_phase(namespace, name, "Running")
    control_plane.kubectl("annotate", "pod", name, "-n", namespace, f"{EXIT_ANNOTATION}={exit_code}")
    pod = control_plane.wait_for_pod_phase(namespace, name, phase)
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == int(exit_code)
    assert condition(pod, "Ready")["status"] == "False"


def test_pod_created_with_exit_annotation_runs_then_succeeds(control_plane: ControlPlane, namespace: str):
    annotations = {EXIT_ANNOTATION: "0", "grpo.test/exit-delay": "2s"}
    control_plane.apply_yaml(pod_manifest("short-lived", annotations=annotations), namespace)
    control_plane.wait_for_pod_phase(namespace, "short-lived", "Running")
    control_plane.wait_for_pod_phase(namespace, "short-lived", "Succeeded")


def test_pod_security_admission_enforces_restricted(control_plane: ControlPlane, namespace: str):
    privileged = pod_manifest("privileged")
    doc = yaml.safe_load(privileged)
    doc["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    privileged = yaml.safe_dump(doc)
    # default namespace policy is "privileged": accepted
    control_plane.apply_yaml(privileged, namespace)
    restricted = control_plane.create_namespace(
        f"{namespace}-r", labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    try:
        result = control_plane.apply_yaml(privileged, restricted, check=False)
        assert result.returncode != 0
        assert "violates PodSecurity" in result.stderr and "restricted" in result.stderr
    finally:
        control_plane.delete_namespace(restricted)


def test_serviceaccount_without_rbac_is_forbidden(control_plane: ControlPlane, namespace: str):
    kubeconfig = control_plane.kubeconfig_for_serviceaccount(namespace, "nobody")
    who = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"
    result = control_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr, result.stderr
    # the same request, raw: HTTP 403
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    request = urllib.request.Request(
        f"{control_plane.server}/api/v1/namespaces/{namespace}/pods", headers={"Authorization": f"Bearer {token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(control_plane.ca_file)))
    assert err.value.code == 403
    # ... and RBAC grants work for it
    control_plane.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    control_plane.kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    wait_until(
        lambda: (
            control_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False).returncode == 0
        ),
        timeout=10,
        what="the RoleBinding to take effect",
    )


def test_pvc_binds_and_pod_using_it_runs(control_plane: ControlPlane, namespace: str):
    pvc = textwrap.dedent(
        """\
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata: {name: adapters}
        spec:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 50Gi}}
        """
    )
    control_plane.apply_yaml(pvc, namespace)
    doc = yaml.safe_load(pod_manifest("uses-volume", gpus=1))
    doc["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "adapters"}}]
    doc["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    control_plane.apply_yaml(yaml.safe_dump(doc), namespace)
    claim = wait_until(
        lambda: (
            (c := control_plane.get_json("pvc", "adapters", namespace=namespace))["status"].get("phase") == "Bound"
            and c
        ),
        timeout=30,
        what="the PVC to bind",
    )
    assert claim["spec"]["storageClassName"] == "standard"
    control_plane.wait_for_pod_phase(namespace, "uses-volume", "Running")


def test_helm_talks_to_the_cluster(control_plane: ControlPlane, namespace: str):
    out = control_plane.helm("list", "-n", namespace, "-o", "json").stdout
    assert json.loads(out) == []
    assert control_plane.helm("version", "--short").stdout.startswith("v3.")


WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.grpo.test}
spec:
  group: smoke.grpo.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.min <= self.max"
              message: "min must not exceed max"
            properties:
              min: {type: integer, default: 0}
              max: {type: integer, maximum: 10}
          status:
            type: object
            properties:
              phase: {type: string}
"""


def test_crd_establishes_validates_and_prunes(control_plane: ControlPlane, namespace: str):
    control_plane.apply_yaml(WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.grpo.test", "--timeout=30s")
    good = "apiVersion: smoke.grpo.test/v1\nkind: Widget\nmetadata: {name: good}\nspec: {max: 3, extra: 1}\n"
    strict = wait_until(
        lambda: "no matches for kind" not in (r := control_plane.apply_yaml(good, namespace, check=False)).stderr and r,
        timeout=15,
        what="kubectl to discover the Widget kind",
    )
    assert strict.returncode != 0 and 'unknown field "spec.extra"' in strict.stderr  # kubectl's strict validation
    control_plane.apply_yaml(good, namespace, "--validate=ignore")
    widget = control_plane.get_json("widget", "good", namespace=namespace)
    assert widget["spec"] == {"min": 0, "max": 3}  # defaulted, unknown field pruned
    bad = "apiVersion: smoke.grpo.test/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {min: 5, max: 3}\n"
    result = control_plane.apply_yaml(bad, namespace, check=False)
    assert result.returncode != 0 and "min must not exceed max" in result.stderr
    too_big = "apiVersion: smoke.grpo.test/v1\nkind: Widget\nmetadata: {name: big}\nspec: {max: 11}\n"
    result = control_plane.apply_yaml(too_big, namespace, check=False)
    assert result.returncode != 0 and "spec.max" in result.stderr
    patch = '{"status": {"phase": "Ready", "undeclared": "x"}}'
    control_plane.kubectl(
        "patch", "widget", "good", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
    )
    assert control_plane.get_json("widget", "good", namespace=namespace)["status"] == {"phase": "Ready"}
    control_plane.kubectl("delete", "crd", "widgets.smoke.grpo.test", "--wait=false")

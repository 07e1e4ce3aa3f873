"""The process node (processnode.py) keeps the promises the training e2e test relies on.

Pods scheduled by the real kube-scheduler onto it run as processes with their
volumes, env and read-only root; exit codes, restarts, readiness and graceful
deletion reach the API as a kubelet reports them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until
from processnode import TOLERATION, ProcessNode, process_node

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessNode]:
    with process_node(control_plane, "process-node-selftest", tmp_path_factory.mktemp("process-node")) as n:
        yield n
    assert not n.errors, n.errors


def pod_doc(name: str, node: ProcessNode, script: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "not-pulled:0",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {"readOnlyRootFilesystem": True},
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def claim_dir(cp: ControlPlane, ns: str, claim: str) -> Path:
    pvc = cp.get_json("pvc", claim, namespace=ns)
    return Path(cp.get_json("pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"])


def container_status(cp: ControlPlane, ns: str, pod: str) -> dict[str, Any]:
    return cp.get_json("pod", pod, namespace=ns)["status"]["containerStatuses"][0]


def test_pod_runs_with_its_volumes_env_and_a_read_only_root(control_plane: ControlPlane, namespace: str, node):
    cp, ns = control_plane, namespace
    marker = f"/grpo-root-write-{uuid.uuid4().hex[:6]}"
    cp.apply_yaml(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}},
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key"}, "stringData": {"token": "s3cret"}},
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                },
                pod_doc(
                    "worker",
                    node,
                    f"echo \"$(cat /etc/cfg/greeting)\" > /data/out; echo \"$TOKEN $MY_IP\" >> /data/out; "
                    f"echo scratch > /tmp/x && cat /tmp/x >> /data/out; "
                    f"if touch {marker} 2>/dev/null; then echo root-writable >> /data/out; fi; "
                    "echo last words > /dev/termination-log; exit 3",
                    container={
                        "env": [
                            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "key", "key": "token"}}},
                            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        ],
                        "volumeMounts": [
                            {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                            {"name": "data", "mountPath": "/data"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    },
                    restartPolicy="Never",
                    volumes=[
                        {"name": "cfg", "configMap": {"name": "cfg"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                ),
            ]
        ),
        ns,
    )
    pod = cp.wait_for_pod_phase(ns, "worker", "Failed", timeout=60)
    assert pod["spec"]["nodeName"] == node.name  # placed by kube-scheduler
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "last words\n"
    ip = pod["status"]["podIP"]
    assert (claim_dir(cp, ns, "data") / "out").read_text().split("\n") == ["hello", f"s3cret {ip}", "scratch", ""]
    assert not os.path.exists(marker)


def test_crash_restarts_in_place_readiness_follows_and_delete_is_graceful(
    control_plane: ControlPlane, namespace: str, node
):
    cp, ns = control_plane, namespace
    server = "import http.server as h; h.ThreadingHTTPServer(('0.0.0.0', int(__import__('os').environ['PORT'])), h.SimpleHTTPRequestHandler).serve_forever()"  # noqa: E501
    port = 18000 + int(uuid.uuid4().hex[:3], 16) % 2000
    doc = pod_doc(
        "server",
        node,
        "cd /srv && exec python3 -c \"$SERVER\"",
        container={
            "env": [{"name": "SERVER", "value": server}, {"name": "PORT", "value": str(port)}],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
        },
        volumes=[{"name": "srv", "emptyDir": {}}],
    )
    cp.apply_yaml(yaml.safe_dump(doc), ns)
    wait_until(lambda: container_status(cp, ns, "server")["ready"], timeout=60, what="server Ready")
    (pid,) = node.pids(ns, "server")

    node.kill(ns, "server")  # SIGKILL: restartPolicy Always restarts it in place
    restarted = wait_until(
        lambda: (s := container_status(cp, ns, "server"))["restartCount"] == 1 and s["ready"] and s,
        timeout=60,
        what="restart and Ready again",
    )
    assert restarted["lastState"]["terminated"]["exitCode"] == 137
    assert cp.get_json("pod", "server", namespace=ns)["status"]["phase"] == "Running"
    (new_pid,) = node.pids(ns, "server")
    assert new_pid != pid

    cp.kubectl("delete", "pod", "server", "-n", ns, "--wait=true", "--timeout=30s")
    with pytest.raises(ProcessLookupError):
        os.kill(new_pid, 0)


def test_a_crash_without_a_message_reports_the_end_of_its_log(control_plane: ControlPlane, namespace: str, node):
    cp, ns = control_plane, namespace
    doc = pod_doc(
        "crasher",
        node,
        "echo starting; echo 'ValueError: bad config'; exit 2",
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        restartPolicy="Never",
    )
    cp.apply_yaml(yaml.safe_dump(doc), ns)
    pod = cp.wait_for_pod_phase(ns, "crasher", "Failed", timeout=60)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 2 and terminated["message"] == "starting\nValueError: bad config"
    assert not os.path.exists("/dev/termination-log") or os.path.getsize("/dev/termination-log") == 0

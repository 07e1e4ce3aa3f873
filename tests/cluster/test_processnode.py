"""The process node (processnode.py) keeps the promises the training e2e test relies on.

Pods scheduled by the real kube-scheduler onto it run as processes with their
volumes, env and read-only root; exit codes, restarts, readiness and graceful
deletion reach the API as a kubelet reports them; ``kubectl logs`` and port-forward
(kubectl's and the kubernetes Python client's) reach them through the API server and the
node's kubelet API.
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until
from processnode import TOLERATION, ProcessNode, process_node

pytestmark = [pytest.mark.cluster, pytest.mark.processnode]


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


def http_pod(
    name: str, node: ProcessNode, server: str, before: str = "", **container: Any
) -> tuple[dict[str, Any], int]:
    """A pod running the Python ``server`` on a port of its own (``$PORT``), Ready once it answers ``/``;
    ``before``: shell run first; ``container``: more of the container (``env`` is added to)."""
    port = 18000 + int(uuid.uuid4().hex[:3], 16) % 2000
    env = [{"name": "SERVER", "value": server}, {"name": "PORT", "value": str(port)}, *container.pop("env", [])]
    spec = {
        "env": env,
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        **container,
    }
    return pod_doc(name, node, f'{before}exec python3 -c "$SERVER"', container=spec), port


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
    doc, _ = http_pod("server", node, server, "cd /srv && ", volumeMounts=[{"name": "srv", "mountPath": "/srv"}])
    doc["spec"]["volumes"] = [{"name": "srv", "emptyDir": {}}]
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


def test_kubectl_logs_follow_tail_previous_and_an_init_container(
    control_plane: ControlPlane, namespace: str, node, tmp_path: Path
):
    cp, ns = control_plane, namespace
    # Two runs of five lines. The first stops after three until the test opens the gate, then fails
    # (restartPolicy OnFailure restarts it); the second runs through and succeeds.
    script = (
        "n=$(( $(cat /gate/n 2>/dev/null || echo 0) + 1 )); echo $n > /gate/n; "
        'for i in 1 2 3; do echo "run $n line $i"; done; '
        "[ $n -ge 2 ] || until [ -e /gate/open ]; do sleep 0.1; done; "
        'for i in 4 5; do echo "run $n line $i"; done; [ $n -ge 2 ]'
    )
    doc = pod_doc(
        "talker",
        node,
        script,
        container={"volumeMounts": [{"name": "gate", "mountPath": "/gate"}]},
        initContainers=[{"name": "fetch", "image": "not-pulled:0", "command": ["/bin/sh", "-c", "echo fetched it"]}],
        restartPolicy="OnFailure",
        volumes=[{"name": "gate", "hostPath": {"path": str(tmp_path)}}],
    )
    cp.apply_yaml(yaml.safe_dump(doc), ns)
    wait_until(lambda: "running" in container_status(cp, ns, "talker")["state"], timeout=60, what="talker running")

    follow = subprocess.Popen(
        [str(cp.bin_dir / "kubectl"), "logs", "-f", "talker", "-c", "main", "-n", ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cp.env(),
    )
    lines: queue.Queue[str | None] = queue.Queue()  # kubectl's output as it comes; None: it ended

    def pump() -> None:
        for line in follow.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    # Lines reach the client while the container runs (it waits at the gate)...
    assert [lines.get(timeout=30) for _ in range(3)] == [f"run 1 line {i}\n" for i in (1, 2, 3)]
    assert "running" in container_status(cp, ns, "talker")["state"]
    (tmp_path / "open").touch()
    # ... and the stream ends with the run it follows (not with the pod: a second run follows).
    assert list(iter(lambda: lines.get(timeout=30), None)) == ["run 1 line 4\n", "run 1 line 5\n"]
    assert follow.wait(timeout=10) == 0, follow.stderr.read()  # type: ignore[union-attr]

    pod = cp.wait_for_pod_phase(ns, "talker", "Succeeded", timeout=60)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 1

    def logs(*args: str) -> str:
        return cp.kubectl("logs", "talker", "-n", ns, *args).stdout

    assert logs().splitlines() == [f"run 2 line {i}" for i in range(1, 6)]
    assert logs("--previous").splitlines() == [f"run 1 line {i}" for i in range(1, 6)]
    assert logs("--tail=2").splitlines() == ["run 2 line 4", "run 2 line 5"]
    assert logs("--limit-bytes=14") == "run 2 line 1\nr"
    assert logs("-c", "fetch") == "fetched it\n"
    refused = cp.kubectl("logs", "talker", "-n", ns, "-c", "fetch", "--previous", check=False)
    assert refused.returncode != 0
    assert 'previous terminated container "fetch" in pod "talker" not found' in refused.stderr


HTTP_SERVER = """
import http.server, os
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests on one forwarded connection
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(f"hello from {os.environ['HOSTNAME']} at {self.path}".encode())
    def do_POST(self):
        self.reply(self.rfile.read(int(self.headers["Content-Length"])))
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["POD_IP"], int(os.environ["PORT"])), Echo).serve_forever()
"""


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> bytes:
    conn.request(method, path, body=body)
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


def test_port_forward_from_kubectl_and_the_python_client_reaches_the_pod(
    control_plane: ControlPlane, namespace: str, node
):
    from kubernetes import client, config
    from kubernetes.stream import portforward

    cp, ns = control_plane, namespace
    doc, port = http_pod(
        "web", node, HTTP_SERVER, env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    )
    cp.apply_yaml(yaml.safe_dump(doc), ns)
    wait_until(lambda: container_status(cp, ns, "web")["ready"], timeout=60, what="web Ready")
    large = os.urandom(3 * 1024 * 1024 + 7)

    # kubectl: SPDY/3.1 frames, tunnelled in a WebSocket to the API server, which speaks SPDY to the node.
    forward = subprocess.Popen(
        [str(cp.bin_dir / "kubectl"), "port-forward", "-n", ns, "pod/web", f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cp.env(),
    )
    try:
        first = forward.stdout.readline()  # type: ignore[union-attr]
        match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", first)
        assert match and int(match[2]) == port, first + forward.stderr.read()  # type: ignore[union-attr]
        local = int(match[1])
        for i in range(3):  # a connection each: a stream pair each on kubectl's one session
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/{i}", timeout=10) as resp:
                assert resp.read() == f"hello from web at /{i}".encode()
        conn = http.client.HTTPConnection("127.0.0.1", local, timeout=30)
        assert exchange(conn, "POST", "/", large) == large
        assert exchange(conn, "GET", "/again") == b"hello from web at /again"
        conn.close()
    finally:
        forward.terminate()
        forward.wait(timeout=10)

    # The Python client: v4.channel.k8s.io, passed through by the API server to the node.
    api = client.CoreV1Api(config.new_client_from_config(str(cp.kubeconfig)))
    pf = portforward(api.connect_get_namespaced_pod_portforward, "web", ns, ports=str(port))
    conn = http.client.HTTPConnection("web", port)
    conn.sock = pf.socket(port)
    conn.sock.settimeout(30)  # preset, it misses the connection's timeout
    assert exchange(conn, "GET", "/one") == b"hello from web at /one"
    assert exchange(conn, "POST", "/", large) == large
    assert exchange(conn, "GET", "/two") == b"hello from web at /two"
    conn.close()
    assert pf.error(port) is None

    closed = port + 1  # nothing listens there: the node says so on the port's error channel
    pf = portforward(api.connect_get_namespaced_pod_portforward, "web", ns, ports=str(closed))
    wait_until(lambda: pf.error(closed), timeout=10, what="the error of a port nobody listens on")
    assert f"error forwarding port {closed} to pod web" in pf.error(closed)
    assert "connection refused" in pf.error(closed).lower()


def test_the_kubelet_api_lets_in_the_api_server_only(control_plane: ControlPlane, node):
    """Straight to the node's port, as the API server goes: its certificate is checked against the
    control plane's CA for 127.0.0.1, and only the API server's client certificate is let in."""
    pki = control_plane.ca_file.parent
    url = f"https://127.0.0.1:{node.kubelet.port}/containerLogs/default/no-such-pod/main"

    def status(client_cert: str | None, path: str = url) -> tuple[int, str]:
        tls = ssl.create_default_context(cafile=str(control_plane.ca_file))
        if client_cert:
            tls.load_cert_chain(str(pki / f"{client_cert}.crt"), str(pki / f"{client_cert}.key"))
        try:
            with urllib.request.urlopen(path, context=tls, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert status(None)[0] == 401
    assert status("admin") == (403, "Forbidden (user=grpo-test-admin, verb=get, resource=nodes, subresource=proxy)")
    assert status("apiserver-kubelet-client") == (404, 'pod "no-such-pod" does not exist')
    code, text = status("apiserver-kubelet-client", url.replace("containerLogs", "exec"))
    assert code == 501 and "containerLogs and portForward only" in text

"""A node of the test control plane whose pods really run: a small kubelet made of local processes.

KWOK nodes only pretend to run pods. On a :class:`ProcessNode` the pods the
operator builds are executed, so a test can follow a GRPOJob from ``kubectl
apply`` to a trained adapter through the very pod specs a cluster would get:

* **Containers** run as process groups, each in its own mount namespace
  (``unshare --mount``): every volume is bind-mounted at its ``mountPath`` (a
  PersistentVolumeClaim → the bound PersistentVolume's hostPath directory; a
  ConfigMap or Secret → its keys as files; an emptyDir → a fresh directory; a
  ``subPath`` of a writable mount that does not exist yet is created, as a kubelet does), and
  the root filesystem is made read-only when the container asks for
  ``readOnlyRootFilesystem``. The command, args, env (values, Secret and ConfigMap
  references, downward-API fields) and workingDir are the pod's. Init containers run
  first, in order, each to its end (blocking this node's loop meanwhile); one that
  fails fails the pod, as under ``restartPolicy: Never``.
* **What is not a container runtime:** no image is pulled -- the command runs with
  this machine's Python environment first on ``PATH`` (here the trainer image and
  the vLLM CPU build are that environment); processes run as the test's user (uid
  0), not ``runAsUser``; no cgroup limits, no liveness probes.
* **GPUs** (``gpus=N``) are advertised, not real: the scheduler counts them, and a
  container that requests ``nvidia.com/gpu`` runs on the CPU with ``FAKE_GPU_ENV``: the
  trainer is told so with ``$GRPO_TRAINER_DEVICE=cpu`` (on a GPU node it would see the
  devices); a vLLM container is the CPU build whatever it asked for, given the CPU
  build's environment here, and a job for this node passes the one flag it needs
  (``--no-enable-chunked-prefill``) in ``inference.extraArgs``.
* **Network:** the host's. Each pod gets its own loopback address
  (``127.103.0.0/16``) as ``status.podIP``; its processes listen on all addresses.
  The container's ``/etc/hosts`` maps every Service of its namespace to 127.0.0.1 --
  what cluster DNS plus kube-proxy amount to with one pod behind each Service, and
  the ports the pods listen on must not collide (tests pick free ones). A trainer is
  told its pod's address (``$GRPO_TRAINER_LISTEN_HOST``) and listens there only, so the
  trainers of several jobs share the port the operator polls.
* **Status** is reported as a kubelet does: phase, podIP, conditions,
  containerStatuses (running, ready from the readinessProbe, terminated with the
  exit code and the termination message -- the file at ``terminationMessagePath``,
  or the log's end under ``FallbackToLogsOnError`` -- restartCount and lastState
  when ``restartPolicy`` restarts it).
  Graceful deletion sends SIGTERM, SIGKILL after the grace period, then removes
  the pod. The Node reports Ready and renews its Lease.
* **Kubelet API** (:mod:`kubeletapi`), at the Node's InternalIP and
  ``daemonEndpoints.kubeletEndpoint.Port``, over TLS with a certificate from the control
  plane's CA, for the API server only: ``kubectl logs`` (current or ``--previous`` run, init
  containers, ``-f``, ``--tail``, ``--limit-bytes``; not ``--timestamps`` or ``--since``: no
  per-line times are kept) and ``kubectl port-forward`` / ``kubernetes.stream.portforward``
  (SPDY/3.1 and ``v4.channel.k8s.io``, to the pod's IP). No exec, attach, metrics, stats,
  checkpoint or pod listing: those paths answer 501.

The node is tainted (``grpo.test/process-node``) so that only pods that tolerate
it land here. :meth:`ProcessNode.kill` signals a container, as a crash or the OOM
killer would. Container output goes to files under the node's directory
(:meth:`ProcessNode.logs`). Mount points that do not exist on the host (``/etc/grpo``,
``/dev/termination-log``) are created there, empty, and removed by :meth:`ProcessNode.stop`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import datetime
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from controlplane import KUBELET_CLIENT_USER, ControlPlane, wait_until
from kubeletapi import KubeletError, KubeletServer

from grpo_trainer.contract.config import DEVICE_ENV, LISTEN_HOST_ENV

GPU_RESOURCE = "nvidia.com/gpu"
# What a container that asked for GPUs gets here instead (see "GPUs" above): the trainer is
# told to use the CPU, and vLLM's CPU build the settings grpo-local gives it on a CPU.
FAKE_GPU_ENV = {DEVICE_ENV: "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}

NODE_ADDRESS = "127.0.0.1"  # its InternalIP: where the API server reaches its kubelet API
NODE_LABEL = "grpo.test/process-node"
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
POD_IP_PREFIX = "127.103"
SYNC_SECONDS = 0.5
HEARTBEAT_SECONDS = 10
LEASE_SECONDS = 40
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0)  # seconds before restart number 1, 2, 3, 4+ (a kubelet: 10 s .. 5 min)
INIT_CONTAINER_TIMEOUT = 600.0  # an init container (a git clone, a pip install) that takes longer is killed
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the default of a container's terminationMessagePath
TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # a kubelet's FallbackToLogsOnError limits


class PodSetupError(Exception):
    """A volume or an env reference cannot be resolved yet; the pod waits, as with a kubelet."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _set_pdeathsig() -> None:  # in the child between fork and exec: die with the test process
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


# --------------------------------------------------------------------------- mounts


@dataclasses.dataclass(frozen=True)
class BindMount:
    source: Path
    target: str
    read_only: bool = False


def ordered_mounts(mounts: list[BindMount]) -> list[BindMount]:
    """Parents before children; a mount that would hide another's source (``/tmp`` over a
    source under /tmp) after everything else, once the other sources are mounted."""

    def hides_a_source(m: BindMount) -> bool:
        return any(o is not m and Path(m.target) in (o.source, *o.source.parents) for o in mounts)

    return sorted(mounts, key=lambda m: (hides_a_source(m), m.target.count("/"), m.target))


def hidden_by(mounts: list[BindMount], paths: list[Path]) -> list[Path]:
    """Those of ``paths`` a mount would cover (e.g. a checkout under /tmp when /tmp is an emptyDir)."""
    hidden = [p for p in paths if any(Path(m.target) in (p, *p.parents) for m in mounts)]
    return [p for p in hidden if not any(q in p.parents for q in hidden)]  # outermost only


def mount_script(mounts: list[BindMount], read_only_root: bool, working_dir: str, image: list[Path]) -> str:
    """The shell run inside the container's new mount namespace before ``exec "$@"``.

    ``image``: the directories standing in for the image (the Python environment, the
    project's source). Those a volume would cover are opened first and bound back at
    their own paths, read-only, once every volume is in place.
    """
    keep = hidden_by(mounts, image)
    if len(keep) > 6:
        raise ValueError(f"too many image directories under pod mounts: {keep}")
    lines = ["set -e"]
    lines += [f"exec {fd}<{shlex.quote(str(path))}" for fd, path in enumerate(keep, start=3)]
    for m in ordered_mounts(mounts):
        src, dst = shlex.quote(str(m.source)), shlex.quote(m.target)
        if m.source.is_dir():
            lines.append(f"mkdir -p {dst}")
        else:
            lines.append(f"[ -e {dst} ] || {{ mkdir -p $(dirname {dst}); : > {dst}; }}")
        lines.append(f"mount --bind {src} {dst}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {dst}")
    for fd, path in enumerate(keep, start=3):
        dst = shlex.quote(str(path))
        lines.append(f"mkdir -p {dst}")
        lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} {dst}")
        lines.append(f"mount -o remount,bind,ro {dst}")
        lines.append(f"exec {fd}<&-")
    if read_only_root:
        lines.append("mount -o remount,bind,ro /")
    lines.append(f"cd {shlex.quote(working_dir)}")
    lines.append('exec "$@"')
    return "\n".join(lines)


def python_environment() -> list[Path]:
    """Where this interpreter's environment lives: what the containers run with instead of an image."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), *(Path(p) for p in sys.path if p and Path(p).is_dir())}
    return sorted({p.resolve() for p in paths})


def missing_ancestor(target: str) -> Path | None:
    """The outermost directory a mount at ``target`` makes on the host (mount points are real directories)."""
    path, created = Path(target), None
    while not path.exists():
        created, path = path, path.parent
    return created


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class Run:
    """One start of a container: where its output lies in the container's log (the kubelet API reads it)."""

    log: Path
    start: int  # where its output begins, after the node's "===== start" line
    popen: subprocess.Popen[bytes]
    end: int | None = None  # where the next start's line begins; None while this is the last run

    def finished(self) -> bool:
        return self.popen.poll() is not None


@dataclasses.dataclass
class Container:
    name: str
    spec: dict[str, Any]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    restart_at: float | None = None
    ready: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0
    script: str = ""  # the mount namespace's set-up, then exec of the command
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    termination_file: Path | None = None  # bind-mounted at the container's terminationMessagePath
    runs: list[Run] = dataclasses.field(default_factory=list)  # every start, in order
    previous_run: Run | None = None  # the run last_terminated describes (``kubectl logs --previous``)

    def last_words(self, exit_code: int) -> str:
        """The termination message as a kubelet reads it: the file, or the log's end when the policy says so."""
        text = ""
        if self.termination_file is not None and self.termination_file.is_file():
            text = self.termination_file.read_bytes()[:TERMINATION_MESSAGE_BYTES].decode(errors="replace")
        if not text and exit_code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with open(self.log, "rb") as fh:
                fh.seek(self.runs[-1].start)
                lines = fh.read().decode(errors="replace").splitlines()[-FALLBACK_LOG_LINES:]
            text = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
        return text

    def ended(self, rc: int) -> dict[str, Any]:
        """The ``terminated`` state of a run that returned ``rc`` (negative: killed by that signal)."""
        code = rc if rc >= 0 else 128 - rc
        state: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": now(),
        }
        if code == 128 + signal.SIGKILL:
            state["signal"] = signal.SIGKILL
        message = self.last_words(code)
        if message:
            state["message"] = message
        return state

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group and reap the leader."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)

    def status(self, image: str) -> dict[str, Any]:
        state: dict[str, Any]
        if self.terminated is not None:
            state = {"terminated": self.terminated}
        elif self.running:
            state = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        out: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": "",
            "ready": self.ready and self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.last_terminated is not None:
            out["lastState"] = {"terminated": self.last_terminated}
        return out


@dataclasses.dataclass
class Pod:
    uid: str
    namespace: str
    name: str
    ip: str
    dir: Path
    containers: list[Container]
    restart_policy: str
    start_time: str
    images: dict[str, str]
    set_up: bool = False
    kill_deadline: float | None = None
    last_status: dict[str, Any] | None = None
    transitions: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # condition → (status, time)
    created_dirs: set[Path] = dataclasses.field(default_factory=set)
    init_containers: list[Container] = dataclasses.field(default_factory=list)  # run in order, each to its end
    init_failed: bool = False  # one exited non-zero: the pod fails (restartPolicy Never) before its containers


# --------------------------------------------------------------------------- the node


class ProcessNode:
    """Register a Node, then run the pods scheduled onto it until :meth:`stop`."""

    def __init__(
        self,
        cp: ControlPlane,
        name: str,
        work_dir: Path,
        *,
        image: Iterable[Path] = (),
        image_env: Mapping[str, str] | None = None,
        cpu: str = "16",
        memory: str = "24Gi",
        gpus: int = 0,
    ) -> None:
        """``image``: directories the containers' programs need besides this Python environment
        (e.g. the checkout's source folders). ``gpus``: ``nvidia.com/gpu`` the node advertises
        (see "GPUs" in the module docstring). ``image_env``: the image's own environment (a
        Dockerfile's ENV), under each container's; by default this process's PYTHONPATH, which
        puts the checkout's packages where an image has its site-packages."""
        self.cp = cp
        self.name = name
        self.work_dir = work_dir
        self.bin_dir = Path(sys.executable).parent  # the environment that stands in for the images
        self.image = python_environment() + [Path(p).resolve() for p in image]
        if image_env is None:
            image_env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        self.image_env = dict(image_env)
        self.capacity = {"cpu": cpu, "memory": memory, "pods": "20", "ephemeral-storage": "100Gi"}
        if gpus:
            self.capacity[GPU_RESOURCE] = str(gpus)
        self._pods: dict[str, Pod] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_ip = 1
        self._created_paths: set[Path] = set()
        self.errors: list[str] = []
        self.kubelet: KubeletServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60) -> ProcessNode:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.cp.kubelet_serving_certificate(self.name, NODE_ADDRESS)
        self.kubelet = KubeletServer(
            self, cert, key, self.cp.ca_file, KUBELET_CLIENT_USER, NODE_ADDRESS, errors=self.errors
        )
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    NODE_LABEL: "true",
                },
            },
            "spec": {"taints": [TAINT]},
            "status": self._node_status(),
        }
        self._ok(self.cp.request("POST", "/api/v1/nodes", node), "register the node")
        self._renew_lease()
        self._thread = threading.Thread(target=self._run, name=f"process-node-{self.name}", daemon=True)
        self._thread.start()

        def schedulable() -> bool:
            _, got = self.cp.request("GET", f"/api/v1/nodes/{self.name}")
            taints = {t["key"] for t in (got or {}).get("spec", {}).get("taints", [])}
            return self.name in self.cp.ready_nodes() and "node.kubernetes.io/not-ready" not in taints

        wait_until(schedulable, timeout=timeout, what=f"node {self.name} Ready and schedulable")
        return self

    def stop(self) -> None:
        """Kill every container, delete the Node and remove the mount points it made."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for pod in self._pods.values():
                self._forget(pod)
            self._pods.clear()
        if self.kubelet is not None:
            self.kubelet.stop()
        with contextlib.suppress(Exception):
            self.cp.request("DELETE", f"/api/v1/nodes/{self.name}")
        for path in sorted(self._created_paths, key=lambda p: -len(p.parts)):
            self._remove_mount_point(path)

    def __enter__(self) -> ProcessNode:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ for tests

    def kill(self, namespace: str, pod: str, container: str | None = None, sig: int = signal.SIGKILL) -> None:
        """Signal a running container's processes, as a crash or the OOM killer would."""
        with self._lock:
            found = [p for p in self._pods.values() if (p.namespace, p.name) == (namespace, pod)]
            if not found:
                raise LookupError(f"no pod {namespace}/{pod} runs on {self.name}")
            targets = [c for c in found[0].containers if container in (None, c.name) and c.running]
            if not targets:
                raise LookupError(f"pod {namespace}/{pod} has no running container {container or ''}".rstrip())
            for c in targets:
                c.signal(sig)

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output so far (all its runs), like ``kubectl logs``."""
        paths = sorted(self.work_dir.glob(f"pods/{namespace}_{pod}_*/logs/{container or '*'}.log"))
        return "".join(p.read_text(errors="replace") for p in paths)

    # ------------------------------------------------------------------ for the kubelet API (kubeletapi.Host)

    def _find(self, namespace: str, pod: str) -> Pod:
        """The pod, looked up without the lock: the sync loop holds it while an init container
        runs, and that container's log must be readable meanwhile (a dict snapshot is atomic)."""
        found = [p for p in list(self._pods.values()) if (p.namespace, p.name) == (namespace, pod)]
        if not found:
            raise KubeletError(404, f'pod "{pod}" does not exist')
        return found[-1]  # the newest, if a pod of that name is still being torn down

    def log_run(self, namespace: str, pod: str, container: str, previous: bool) -> Run:
        """Which run ``kubectl logs [--previous]`` reads, and a kubelet's refusals when there is none."""
        p = self._find(namespace, pod)
        c = next((c for c in [*p.init_containers, *p.containers] if c.name == container), None)
        if c is None:
            raise KubeletError(404, f'container "{container}" not found in pod "{pod}"')
        if previous:
            if c.previous_run is None:
                raise KubeletError(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            return c.previous_run
        if c.runs:
            return c.runs[-1]  # running, ended, or ended and waiting to restart: the latest
        if c.terminated is not None:
            raise KubeletError(400, f'container "{container}" in pod "{pod}" is terminated')
        reason = (c.waiting or ("ContainerCreating", ""))[0]
        raise KubeletError(400, f'container "{container}" in pod "{pod}" is waiting to start: {reason}')

    def pod_address(self, namespace: str, pod: str) -> tuple[str, str]:
        p = self._find(namespace, pod)
        return p.ip, p.uid

    def pids(self, namespace: str, pod: str) -> list[int]:
        with self._lock:
            return [
                c.popen.pid
                for p in self._pods.values()
                if (p.namespace, p.name) == (namespace, pod)
                for c in p.containers
                if c.running and c.popen is not None
            ]

    # ------------------------------------------------------------------ the sync loop

    def _run(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while not self._stop.is_set():
            try:
                self._sync_all()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
                    self._heartbeat()
            except Exception as exc:  # noqa: BLE001 - a kubelet keeps going; the test sees self.errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(SYNC_SECONDS)

    def _sync_all(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.name}")
        status, listing = self.cp.request("GET", f"/api/v1/pods?fieldSelector={selector}")
        if status != 200:
            raise RuntimeError(f"listing pods: HTTP {status}")
        seen = set()
        for obj in listing["items"]:
            uid = obj["metadata"]["uid"]
            seen.add(uid)
            with self._lock:
                pod = self._pods.get(uid) or self._admit(obj)
                self._sync(pod, obj)
        with self._lock:
            for uid in [u for u in self._pods if u not in seen]:  # force-deleted: nothing to report to
                self._forget(self._pods.pop(uid))

    def _admit(self, obj: dict[str, Any]) -> Pod:
        meta, spec = obj["metadata"], obj["spec"]
        ip = f"{POD_IP_PREFIX}.{self._next_ip // 250}.{self._next_ip % 250 + 1}"
        self._next_ip += 1
        pod_dir = self.work_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        (pod_dir / "logs").mkdir(parents=True, exist_ok=True)
        containers = [Container(c["name"], c, pod_dir / "logs" / f"{c['name']}.log") for c in spec["containers"]]
        inits = [Container(c["name"], c, pod_dir / "logs" / f"{c['name']}.log") for c in spec.get("initContainers", [])]
        pod = Pod(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=ip,
            dir=pod_dir,
            containers=containers,
            restart_policy=spec.get("restartPolicy", "Always"),
            start_time=now(),
            images={c["name"]: c.get("image", "") for c in [*spec.get("initContainers", []), *spec["containers"]]},
            init_containers=inits,
        )
        self._pods[pod.uid] = pod
        return pod

    def _sync(self, pod: Pod, obj: dict[str, Any]) -> None:
        if obj["metadata"].get("deletionTimestamp"):
            self._terminate(pod, obj)
            return
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") and pod.last_status is None:
            return  # finished before this node (re)started: nothing to run
        if not pod.set_up:
            self._start_containers(pod, obj)
        for c in pod.containers:
            self._watch_container(pod, obj, c)
        self._report(pod, obj)

    # ------------------------------------------------------------------ containers

    def _start_containers(self, pod: Pod, obj: dict[str, Any]) -> None:
        try:
            volumes = self._volumes(pod, obj)
            envs = {c.name: self._env(pod, obj, c.spec) for c in [*pod.init_containers, *pod.containers]}
        except PodSetupError as exc:
            for c in pod.containers:
                c.waiting = (exc.reason, str(exc))
            return
        hosts = pod.dir / "hosts"
        hosts.write_text(self._hosts_file(pod, obj))
        for c in pod.init_containers:  # in order, each to its end, before any container (here: blocking)
            self._prepare(pod, c, volumes, hosts, envs[c.name])
            self._launch(c)
            assert c.popen is not None
            try:
                rc = c.popen.wait(timeout=INIT_CONTAINER_TIMEOUT)
            except subprocess.TimeoutExpired:
                c.kill()
                rc = -signal.SIGKILL
            c.terminated = c.ended(rc)
            if c.terminated["exitCode"] != 0:
                pod.init_failed, pod.set_up = True, True
                for main in pod.containers:
                    main.waiting = ("PodInitializing", "")
                return
        for c in pod.containers:
            self._prepare(pod, c, volumes, hosts, envs[c.name])
            self._launch(c)
        pod.set_up = True

    def _prepare(self, pod: Pod, c: Container, volumes: dict[str, Path], hosts: Path, env: dict[str, str]) -> None:
        """A container's mount namespace script and environment."""
        mounts = [self._bind(volumes, vm) for vm in c.spec.get("volumeMounts", [])]
        mounts.append(BindMount(hosts, "/etc/hosts", read_only=True))
        c.termination_file = pod.dir / f"termination-{c.name}"
        c.termination_file.touch()
        mounts.append(
            BindMount(c.termination_file, c.spec.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH)
        )
        for m in mounts:
            created = missing_ancestor(m.target)
            if created is not None:
                self._created_paths.add(created)
        security = c.spec.get("securityContext", {})
        c.script = mount_script(
            mounts, bool(security.get("readOnlyRootFilesystem")), c.spec.get("workingDir") or "/", self.image
        )
        c.env = env

    def _launch(self, c: Container) -> None:
        argv = [*(c.spec.get("command") or []), *(c.spec.get("args") or [])]
        if not argv:
            c.terminated = {"exitCode": 128, "reason": "StartError", "message": "no command (images are not run here)"}
            return
        if c.termination_file is not None:
            c.termination_file.write_bytes(b"")
        with open(c.log, "ab") as log:
            if c.runs:  # before the line below is written: a reader of that run stops short of it
                c.runs[-1].end = log.seek(0, os.SEEK_END)
            log.write(f"===== {now()} start #{c.restart_count}: {shlex.join(argv)}\n".encode())
            log.flush()
            start = log.tell()
            c.popen = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", c.script, c.name, *argv],
                env=c.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
                preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - prctl only
            )
        c.runs.append(Run(c.log, start, c.popen))
        c.started_at, c.waiting, c.ready, c.probe_failures = now(), None, False, 0
        probe = c.spec.get("readinessProbe")
        c.next_probe = time.monotonic() + (probe or {}).get("initialDelaySeconds", 0)

    def _watch_container(self, pod: Pod, obj: dict[str, Any], c: Container) -> None:
        if c.popen is None or c.terminated is not None:
            return
        if c.restart_at is not None:
            if time.monotonic() >= c.restart_at:
                c.restart_at = None
                c.restart_count += 1
                self._launch(c)
            return
        rc = c.popen.poll()
        if rc is None:
            self._probe(pod, c)
            return
        c.signal(signal.SIGKILL)  # what the leader left behind (a kubelet kills the whole cgroup)
        ended = c.ended(rc)
        code = ended["exitCode"]
        c.ready = False
        if pod.restart_policy == "Always" or (pod.restart_policy == "OnFailure" and code != 0):
            c.last_terminated, c.previous_run = ended, c.runs[-1]
            delay = RESTART_BACKOFF[min(c.restart_count, len(RESTART_BACKOFF) - 1)]
            c.restart_at = time.monotonic() + delay
            c.waiting = ("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container={c.name}")
        else:
            c.terminated = ended

    def _probe(self, pod: Pod, c: Container) -> None:
        probe = c.spec.get("readinessProbe")
        if probe is None:
            c.ready = True
            return
        if time.monotonic() < c.next_probe:
            return
        c.next_probe = time.monotonic() + probe.get("periodSeconds", 10)
        get = probe.get("httpGet")
        if get is None:
            raise NotImplementedError(f"{pod.name}: only httpGet readiness probes are run here")
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in c.spec.get("ports", []) if p.get("name") == port)
        url = f"http://{pod.ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as resp:
                ok = 200 <= resp.status < 400
        except (urllib.error.URLError, OSError):
            ok = False
        if ok:
            c.ready, c.probe_failures = True, 0
        else:
            c.probe_failures += 1
            if c.probe_failures >= probe.get("failureThreshold", 3):
                c.ready = False

    def _terminate(self, pod: Pod, obj: dict[str, Any]) -> None:
        """Graceful deletion: SIGTERM, SIGKILL at the grace period's end, then remove the pod."""
        if pod.kill_deadline is None:
            grace = obj["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            pod.kill_deadline = time.monotonic() + grace
            for c in pod.containers:
                c.restart_at = None
                c.signal(signal.SIGTERM)
        if any(c.running for c in pod.containers) and time.monotonic() < pod.kill_deadline:
            return
        for c in pod.containers:
            c.kill()
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}}
        status, _ = self.cp.request("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", body)
        if status in (200, 404, 409):
            self._forget(self._pods.pop(pod.uid))

    def _forget(self, pod: Pod) -> None:
        for c in pod.containers:
            c.kill()

    # ------------------------------------------------------------------ status

    def _report(self, pod: Pod, obj: dict[str, Any]) -> None:
        statuses = [c.status(pod.images[c.name]) for c in pod.containers]
        started = all(c.started_at is not None for c in pod.containers)
        finished = all(c.terminated is not None for c in pod.containers)
        if pod.init_failed:
            phase = "Failed"
        elif finished:
            phase = "Succeeded" if all(c.terminated["exitCode"] == 0 for c in pod.containers) else "Failed"  # type: ignore[index]
        elif started:
            phase = "Running"
        else:
            phase = "Pending"
        ready = all(s["ready"] for s in statuses)
        scheduled = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"]

        def condition(ctype: str, value: bool) -> dict[str, Any]:
            state = "True" if value else "False"
            if pod.transitions.get(ctype, ("", ""))[0] != state:
                pod.transitions[ctype] = (state, now())
            return {"type": ctype, "status": state, "lastTransitionTime": pod.transitions[ctype][1]}

        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": pod.start_time,
            "conditions": [
                *scheduled,
                condition("PodReadyToStartContainers", pod.set_up),
                condition("Initialized", all((c.terminated or {}).get("exitCode") == 0 for c in pod.init_containers)),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": statuses,
        }
        if pod.init_containers:
            status["initContainerStatuses"] = [c.status(pod.images[c.name]) for c in pod.init_containers]
        if status == pod.last_status:
            return
        code, body = self.cp.request(
            "PATCH",
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
        if code == 200:
            pod.last_status = status
        elif code != 404:
            raise RuntimeError(f"pod {pod.namespace}/{pod.name} status: HTTP {code}: {body}")

    # ------------------------------------------------------------------ volumes and env

    def _volumes(self, pod: Pod, obj: dict[str, Any]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        ns = pod.namespace
        for vol in obj["spec"].get("volumes", []):
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                out[name] = self._claim_dir(ns, vol["persistentVolumeClaim"]["claimName"])
            elif "configMap" in vol or "secret" in vol:
                out[name] = self._key_files(pod, name, vol)
            elif "emptyDir" in vol:
                out[name] = pod.dir / "volumes" / name
                out[name].mkdir(parents=True, exist_ok=True)
            elif "hostPath" in vol:
                out[name] = Path(vol["hostPath"]["path"])
            elif "projected" in vol:
                out[name] = self._projected(pod, obj, name, vol["projected"])
            else:
                raise PodSetupError("CreateContainerConfigError", f"volume {name}: kind not supported by this node")
        return out

    def _claim_dir(self, ns: str, claim: str) -> Path:
        status, pvc = self.cp.request("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        if status != 200 or not pvc["spec"].get("volumeName"):
            raise PodSetupError("ContainerCreating", f"persistentvolumeclaim {claim!r} is not bound")
        status, pv = self.cp.request("GET", f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        source = (pv or {}).get("spec", {}).get("hostPath") or (pv or {}).get("spec", {}).get("local")
        if status != 200 or not source:
            raise PodSetupError("ContainerCreating", f"volume of claim {claim!r} is not a hostPath/local volume")
        path = Path(source["path"])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _key_files(self, pod: Pod, name: str, vol: dict[str, Any]) -> Path:
        kind = "configmaps" if "configMap" in vol else "secrets"
        ref = vol.get("configMap") or vol["secret"]
        data = self._file_data(pod.namespace, kind, ref.get("name") or ref["secretName"], ref.get("optional", False))
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        return self._write_files(pod.dir / "volumes" / name, {i["path"]: data[i["key"]] for i in items})

    def _projected(self, pod: Pod, obj: dict[str, Any], name: str, projected: dict[str, Any]) -> Path:
        """ServiceAccount token, ConfigMap, Secret and downward-API items in one directory."""
        files: dict[str, bytes] = {}
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                account = obj["spec"].get("serviceAccountName", "default")
                request = {"spec": {"expirationSeconds": sat.get("expirationSeconds", 3600)}}
                if "audience" in sat:
                    request["spec"]["audiences"] = [sat["audience"]]
                path = f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{account}/token"
                status, got = self.cp.request("POST", path, request)
                if status >= 300:
                    raise PodSetupError("ContainerCreating", f"token for serviceaccount {account}: HTTP {status}")
                files[sat["path"]] = got["status"]["token"].encode()
            elif "configMap" in source or "secret" in source:
                kind = "configmaps" if "configMap" in source else "secrets"
                ref = source.get("configMap") or source["secret"]
                data = self._file_data(pod.namespace, kind, ref["name"], ref.get("optional", False))
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                files.update({i["path"]: data[i["key"]] for i in items if i["key"] in data})
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items", []):
                    files[item["path"]] = self._field(pod, obj, item["fieldRef"]["fieldPath"]).encode()
        return self._write_files(pod.dir / "volumes" / name, files)

    @staticmethod
    def _write_files(d: Path, files: dict[str, bytes]) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(content)
        return d

    @staticmethod
    def _bind(volumes: dict[str, Path], vm: dict[str, Any]) -> BindMount:
        source = volumes[vm["name"]]
        if vm.get("subPath"):
            source = source / vm["subPath"]
            if not vm.get("readOnly"):
                source.mkdir(parents=True, exist_ok=True)  # a kubelet creates a missing subPath folder
        return BindMount(source, vm["mountPath"], bool(vm.get("readOnly")))

    def _env(self, pod: Pod, obj: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": f"{self.bin_dir}:{SYSTEM_PATH}", **self.image_env, "HOSTNAME": pod.name}
        env[LISTEN_HOST_ENV] = pod.ip  # trainers' /progress on the pod's own address: one port, many trainers
        if GPU_RESOURCE in (spec.get("resources") or {}).get("limits", {}):
            env.update(FAKE_GPU_ENV)
        for source in spec.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "configmaps" if "configMapRef" in source else "secrets"
            for key, value in self._data(pod.namespace, kind, ref["name"], ref.get("optional", False)).items():
                env[source.get("prefix", "") + key] = value
        for var in spec.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            value_from = var.get("valueFrom", {})
            if "fieldRef" in value_from:
                env[var["name"]] = self._field(pod, obj, value_from["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in value_from or "configMapKeyRef" in value_from:
                kind = "secrets" if "secretKeyRef" in value_from else "configmaps"
                ref = value_from.get("secretKeyRef") or value_from["configMapKeyRef"]
                data = self._data(pod.namespace, kind, ref["name"], ref.get("optional", False))
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise PodSetupError(
                        "CreateContainerConfigError", f"couldn't find key {ref['key']} in {kind[:-1]} {ref['name']}"
                    )
        return env

    def _object(self, ns: str, kind: str, name: str, optional: bool) -> dict[str, Any]:
        status, got = self.cp.request("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
        if status != 200:
            if optional:
                return {}
            raise PodSetupError("CreateContainerConfigError", f"{kind[:-1]} {name!r} not found")
        return got

    def _data(self, ns: str, kind: str, name: str, optional: bool) -> dict[str, str]:
        """A Secret's or ConfigMap's ``data``, as env sees it."""
        data = self._object(ns, kind, name, optional).get("data") or {}
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return dict(data)

    def _file_data(self, ns: str, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        """Every key as a volume of the object holds it: a ConfigMap's binaryData too, as the kubelet writes it."""
        obj = self._object(ns, kind, name, optional)
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        files = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return files

    def _field(self, pod: Pod, obj: dict[str, Any], path: str) -> str:
        values = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "metadata.uid": pod.uid,
            "spec.nodeName": self.name,
            "spec.serviceAccountName": obj["spec"].get("serviceAccountName", "default"),
            "status.podIP": pod.ip,
            "status.hostIP": "127.0.0.1",
        }
        if path not in values:
            raise PodSetupError("CreateContainerConfigError", f"fieldRef {path} not supported by this node")
        return values[path]

    def _hosts_file(self, pod: Pod, obj: dict[str, Any]) -> str:
        _, services = self.cp.request("GET", f"/api/v1/namespaces/{pod.namespace}/services")
        lines = ["127.0.0.1\tlocalhost", f"{pod.ip}\t{pod.name}"]
        for svc in (services or {}).get("items", []):
            name, ns = svc["metadata"]["name"], pod.namespace
            lines.append(f"127.0.0.1\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns} {name}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ the Node

    def _node_status(self) -> dict[str, Any]:
        t = now()

        def condition(ctype: str, status: str, reason: str) -> dict[str, Any]:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": "process node",
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }

        return {
            "capacity": dict(self.capacity),
            "allocatable": dict(self.capacity),
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_ADDRESS}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.port if self.kubelet else 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "process node (tests/cluster/processnode.py)",
                "containerRuntimeVersion": "process://0",
                "kubeletVersion": "v1.36.3",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _heartbeat(self) -> None:
        self._renew_lease()
        _, node = self.cp.request("GET", f"/api/v1/nodes/{self.name}")
        if node is None:
            return
        conditions = node.get("status", {}).get("conditions", [])
        for c in conditions:
            c["lastHeartbeatTime"] = now()
        self.cp.request(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            {"status": {"conditions": conditions}},
            content_type="application/merge-patch+json",
        )

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        status, _ = self.cp.request("PATCH", path, {"spec": spec}, content_type="application/merge-patch+json")
        if status == 404:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name}, "spec": spec}
            self.cp.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)

    # ------------------------------------------------------------------ small helpers

    @staticmethod
    def _ok(result: tuple[int, Any], what: str) -> Any:
        status, body = result
        if status >= 300:
            raise RuntimeError(f"could not {what}: HTTP {status}: {body}")
        return body

    @staticmethod
    def _remove_mount_point(path: Path) -> None:
        """What a mount made on the host: empty directories, or an empty file (``/dev/termination-log``)."""
        if path.is_file():
            if path.stat().st_size == 0:
                path.unlink()
            return
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            path.rmdir()


@contextlib.contextmanager
def process_node(
    cp: ControlPlane, name: str, work_dir: Path, image: Iterable[Path] = (), gpus: int = 0
) -> Iterator[ProcessNode]:
    node = ProcessNode(cp, name, work_dir, image=image, gpus=gpus).start()
    try:
        yield node
    finally:
        node.stop()

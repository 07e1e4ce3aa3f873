"""How the operator keeps up with many GRPOJobs, next to the built-in Job controller.

On the test control plane (tests/cluster/controlplane.py: real etcd, kube-apiserver,
kube-controller-manager, kube-scheduler; KWOK fake GPU nodes), for each N:

* ours: the operator runs as its own process (as in the e2e tests) watching a fresh
  namespace; N GRPOJobs (3-GPU trainer + 1-GPU vLLM pod each) are created at once;
* built-in: in another fresh namespace, N batch/v1 Jobs of 2 pods (2 GPUs each:
  the same 4 GPUs, CPU and memory per job) are created at once;
* built-in + PVC: the same Jobs, each with its own PersistentVolumeClaim mounted by
  both pods, created just before it -- what a hand-written job with an adapter
  volume amounts to, and the same storage work as ours.

Per job, from watch events: creation → all children exist (ours: PVC, ConfigMap,
Service, both pods; Job: both pods), creation → both pods scheduled; then the time
until every job reports running (ours: Training and InferenceReady True; Job:
status.ready = 2), the controller's CPU seconds, and the operator's peak RSS.

    bash bench/run.sh operator_scale            # N = 50, 200, 500
    bash bench/run.sh operator_scale --quick    # N = 20
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from grpo_operator.settings import OperatorSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))  # as tests/cluster/conftest.py

import controlplane  # noqa: E402
from _results import header, logs_dir, percentile, write_section  # noqa: E402
from _scale_watch import GRPO_GROUP, GRPO_PLURAL, GRPO_VERSION, JOB_LABEL, NamespaceRecorder  # noqa: E402

from support.cluster_jobs import SECRET, install_crd, job_manifest  # noqa: E402
from support.operator import OperatorProcess, free_port, operator_env  # noqa: E402

NAME = "operator_scale"
GPUS_PER_NODE = 8
GPUS_PER_JOB = 4  # ours: 3 training + 1 inference; built-in: 2 pods x 2
HEADROOM = 1.25  # spare GPUs, so that spreading pods over nodes never leaves a pod without room
MEMORY_BOUND_MIB = 512  # the chart's memory limit of the operator's pod (values.yaml)
GOAL_N = 500
CREATE_THREADS = 16
# Per job: CPU/memory requests next to the GPUs, so the scheduler has all three to fit.
TRAINER_REQUESTS = {"cpu": "8", "memory": "64Gi"}
INFERENCE_REQUESTS = {"cpu": "4", "memory": "32Gi"}
BUILTIN_POD_REQUESTS = {"cpu": "6", "memory": "48Gi"}
OURS, BUILTIN, BUILTIN_PVC = "grpo-operator", "built-in Job", "built-in Job + PVC"
# Operator log lines that count as errors: ours and failed handlers. Kopf's retried
# requests (e.g. "storage is (re)initializing" while a new namespace's watch starts) do not.
LOG_ERRORS = ("Traceback", " ERROR grpo_operator", " ERROR kopf.objects")


# --------------------------------------------------------------------------- workloads


def grpojob(name: str) -> dict[str, Any]:
    # limits as well as requests: the CRD's CEL rule on resources fails when `limits` is absent
    return job_manifest(
        name,
        trainer={"resources": {"requests": TRAINER_REQUESTS, "limits": {"memory": TRAINER_REQUESTS["memory"]}}},
        inference={"resources": {"requests": INFERENCE_REQUESTS, "limits": {"memory": INFERENCE_REQUESTS["memory"]}}},
    )


def batch_job(name: str, claim: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "work",
        "image": "busybox:1.36",
        "command": ["sleep", "infinity"],
        "resources": {"requests": BUILTIN_POD_REQUESTS, "limits": {"nvidia.com/gpu": str(GPUS_PER_JOB // 2)}},
    }
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if claim is not None:
        container["volumeMounts"] = [{"name": "run", "mountPath": "/run/job"}]
        pod["volumes"] = [{"name": "run", "persistentVolumeClaim": {"claimName": claim}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 3, "template": {"spec": pod}},
    }


def job_claim(name: str) -> dict[str, Any]:
    """The volume of a hand-written job; labelled with its job, since it cannot be owned before the Job exists."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{name}-run", "labels": {JOB_LABEL: name}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
    }


@dataclass(frozen=True)
class Workload:
    controller: str
    kind: str  # the owner kind in ownerReferences
    children: dict[str, int]  # kind → how many of them each job gets
    manifest: Callable[[str], dict[str, Any]]
    claim: Callable[[str], dict[str, Any]] | None = None  # created by the "user" right before each job


WORKLOADS = {
    OURS: Workload(OURS, "GRPOJob", {"Pod": 2, "PersistentVolumeClaim": 1, "ConfigMap": 1, "Service": 1}, grpojob),
    BUILTIN: Workload(BUILTIN, "Job", {"Pod": 2}, batch_job),
    BUILTIN_PVC: Workload(
        BUILTIN_PVC,
        "Job",
        {"Pod": 2, "PersistentVolumeClaim": 1},
        lambda name: batch_job(name, claim=job_claim(name)["metadata"]["name"]),
        claim=job_claim,
    ),
}


def create_all(api: client.ApiClient, ns: str, workload: Workload, names: list[str]) -> None:
    """Create every job at once (a pool of concurrent requests, raw responses: no client-side model parsing)."""
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)

    def create(name: str) -> None:
        if workload.claim is not None:
            resp = core.create_namespaced_persistent_volume_claim(ns, workload.claim(name), _preload_content=False)
            resp.read()
            resp.release_conn()
        body = workload.manifest(name)
        if workload.kind == "GRPOJob":
            resp = custom.create_namespaced_custom_object(
                GRPO_GROUP, GRPO_VERSION, ns, GRPO_PLURAL, body, _preload_content=False
            )
        else:
            resp = batch.create_namespaced_job(ns, body, _preload_content=False)
        resp.read()  # the whole body, so the pooled connection is clean for the next request
        resp.release_conn()

    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, names))


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def component_pid(cp: controlplane.ControlPlane, name: str) -> int:
    return next(p.popen.pid for p in cp._procs if p.name == name)


# --------------------------------------------------------------------------- one measurement


@dataclass
class Result:
    controller: str
    n: int
    children_p50: float
    children_p95: float
    children_max: float
    scheduled_p50: float
    scheduled_p95: float
    scheduled_max: float
    all_running: float  # from the first creation request until the last job reports running
    cpu_s: float  # the controller process over that time (ours: the operator; built-in: kube-controller-manager)
    idle_cpu_pct: float  # the controller's CPU afterwards, all jobs running and nothing changing
    peak_rss_mib: float  # ours only (the process lives for this one measurement)
    pvc_bound_p50: float  # ours only: the PersistentVolume controller's part of "scheduled"
    bound_to_scheduled_p50: float  # ours only: PVC bound → both pods scheduled (the scheduler's part after it)
    incomplete: int  # jobs that missed a child or a scheduled pod before the timeout
    log_errors: int
    relists: int  # watches the benchmark had to re-list (their marks are late by the gap)


def _latencies(rec: NamespaceRecorder, w: Workload, names: list[str]) -> tuple[list[float], list[float], int]:
    """Per job: creation → last child seen, creation → last pod scheduled; and the count of incomplete jobs."""
    owners, kids = rec.seen[w.kind], rec.children(w.kind)
    children, scheduled, incomplete = [], [], 0
    for name in names:
        job, mine = owners.get(name), kids.get(name, [])
        have = {k: sum(1 for kind, _ in mine if kind == k) for k in w.children}
        pods = [s for kind, s in mine if kind == "Pod"]
        if job is None or have != w.children or not all("scheduled" in p.marks for p in pods):
            incomplete += 1
            continue
        children.append(max(s.added for _, s in mine) - job.added)
        scheduled.append(max(p.marks["scheduled"] for p in pods) - job.added)
    return children, scheduled, incomplete


def _after_bound(rec: NamespaceRecorder, w: Workload, names: list[str]) -> list[float]:
    """Per job with a volume: its PVC bound → its last pod scheduled (0 when the pods were placed first)."""
    bound = {
        s.owner[1]: s.marks["bound"]
        for s in rec.seen["PersistentVolumeClaim"].values()
        if "bound" in s.marks and s.owner and s.owner[0] == w.kind
    }
    wanted, out = set(names), []
    for name, mine in rec.children(w.kind).items():
        pods = [s for kind, s in mine if kind == "Pod"]
        complete = len(pods) == w.children["Pod"] and all("scheduled" in p.marks for p in pods)
        if name in wanted and name in bound and complete:
            out.append(max(0.0, max(p.marks["scheduled"] for p in pods) - bound[name]))
    return out


@contextlib.contextmanager
def fresh_namespace(cp: controlplane.ControlPlane, api: client.ApiClient, prefix: str) -> Iterator[str]:
    """A new namespace; afterwards deleted and waited for, so its pods' GPUs are free for the next measurement.

    The jobs and pods go first, each kind in one request and the pods without grace:
    left to the namespace controller, graceful deletion of a thousand pods on fake
    nodes takes minutes (KWOK removes them one by one).
    """
    ns = cp.create_namespace(f"{prefix}-{uuid.uuid4().hex[:5]}")
    try:
        yield ns
    finally:
        with contextlib.suppress(client.ApiException):
            client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
                GRPO_GROUP, GRPO_VERSION, ns, GRPO_PLURAL
            )
            client.BatchV1Api(api).delete_collection_namespaced_job(ns, propagation_policy="Background")
            client.CoreV1Api(api).delete_collection_namespaced_pod(ns, grace_period_seconds=0)
        cp.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=600s", check=False, timeout=660)


def measure(
    cp: controlplane.ControlPlane,
    api: client.ApiClient,
    w: Workload,
    n: int,
    logs: Path,
    timeout: float,
    idle: float,
    operator_settings: dict[str, str] | None = None,
) -> Result:
    names = [f"bench-{i:04d}" for i in range(n)]
    short = {OURS: "ours", BUILTIN: "builtin", BUILTIN_PVC: "builtin-pvc"}[w.controller]
    with fresh_namespace(cp, api, f"scale-{short}-{n}") as ns:
        operator = None
        if w.controller == OURS:
            cp.kubectl("create", "secret", "generic", SECRET, "--from-literal=api-key=sk-test", "-n", ns)
            settings = {"GRPO_TRAINER_PORT": str(free_port()), **(operator_settings or {})}
            log = logs / f"operator-{n}-{ns}.log"
            operator = OperatorProcess(operator_env(cp.env()), [ns], log, settings).start(timeout=60)
            pid = operator.proc.pid
        else:
            pid = component_pid(cp, "kube-controller-manager")
        rec = NamespaceRecorder(api, ns).start()
        try:
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            create_all(api, ns, w, names)
            deadline = t0 + timeout
            while rec.count(w.kind, "running") < n and time.monotonic() < deadline:
                if operator is not None and not operator.alive:
                    raise RuntimeError(f"the operator exited:\n{operator.log_tail()}")
                time.sleep(0.2)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            time.sleep(idle)
            idle_pct = 100 * (cpu_seconds(pid) - cpu1) / (time.monotonic() - t1)
            running = [s.marks["running"] for s in rec.seen[w.kind].values() if "running" in s.marks]
            all_running = max(running) - t0 if len(running) == n else math.nan
            children, scheduled, incomplete = _latencies(rec, w, names)
            after_bound = _after_bound(rec, w, names)
            bound = [
                s.marks["bound"] - rec.seen[w.kind][owner].added
                for s in rec.seen["PersistentVolumeClaim"].values()
                if "bound" in s.marks and s.owner and (owner := s.owner[1]) in rec.seen[w.kind]
            ]
            rss = peak_rss_mib(pid) if operator is not None else math.nan
            if rec.errors:
                raise RuntimeError("; ".join(rec.errors))
        finally:
            rec.stop()
            if operator is not None:
                operator.stop()
        log = operator.log_text().splitlines() if operator else []
        errors = sum(1 for line in log if any(mark in line for mark in LOG_ERRORS))
    return Result(
        controller=w.controller,
        n=n,
        children_p50=percentile(children, 50),
        children_p95=percentile(children, 95),
        children_max=max(children, default=math.nan),
        scheduled_p50=percentile(scheduled, 50),
        scheduled_p95=percentile(scheduled, 95),
        scheduled_max=max(scheduled, default=math.nan),
        all_running=all_running,
        cpu_s=cpu1 - cpu0,
        idle_cpu_pct=idle_pct,
        peak_rss_mib=rss,
        pvc_bound_p50=percentile(bound, 50),
        bound_to_scheduled_p50=percentile(after_bound, 50),
        incomplete=incomplete + (n - len(running)),
        log_errors=errors,
        relists=len(rec.relists),
    )


# --------------------------------------------------------------------------- report


def median_result(results: list[Result]) -> Result:
    """Each number the median over the repeats (incomplete and errors: the worst)."""
    first = asdict(results[0])
    out: dict[str, Any] = {}
    for key, value in first.items():
        values = [getattr(r, key) for r in results]
        if key in ("incomplete", "log_errors", "relists"):
            out[key] = max(values)
        elif isinstance(value, float):
            out[key] = statistics.median(values)
        else:
            out[key] = value
    return Result(**out)


def _f(x: float, digits: int = 1) -> str:
    return "—" if math.isnan(x) else f"{x:.{digits}f}"


RATIOS = (
    ("children p50", "children_p50"),
    ("children p95", "children_p95"),
    ("scheduled p50", "scheduled_p50"),
    ("scheduled p95", "scheduled_p95"),
    ("all running", "all_running"),
)


def ratios(ours: Result, builtin: Result) -> dict[str, float]:
    return {label: getattr(ours, key) / getattr(builtin, key) for label, key in RATIOS}


def kcm_args(qps: int | None) -> list[str]:
    """kube-controller-manager's client rate for every controller in it (PV binder and Job controller alike)."""
    return [] if qps is None else [f"--kube-api-qps={qps}", f"--kube-api-burst={2 * qps}"]


def report(
    results: dict[tuple[int, str], Result], repeats: int, kcm_qps: int | None = None, workers: int | None = None
) -> str:
    sizes = sorted({n for n, _ in results})
    lines = [
        "| N | controller | children p50 / p95 / max (s) | both pods scheduled p50 / p95 / max (s) "
        "| all running (s) | CPU (s) | idle CPU (%) | peak RSS (MiB) | PVC bound p50 (s) | PVC bound → scheduled p50 (s) "
        "| incomplete | log errors | watch relists |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    controllers = [c for c in (OURS, BUILTIN, BUILTIN_PVC) if any(key[1] == c for key in results)]
    for n in sizes:
        for controller in controllers:
            r = results[(n, controller)]
            lines.append(
                f"| {n} | {controller} | {_f(r.children_p50)} / {_f(r.children_p95)} / {_f(r.children_max)} "
                f"| {_f(r.scheduled_p50)} / {_f(r.scheduled_p95)} / {_f(r.scheduled_max)} | {_f(r.all_running)} "
                f"| {_f(r.cpu_s)} | {_f(r.idle_cpu_pct)} | {_f(r.peak_rss_mib, 0)} | {_f(r.pvc_bound_p50)} | {_f(r.bound_to_scheduled_p50)} "
                f"| {r.incomplete} | {r.log_errors} | {r.relists} |"
            )
    for other in controllers[1:]:
        lines += ["", f"Ratio ours / {other} (lower is better; 1 = as fast):", ""]
        lines += ["| N | " + " | ".join(label for label, _ in RATIOS) + " |", "|---:|" + "---:|" * len(RATIOS)]
        for n in sizes:
            rs = ratios(results[(n, OURS)], results[(n, other)])
            lines.append(f"| {n} | " + " | ".join(f"{_f(v, 2)}x" for v in rs.values()) + " |")
    goal_n = GOAL_N if GOAL_N in sizes else max(sizes)
    ours = results[(goal_n, OURS)]
    worst = max(ratios(ours, results[(goal_n, BUILTIN)]).values())
    met = worst <= 2.0 and ours.peak_rss_mib <= MEMORY_BOUND_MIB and ours.incomplete == 0
    verdict = "MET" if met else "NOT MET"
    if goal_n != GOAL_N:
        verdict += f" at N={goal_n} (a smoke run: the goal is stated for N={GOAL_N})"
    same_storage = ""
    if (goal_n, BUILTIN_PVC) in results:
        worst_pvc = max(ratios(ours, results[(goal_n, BUILTIN_PVC)]).values())
        same_storage = f" Against {BUILTIN_PVC} (the same storage work): worst ratio {worst_pvc:.2f}x."
    lines += [
        "",
        f"Goal: within 2x of the built-in controller at N={GOAL_N} with bounded memory "
        f"(every ratio ≤ 2, operator peak RSS ≤ {MEMORY_BOUND_MIB} MiB = the chart's memory limit). "
        f"**{verdict}**: worst ratio {worst:.2f}x, peak RSS {_f(ours.peak_rss_mib, 0)} MiB." + same_storage,
        "",
        f"{'Median over ' + str(repeats) + ' repeats' if repeats > 1 else 'One run'} per row; p50/p95/max are "
        "over the N jobs. Times are watch-event times in one process: a job's creation is its ADDED event. "
        '"children": ours PVC + ConfigMap + Service + 2 pods, built-in 2 pods (+ the PVC created with the Job). '
        '"all running": from the first create request until the last job reports running (ours: Training and '
        "InferenceReady True; built-in: status.ready = 2). CPU: the operator process, or the whole "
        "kube-controller-manager for the built-in, over that time; idle CPU: afterwards, with every job running. "
        "Pods with a volume wait for their PVC to be bound (kube-controller-manager's PV controller, hostpath "
        'provisioner) before the scheduler places them; "PVC bound → scheduled" is the time after that binding. '
        + settings_note(kcm_qps, workers)
        + " Watch relists: times the benchmark's own watches could not "
        "resume (their marks are late by the gap; 0 means none).",
    ]
    return "\n".join(lines)


def settings_note(kcm_qps: int | None, workers: int | None = None) -> str:
    """The settings both controllers ran with, for the table's notes."""
    kcm = "default (--kube-api-qps 20, --kube-api-burst 30)" if kcm_qps is None else " ".join(kcm_args(kcm_qps))
    return (
        f"One kube-controller-manager for both controllers in this run, client rate {kcm}; "
        f"operator resync 10 s, {workers or OperatorSettings().reconcile_workers} reconcile workers."
    )


# --------------------------------------------------------------------------- main


def api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = CREATE_THREADS + 16  # the creating threads and the watches
    return client.ApiClient(cfg)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: N=20, short idle window")
    p.add_argument("--sizes", default="50,200,500", help="comma-separated N (default 50,200,500)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per N and controller (medians reported)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for all jobs running")
    p.add_argument("--idle", type=float, default=15, help="seconds of idle CPU measured after all run")
    p.add_argument(
        "--kcm-qps",
        type=int,
        help="kube-controller-manager --kube-api-qps (burst 2x) for both controllers (default 20)",
    )
    p.add_argument("--workers", type=int, help="the operator's reconcile workers (default: its own, 16)")
    p.add_argument("--logs", type=Path, help="directory for component and operator logs (default: a temp dir)")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.idle = "20", 5
    args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


def main() -> int:
    args = parse_args()
    logs = logs_dir(args.logs, NAME)
    nodes = math.ceil(max(args.sizes) * GPUS_PER_JOB * HEADROOM / GPUS_PER_NODE)
    results: dict[tuple[int, str], list[Result]] = {}
    operator_settings = {} if args.workers is None else {"GRPO_RECONCILE_WORKERS": str(args.workers)}
    with controlplane.ControlPlane.start(logs_dir=logs, controller_manager_args=kcm_args(args.kcm_qps)) as cp:
        install_crd(cp)
        started = time.monotonic()
        cp.add_gpu_nodes([f"bench-gpu-{i}" for i in range(nodes)], gpus=GPUS_PER_NODE, cpu="96", memory="1Ti")
        print(f"{nodes} fake nodes x {GPUS_PER_NODE} GPUs Ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
        api = api_client(cp.kubeconfig)
        for n in args.sizes:
            for repeat in range(args.repeats):
                order = (OURS, BUILTIN, BUILTIN_PVC) if repeat % 2 == 0 else (BUILTIN_PVC, BUILTIN, OURS)
                for controller in order:
                    r = measure(cp, api, WORKLOADS[controller], n, logs, args.timeout, args.idle, operator_settings)
                    results.setdefault((n, controller), []).append(r)
                    print(f"N={n} {controller}: {r}", file=sys.stderr)
    table = report({key: median_result(rs) for key, rs in results.items()}, args.repeats, args.kcm_qps, args.workers)
    print(table)
    if not args.no_write:
        write_section(NAME, f"## operator_scale\n\n{header(NAME)}\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

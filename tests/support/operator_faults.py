"""Fault runs of the operator on the test control plane, shared by the CI tests
(tests/cluster/test_operator_faults.py, short) and the soak (bench/operator_faults.py, figures
in bench/RESULTS.md).

* :func:`kill_run`: many jobs whose trainers fail and finish as a plan says, while the
  operator is SIGKILLed at random points and started again; then what must hold: every job
  finished, its attempts counted exactly, no pod made twice or left behind, no child
  without its job, no counter or step that ever went back.
* :func:`hostile_run`: the time a healthy job's spec change takes to be reconciled, and its
  trainer's new step to reach the status, while hostile trainers' /progress is polled.

The pods run on KWOK nodes (no GPU, no image here); the test plays their kubelet (KWOK ends
a pod annotated ``grpo.test/exit``) and their trainers' /progress (support/fake_trainer.py).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane import EXIT_ANNOTATION, EXIT_DELAY_ANNOTATION, ControlPlane
from kubernetes import client, config, watch

from grpo_operator.api.job import GROUP, PLURAL, VERSION
from grpo_operator.children import INFERENCE, JOB_LABEL, TRAINER
from support.cluster_jobs import CHILD_KINDS, Job, apply_jobs, job_manifest
from support.fake_trainer import FakeTrainers
from support.operator import OperatorProcess

COMPONENT_LABEL = "app.kubernetes.io/component"
# Status values that only ever grow: a write from a stale read would move them back.
MONOTONIC = ("restarts", "interruptions", "inferenceRestarts", "step")
STEPS = 1000  # the fake trainers' max_steps: never reached, the test ends each trainer


def api_client(cp: ControlPlane) -> client.ApiClient:
    """The test's own (admin) client; raw JSON throughout (see :func:`_json`)."""
    return config.new_client_from_config(str(cp.kubeconfig))


def _json(resp: Any) -> Any:
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


def fault_jobs(names: Iterable[str], node_selector: Mapping[str, str], backoff_limit: int) -> list[Job]:
    """The example job under each name, its pods kept to the run's own nodes."""
    placement = {"nodeSelector": dict(node_selector)}
    return [
        job_manifest(name, trainer=placement, inference=placement, runPolicy={"backoffLimit": backoff_limit})
        for name in names
    ]


class Recorder:
    """Every version of the namespace's pods and jobs, from watches: what polling between two looks would miss."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self._lists: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
            "Pod": (core.list_namespaced_pod, (ns,)),
            "GRPOJob": (custom.list_namespaced_custom_object, (GROUP, VERSION, ns, PLURAL)),
        }
        self.pod_uids: dict[str, set[str]] = defaultdict(set)  # pod name -> every uid it had
        self.statuses: dict[str, list[dict[str, Any]]] = defaultdict(list)  # job -> its statuses, in order
        self.job_writes: list[float] = []  # when a job changed (the operator's status writes, mostly)
        self.errors: list[str] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> Recorder:
        for kind in self._lists:
            func, args = self._lists[kind]
            listed = _json(func(*args, _preload_content=False))
            for obj in listed["items"]:
                self._note(kind, obj)
            rv = listed["metadata"]["resourceVersion"]
            threading.Thread(target=self._run, args=(kind, rv), daemon=True, name=f"record {kind}").start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _note(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self._lock:
            if kind == "Pod":
                self.pod_uids[meta["name"]].add(meta["uid"])
            else:
                self.statuses[meta["name"]].append(dict(obj.get("status") or {}))
                self.job_writes.append(time.monotonic())

    def _run(self, kind: str, rv: str) -> None:
        func, args = self._lists[kind]
        while not self._stopped.is_set():
            try:
                for event in watch.Watch().stream(func, *args, resource_version=rv, deserialize=False,
                                                  timeout_seconds=30):  # fmt: skip
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise RuntimeError(obj.get("message"))
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    self._note(kind, obj)
                    if self._stopped.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - a gap in the record makes the run's checks incomplete
                if not self._stopped.is_set():
                    self.errors.append(f"{kind} watch: {exc}")
                return

    def regressions(self) -> list[str]:
        """Status values that went back in some later version of a job (counters, step, a finished job)."""
        found = []
        with self._lock:
            history = {name: list(versions) for name, versions in self.statuses.items()}
        for name, versions in history.items():
            high: dict[str, Any] = {}
            finished = False
            for status in versions:
                for key in MONOTONIC:
                    value = status.get(key)
                    if value is not None and value < high.get(key, value):
                        found.append(f"{name}: status.{key} went back from {high[key]} to {value}")
                    if value is not None:
                        high[key] = max(value, high.get(key, value))
                done = _true(status, "Succeeded") or _true(status, "Failed")
                if finished and not done:
                    found.append(f"{name}: finished, then not")
                finished = finished or done
        return found


def _true(status: Mapping[str, Any], ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True" for c in status.get("conditions") or [])


def _attempt(pod_name: str) -> int:
    return int(pod_name.rsplit("-", 1)[1])


@dataclass
class KillRun:
    jobs: int
    kills: int
    failures: dict[str, int]  # job -> trainer attempts that failed before the one that succeeded
    kill_gaps: list[float] = field(default_factory=list)  # seconds from each (re)start's /healthz to its kill
    busy_kills: int = 0  # kills that came after the operator had written to a job since its (re)start
    wall_seconds: float = 0.0
    conflicts: int = 0  # status writes refused as stale, then decided again (from the operator's log)
    unfinished: list[str] = field(default_factory=list)
    miscounted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    record_errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return (self.unfinished + self.miscounted + self.duplicates + self.orphans + self.leftovers
                + self.regressions + self.record_errors)  # fmt: skip

    def summary(self) -> str:
        gaps = sorted(self.kill_gaps)
        return (
            f"{self.jobs} jobs ({sum(self.failures.values())} trainer failures planned), operator SIGKILLed "
            f"{self.kills} times ({gaps[0]:.1f}-{gaps[-1]:.1f} s after each start answered /healthz, median "
            f"{statistics.median(gaps):.1f} s; {self.busy_kills} of them after it had written to a job), "
            f"{self.wall_seconds:.0f} s: {len(self.unfinished)} unfinished, "
            f"{len(self.miscounted)} miscounted, {len(self.duplicates)} duplicate pods, {len(self.orphans)} orphans, "
            f"{len(self.leftovers)} left behind, {len(self.regressions)} status regressions; "
            f"{self.conflicts} stale status writes refused and decided again"
        )


def kill_run(
    cp: ControlPlane,
    operator: OperatorProcess,
    trainers: FakeTrainers,
    ns: str,
    docs: list[Job],
    kills: int,
    rng: random.Random,
    max_failures: int = 2,
    kill_gap: tuple[float, float] = (0.0, 3.0),
    exit_after: tuple[float, float] = (0.2, 2.0),
    timeout: float = 600,
) -> KillRun:
    """Apply ``docs``; end each trainer attempt a random ``exit_after`` seconds after it runs (exit 1 for the
    planned failures, then 0) while the operator is killed ``kills`` times, each a random ``kill_gap`` after it
    (re)started and answered /healthz (its workers run: it is watching, resuming jobs, reconciling); wait for
    every job to finish."""
    api = api_client(cp)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    names = [d["metadata"]["name"] for d in docs]
    run = KillRun(len(docs), kills, {name: rng.randint(0, max_failures) for name in names})
    recorder = Recorder(api, ns).start()
    started = time.monotonic()
    apply_jobs(cp, ns, *docs)
    gap = rng.uniform(*kill_gap)
    life = time.monotonic()  # when the running operator started
    next_kill = life + gap
    step = 0
    while True:
        now = time.monotonic()
        if len(run.kill_gaps) < kills and now >= next_kill:
            operator.kill()
            run.kill_gaps.append(gap)
            run.busy_kills += any(life <= t <= now for t in list(recorder.job_writes))
            life = time.monotonic()
            operator.start()  # until /healthz answers: the kill points are spread over its work, not its imports
            gap = rng.uniform(*kill_gap)
            next_kill = time.monotonic() + gap
        step += 1
        for name in names:  # each trainer makes progress, reported on its /progress
            trainers.set(name, step=step, max_steps=STEPS)
        for pod in _json(core.list_namespaced_pod(ns, _preload_content=False))["items"]:
            meta = pod["metadata"]
            running = pod.get("status", {}).get("phase") == "Running" and not meta.get("deletionTimestamp")
            if meta["labels"].get(COMPONENT_LABEL) != TRAINER or not running:
                continue
            if EXIT_ANNOTATION in (meta.get("annotations") or {}):
                continue
            code = 1 if _attempt(meta["name"]) < run.failures[meta["labels"][JOB_LABEL]] else 0
            ending = {EXIT_ANNOTATION: str(code), EXIT_DELAY_ANNOTATION: f"{rng.uniform(*exit_after):.1f}s"}
            core.patch_namespaced_pod(meta["name"], ns, {"metadata": {"annotations": ending}}, _preload_content=False)
        jobs = _json(custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _preload_content=False))
        statuses = {j["metadata"]["name"]: j.get("status") or {} for j in jobs["items"]}
        finished = all(_true(statuses.get(n, {}), "Succeeded") or _true(statuses.get(n, {}), "Failed") for n in names)
        if (finished and len(run.kill_gaps) == kills) or now - started > timeout:
            break
        time.sleep(0.3)
    operator.wait_healthy()
    _settle(core, ns, timeout=60)
    run.wall_seconds = time.monotonic() - started
    recorder.stop()
    _judge(run, core, statuses, recorder, ns)
    run.conflicts = operator.log_text().count("changed since it was read")
    return run


def _settle(core: client.CoreV1Api, ns: str, timeout: float) -> None:
    """Wait (bounded) until no vLLM pod is left: a finished job frees its vLLM pod, if need be after a kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = _json(core.list_namespaced_pod(ns, _preload_content=False))["items"]
        if not [p for p in items if p["metadata"]["labels"].get(COMPONENT_LABEL) == INFERENCE]:
            return
        time.sleep(0.5)


def _judge(
    run: KillRun, core: client.CoreV1Api, statuses: Mapping[str, Mapping[str, Any]], recorder: Recorder, ns: str
) -> None:
    for name, failed in run.failures.items():
        status = statuses.get(name, {})
        if not _true(status, "Succeeded"):
            run.unfinished.append(f"{name}: {[(c['type'], c['status']) for c in status.get('conditions') or []]}")
        counts = {k: status.get(k) for k in ("restarts", "interruptions", "inferenceRestarts")}
        if counts != {"restarts": failed, "interruptions": 0, "inferenceRestarts": 0}:
            run.miscounted.append(f"{name}: {counts}, planned {failed} trainer failures")
        made = {pod for pod in recorder.pod_uids if pod.startswith(f"{name}-")}
        planned = {f"{name}-trainer-{a}" for a in range(failed + 1)} | {f"{name}-inference-0"}
        if made != planned:
            run.duplicates.append(f"{name}: pods {sorted(made)}, planned {sorted(planned)}")
    run.duplicates += [f"{pod} made {len(uids)} times" for pod, uids in recorder.pod_uids.items() if len(uids) > 1]
    present: dict[str, list[str]] = {}
    for kind in CHILD_KINDS.split(","):
        listed = {
            "pods": core.list_namespaced_pod, "services": core.list_namespaced_service,
            "configmaps": core.list_namespaced_config_map,
            "persistentvolumeclaims": core.list_namespaced_persistent_volume_claim,
        }[kind](ns, _preload_content=False)  # fmt: skip
        for item in _json(listed)["items"]:
            meta = item["metadata"]
            if meta["name"] == "kube-root-ca.crt":
                continue
            owners = [o.get("name") for o in meta.get("ownerReferences") or [] if o.get("kind") == "GRPOJob"]
            if len(owners) != 1 or owners[0] not in statuses:
                run.orphans.append(f"{item.get('kind', kind)}/{meta['name']} owned by {owners}")
            present.setdefault(kind, []).append(meta["name"])
    for name, failed in run.failures.items():
        pods = sorted(p for p in present.get("pods", []) if p.startswith(f"{name}-"))
        if pods != [f"{name}-trainer-{failed}"]:  # the last attempt's pod, exited; failed ones and vLLM gone
            run.leftovers.append(f"{name}: pods {pods} after it finished")
    run.regressions = recorder.regressions()
    run.record_errors = list(recorder.errors)


# --------------------------------------------------------------------------- hostile /progress


@dataclass
class HostileRun:
    healthy: list[str]
    hostile: dict[str, str]  # job -> its reply (support.fake_trainer.REPLIES)
    reconcile_seconds: list[float] = field(default_factory=list)  # spec change -> observedGeneration
    progress_seconds: list[float] = field(default_factory=list)  # trainer's new step -> status.step
    healthz: list[int] = field(default_factory=list)  # /healthz status codes sampled meanwhile
    hostile_polls: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        def stats(values: list[float]) -> str:
            ordered = sorted(values)
            p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
            return f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s (n={len(ordered)})"

        kinds = ", ".join(sorted(set(self.hostile.values())))
        served = sum(self.hostile_polls.values())
        return (
            f"{len(self.healthy)} healthy jobs beside {len(self.hostile)} hostile ones ({kinds}; {served} hostile "
            f"replies served): spec change reconciled {stats(self.reconcile_seconds)}; new step in status "
            f"{stats(self.progress_seconds)}; /healthz {sorted(set(self.healthz))}"
        )


def hostile_run(
    cp: ControlPlane, operator: OperatorProcess, trainers: FakeTrainers, ns: str, healthy: list[str],
    hostile: dict[str, str], rounds: int, timeout: float = 60,
) -> HostileRun:  # fmt: skip
    """With every job Training and ``hostile`` jobs' trainers answering as told, ``rounds`` times for each
    healthy job: change its spec and time the reconcile (status.observedGeneration), then give its trainer a
    new step and time the status showing it."""
    api = api_client(cp)
    custom = client.CustomObjectsApi(api)
    run = HostileRun(list(healthy), dict(hostile))

    def status_of(name: str) -> Job:
        return _json(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _preload_content=False))

    def timed(name: str, done: Callable[[Job], bool], started: float) -> float:
        while time.monotonic() - started < timeout:
            if done(status_of(name)):
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"{name}: not reconciled within {timeout:.0f} s")

    for name, reply in hostile.items():
        trainers.set(name, reply, step=1, max_steps=STEPS)
    waited = time.monotonic()
    while any(trainers.requests[name] == 0 for name in hostile):  # every hostile trainer is being polled
        if time.monotonic() - waited > timeout:
            raise TimeoutError(f"hostile trainers never polled: {dict(trainers.requests)}")
        time.sleep(0.2)
    for r in range(rounds):
        for name in healthy:
            body = {"spec": {"runPolicy": {"backoffLimit": 4 + r}}}
            started = time.monotonic()
            patched = _json(custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body,
                                                                  _preload_content=False))  # fmt: skip
            generation = patched["metadata"]["generation"]
            observed = lambda j: (j.get("status") or {}).get("observedGeneration", 0) >= generation  # noqa: E731
            run.reconcile_seconds.append(timed(name, observed, started))
            trainers.set(name, step=10 + r, max_steps=STEPS)
            shown = lambda j, s=10 + r: (j.get("status") or {}).get("step") == s  # noqa: E731
            run.progress_seconds.append(timed(name, shown, time.monotonic()))
            run.healthz.append(operator.healthz()[0])
    run.hostile_polls = {name: trainers.requests[name] for name in hostile}
    return run


def node_pool(cp: ControlPlane, prefix: str, nodes: int, gpus: int) -> dict[str, str]:
    """Fake GPU nodes of the run's own (label ``grpo.test/pool``); the selector that keeps pods on them."""
    pool = {"grpo.test/pool": prefix}
    cp.add_gpu_nodes([f"{prefix}-{i}" for i in range(nodes)], gpus=gpus, cpu="2000", memory="64Ti", labels=pool)
    return pool


def drop_node_pool(cp: ControlPlane, ns: str, pool: Mapping[str, str]) -> None:
    """The run's pods, then its nodes (a pod on a deleted node lingers until the pod GC gets to it)."""
    cp.kubectl("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--wait=true", "--timeout=60s", check=False)
    (value,) = pool.values()
    cp.kubectl("delete", "nodes", "-l", f"grpo.test/pool={value}", "--ignore-not-found", check=False)

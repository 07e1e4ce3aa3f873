"""One reconcile of one GRPOJob: observe the cluster, :func:`lifecycle.decide`, carry out the plan.

The API calls are :class:`grpo_operator.controller.kube.Cluster`'s. Creation is
idempotent (names are deterministic, AlreadyExists is success), and a refused
creation (quota, Pod Security, RBAC) becomes a condition and a Warning event
rather than a crash loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, Optional

from kubernetes.client.exceptions import ApiException

from grpo_operator import children
from grpo_operator.api.job import InvalidJob, parse_spec
from grpo_operator.children import TRAINER
from grpo_operator.controller.conditions import Cond, PodView, conditions, is_true, now_utc, pod_view, transitions
from grpo_operator.controller.kube import RETAINED_ANNOTATION, Cluster, Conflict, api_message
from grpo_operator.controller.lifecycle import Event, Observed, Plan, decide, trainer_attempt
from grpo_operator.controller.memo import FoundMemo
from grpo_operator.controller.pooling import pool_name
from grpo_operator.controller.progress_poll import progress_status, progress_url
from grpo_operator.controller.progress_pool import ProgressPoller
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


# Kopf's index of the operator's pods: (namespace, job) → (owner uids, view) for each pod.
PodIndex = Mapping[tuple[str, str], Iterable[tuple[tuple[str, ...], PodView]]]


def indexed_pod(pod: Mapping[str, Any]) -> tuple[tuple[str, ...], PodView]:
    """What the pod index keeps of a pod: its owners and its view, not the whole body."""
    owners = tuple(o.get("uid", "") for o in pod.get("metadata", {}).get("ownerReferences") or [])
    return owners, pod_view(pod)


# A Secret seen with the keys a job needs is not read again for this long: the
# jobs of a namespace usually share one, and re-reading it for each job's every
# reconcile was a large part of the API traffic at a few hundred jobs. A missing
# Secret or key is never remembered, so a job waiting for one starts at once.
SECRET_MEMO_SECONDS = 5.0
# The same for the job's own volume, ConfigMap and Service and the user claims it
# mounts (see memo.py): a child deleted by hand is recreated within this time.
FOUND_MEMO_SECONDS = 60.0
# Threads for the API calls reconciles issue concurrently (shared by all jobs), per
# reconcile worker: each reconcile issues up to five reads at once.
IO_THREADS_PER_WORKER = 2
# A namespace where reading a Secret was refused (403) is not tried again for this long.
SECRETS_FORBIDDEN_SECONDS = 300.0
# Reconciles of one job in a row whose status write met a newer version of the job (409):
# each re-reads and re-decides; past this the resync tries again later.
CONFLICT_ATTEMPTS = 3


class Reconciler:
    """Reconciles jobs, each under its own lock.

    The work queue (workqueue.py) already runs one reconcile per job at a time and
    folds a burst of events into one; the lock keeps :meth:`forget` (the delete
    handler, another thread) from interleaving with a reconcile still in flight.
    """

    def __init__(self, cluster: Cluster, settings: OperatorSettings, metrics: OperatorMetrics) -> None:
        self.cluster = cluster
        self.settings = settings
        self.metrics = metrics
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_lock = threading.Lock()  # guards _locks and _started
        self._started: dict[tuple[str, str], float] = {}  # monotonic start of each job's last reconcile
        self._secrets: FoundMemo[tuple[str, str], set[str]] = FoundMemo(SECRET_MEMO_SECONDS)
        # (kind, namespace, name, owner uid or None for a user's claim) → True, or a ConfigMap's data
        self._found: FoundMemo[tuple[str, str, str], Any] = FoundMemo(FOUND_MEMO_SECONDS)
        self.progress: ProgressPoller[tuple[str, str]] = ProgressPoller(
            settings.progress_workers, settings.progress_poll_seconds, settings.progress_timeout_seconds
        )
        self._secrets_forbidden: dict[str, float] = {}  # namespace -> when a Secret read there was refused
        self._pod_index: Optional[PodIndex] = None
        # API calls one reconcile makes at the same time (its reads; its events)
        self._io = ThreadPoolExecutor(
            max_workers=IO_THREADS_PER_WORKER * settings.reconcile_workers, thread_name_prefix="grpo-io"
        )

    def _lock(self, key: tuple[str, str]) -> threading.RLock:
        # reentrant: a reconcile that deletes its job (TTL) forgets it while holding the lock
        with self._locks_lock:
            return self._locks.setdefault(key, threading.RLock())

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: drop its metrics and memory.

        Under the job's lock: a reconcile still in flight (begun before the deletion)
        would otherwise write the metrics back after they were dropped.
        """
        key = (namespace, name)
        with self._lock(key):
            self.metrics.forget(namespace, name)
            self.progress.forget(key)
            with self._locks_lock:
                self._locks.pop(key, None)
                self._started.pop(key, None)

    def reconciled_within(self, key: tuple[str, str], seconds: float) -> bool:
        """Whether a reconcile of this job started less than ``seconds`` ago (the resync skips it then)."""
        with self._locks_lock:
            started = self._started.get(key)
        return started is not None and time.monotonic() - started < seconds

    def reconcile_named(self, namespace: str, name: str) -> Optional[Plan]:
        """Reconcile a job; None when it is gone or being deleted (garbage collection does the rest).

        The status is written only over the version of the job that was read (its
        resourceVersion): when the job changed meanwhile (another operator's write, as in
        the overlap of an eviction, or a user's edit), the write is refused with 409, and
        the job is read again and decided afresh before anything else is done, so no
        stale decision moves an attempt counter or a condition back.
        """
        key = (namespace, name)
        with self._lock(key):
            with self._locks_lock:
                self._started[key] = time.monotonic()
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                # Read under the lock: a handler's body may predate our own last status
                # patch, and acting on a stale attempt counter would restart twice.
                fresh = self.cluster.get_job(*key)
                if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                    return None
                started = time.monotonic()
                self.metrics.reconciles.labels(*key).inc()
                try:
                    return self._reconcile(fresh)
                except Conflict:
                    self.metrics.conflicts.inc()
                    log.info("%s/%s changed since it was read; reading it again (%d/%d)", namespace, name, attempt,
                             CONFLICT_ATTEMPTS)  # fmt: skip
                    if attempt == CONFLICT_ATTEMPTS:
                        self.metrics.errors.labels(*key).inc()
                        raise
                except Exception:
                    self.metrics.errors.labels(*key).inc()
                    raise  # the caller (a Kopf handler or the resync) logs it and retries
                finally:
                    self.metrics.latency.observe(time.monotonic() - started)
        return None

    # ------------------------------------------------------------------ observe

    def _missing(self, job: children.Job) -> tuple[list[str], str]:
        """Referenced objects that do not exist, each named with what to do; and why the job's Secret
        references went unchecked ('' when they were checked, or there are none)."""
        missing: list[str] = []
        ns = job.namespace
        secrets = children.referenced_secrets(job) if self.settings.check_secrets else []
        unchecked = self._secrets_unchecked(ns) if secrets else ""
        for secret, key in [] if unchecked else secrets:
            try:
                keys = self._secret_keys(ns, secret, key)
            except PermissionError:
                log.warning("no RBAC permission to get Secrets in namespace %s; Secret references there are not "
                            "checked", ns, extra={"namespace": ns})  # fmt: skip
                with self._locks_lock:
                    self._secrets_forbidden[ns] = time.monotonic()
                unchecked = self._secrets_unchecked(ns)
                break
            if keys is None:
                missing.append(f"Secret {secret!r} not found in namespace {ns!r} (needed for key {key!r})")
            elif key not in keys:
                missing.append(f"Secret {secret!r} has no key {key!r}")
        for claim in children.user_claims(job):
            if not self._claim_exists(ns, claim):
                missing.append(f"PersistentVolumeClaim {claim!r} not found in namespace {ns!r}")
        for config_map, use in children.user_config_maps(job):
            if not self._user_object_exists("ConfigMap", ns, config_map):
                missing.append(f"ConfigMap {config_map!r} ({use}) not found in namespace {ns!r}")
        return missing, unchecked

    def _secrets_unchecked(self, namespace: str) -> str:
        """Why Secrets are not checked in this namespace, for the job's Created condition ('' if they are)."""
        after = "a missing Secret or key shows as the pod's CreateContainerConfigError"
        if self.settings.secret_namespaces and namespace not in self.settings.secret_namespaces:
            return (f"Secret references not checked: the operator reads Secrets only in the namespaces of "
                    f"rbac.secretNamespaces; {after}")  # fmt: skip
        with self._locks_lock:
            refused = self._secrets_forbidden.get(namespace)
        if refused is not None and time.monotonic() - refused < SECRETS_FORBIDDEN_SECONDS:
            return (f"Secret references not checked: the operator may not get Secrets in namespace {namespace!r}; "
                    f"{after}")  # fmt: skip
        return ""

    def _claim_exists(self, namespace: str, name: str) -> bool:
        """Whether a user's PersistentVolumeClaim exists (remembered once seen)."""
        return self._user_object_exists("PersistentVolumeClaim", namespace, name)

    def _user_object_exists(self, kind: str, namespace: str, name: str) -> bool:
        """Whether an object the job reads but does not own exists (remembered once seen)."""
        read = partial(self.cluster.read, kind, namespace, name)
        return self._found.get((kind, namespace, name, None), read) is not None

    def _child(self, kind: str, job: children.Job, name: str) -> Optional[Any]:
        """The job's own child (a ConfigMap's data, else True), remembered once found.

        None when it is missing, being deleted, or another job's: after a delete and
        re-apply under the same name, the old job's children are still there until
        the garbage collector gets to them, and must not stand in for the new ones.
        """

        def read() -> Optional[Any]:
            obj = self.cluster.read(kind, job.namespace, name)
            meta = (obj or {}).get("metadata") or {}
            owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
            if obj is None or meta.get("deletionTimestamp") or job.uid not in owners:
                return None
            return dict(obj.get("data") or {}) if kind == "ConfigMap" else True

        return self._found.get((kind, job.namespace, name, job.uid), read)

    def _retained(self, job: children.Job) -> bool:
        """The job's claim name holds the volume an earlier job of the same name kept
        (storage.retainOnDelete: released by the operator, and marked so)."""
        obj = self.cluster.read("PersistentVolumeClaim", job.namespace, children.pvc_name(job))
        meta = (obj or {}).get("metadata") or {}
        marked = RETAINED_ANNOTATION in (meta.get("annotations") or {})
        return marked and not meta.get("ownerReferences") and not meta.get("deletionTimestamp")

    def use_pod_index(self, index: PodIndex) -> None:
        """Read pods from Kopf's index from now on (call once Kopf has filled it: from any handler)."""
        self._pod_index = index

    def _pods(self, namespace: str, name: str, uid: str) -> tuple[PodView, ...]:
        """The job's pods (all attempts, only those this very job owns): from the index, else listed.

        Listing them for every reconcile made the API server scan the namespace's
        pods each time, which grew with the square of the number of jobs.
        """
        index = self._pod_index
        if index is None:
            return tuple(pod_view(p) for p in self.cluster.job_pods(namespace, name, uid))
        for _ in range(5):  # Kopf updates the index in its event loop while we read it here
            try:
                entries = list(index.get((namespace, name), ()))
                break
            except RuntimeError:
                continue
        else:
            return tuple(pod_view(p) for p in self.cluster.job_pods(namespace, name, uid))
        return tuple(view for owners, view in entries if uid in owners)

    def _secret_keys(self, namespace: str, secret: str, key: str) -> Optional[set[str]]:
        """The Secret's keys, remembered for SECRET_MEMO_SECONDS once they include ``key``."""
        return self._secrets.get(
            (namespace, secret), lambda: self.cluster.secret_keys(namespace, secret), usable=lambda keys: key in keys
        )

    def _poll_progress(
        self, key: tuple[str, str], pods: list[Any], trainer_pod: Optional[str]
    ) -> Optional[dict[str, Any]]:
        """The trainer's last known progress; a poll of a running trainer is left to the progress pool."""
        pod = next((p for p in pods if p.name == trainer_pod and p.component == TRAINER), None)
        final = pod.final_report if pod is not None and pod.finished else None
        if final is not None:  # exact, where the last poll may have missed the end
            fields = progress_status(final, now_utc())
            self.progress.set_final(key, fields)
            return fields or None
        url = progress_url(pod.ip, self.settings.trainer_port) if pod is not None and pod.running and pod.ip else None
        return self.progress.latest(key, url) or None

    def observe(self, body: Mapping[str, Any], now: Optional[datetime] = None) -> Observed:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        status = dict(body.get("status") or {})
        try:
            spec = parse_spec(dict(body.get("spec") or {}))
            error = None
        except InvalidJob as exc:
            spec, error = None, "; ".join(exc.problems)
        # The reads are independent: issued together, a reconcile waits for one round trip, not five.
        listed = self._io.submit(self._pods, ns, name, uid)
        if spec is None:
            pods = listed.result()
            return Observed(name, ns, uid, meta.get("generation"), None, error, status, False, None, False, pods,
                            now=now or now_utc())  # fmt: skip
        job = children.Job(name, ns, uid, spec)
        # A finished job needs only its pods (the vLLM pod to free or keep serving) and, to release it,
        # a kept volume: at a thousand finished jobs, re-reading the rest every resync is the load.
        finished = is_true(status, "Succeeded") or is_true(status, "Failed")
        # A job on a pool has no volume or Service of its own: its run is in the pool's volume (a volume an earlier
        # job of its name kept is no concern of it), its server the pool's.
        on_pool = spec.inference.pool is not None
        own_pvc = not on_pool and children.persistent_volume_claim(job) is not None  # else the user's (_missing)
        read_pvc = own_pvc and (not finished or spec.storage.retain_on_delete)
        pvc = self._io.submit(self._child, "PersistentVolumeClaim", job, children.pvc_name(job)) if read_pvc else None
        config = None if finished else self._io.submit(self._child, "ConfigMap", job, children.config_map_name(job))
        own_service = not finished and not on_pool
        service = self._io.submit(self._child, "Service", job, children.service_name(job)) if own_service else None
        references = None if finished else self._io.submit(self._missing, job)
        policies = {
            name: self._io.submit(self._child, "NetworkPolicy", job, name) for name in self._policy_names(job, status)
        }
        pool = self._io.submit(self._pool, ns, spec) if spec.inference.pool is not None else None
        missing, unchecked = references.result() if references is not None else ([], "")
        pods = listed.result()
        trainer_pod = status.get("trainerPod") or children.trainer_pod_name(job, trainer_attempt(status))
        return Observed(
            name=name,
            namespace=ns,
            uid=uid,
            generation=meta.get("generation"),
            spec=spec,
            spec_error=None,
            status=status,
            pvc_exists=pvc is not None and pvc.result() is not None,
            retained_claim=not finished and pvc is not None and pvc.result() is None and self._retained(job),
            config_map_data=config.result() if config is not None else None,
            service_exists=service is not None and service.result() is not None,
            pods=pods,
            missing=tuple(missing),
            secrets_unchecked=unchecked,
            progress=self._poll_progress((ns, name), list(pods), trainer_pod),
            key_secret_exists=self._found.get(self._key_memo(job), lambda: None) is not None,  # never read
            network_policies_found=frozenset(name for name, found in policies.items() if found.result() is not None),
            pool=pool.result() if pool is not None else None,
            now=now or now_utc(),
        )

    def _pool(self, namespace: str, spec: Any) -> Optional[dict[str, Any]]:
        """The pool a job names, if it is in the job's namespace (one of another is refused unread)."""
        pool_ns, name = pool_name(spec.inference.pool, namespace)
        return self.cluster.get_pool(namespace, name) if pool_ns == namespace else None

    def _policy_names(self, job: children.Job, status: Mapping[str, Any]) -> list[str]:
        """The job's NetworkPolicies to look for: a training job's, or a serving one's (none after that)."""
        if is_true(status, "Failed") or (is_true(status, "Succeeded") and not job.spec.serve.enabled):
            return []
        if is_true(status, "Succeeded") and job.spec.inference.pool is not None:
            return []  # its pool serves the result, and admits the namespace (the pool's own policy)
        if is_true(status, "Succeeded"):
            policy = children.serve_network_policy(job, self.settings)
            return [policy["metadata"]["name"]] if policy is not None else []
        return [p["metadata"]["name"] for p in children.network_policies(job, self.settings)]

    @staticmethod
    def _key_memo(job: children.Job) -> tuple[str, str, str, str]:
        return ("Secret", job.namespace, children.api_key_secret_name(job), job.uid)

    # ------------------------------------------------------------------ act

    def _reconcile(self, body: Mapping[str, Any]) -> Plan:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        obs = self.observe(body)
        plan = decide(obs, self.settings)
        old_status = dict(body.get("status") or {})
        version = meta.get("resourceVersion")
        if plan.status != old_status:
            # only over what was read: raises Conflict (nothing carried out) when the job changed since
            version = self.cluster.patch_status(ns, name, plan.status, version)
        for pod in plan.delete_pods:
            self.cluster.delete_pod(ns, pod)
        for claim in plan.release_claims:
            self.cluster.release_claim(ns, claim, obs.uid)
            self._found.forget(("PersistentVolumeClaim", ns, claim, obs.uid))
        for manifest in plan.replace:
            self.cluster.replace_config_map(manifest)
            self._found.forget(("ConfigMap", ns, manifest["metadata"]["name"], obs.uid))
        failures: list[str] = []
        created: list[str] = []
        blocked = False
        for manifest in plan.create:  # in order, one at a time: the pods' volume, config, key, policies first
            kind, what = manifest["kind"], f"{manifest['kind']} {manifest['metadata']['name']}"
            if blocked and kind == "Pod":
                continue  # no pod without what it needs, nor beside an object that is not this job's
            try:
                if self.cluster.create(manifest):
                    created.append(what)
                elif kind != "Secret" and (conflict := self._conflict(manifest, obs.uid)):
                    failures.append(f"{what}: {conflict}")
                    blocked = True
                    continue
                if kind == "Secret":  # named by the job's uid: one that exists is this job's (never read back)
                    self._found.remember(self._key_memo(obs.job), True)
            except ApiException as exc:
                failures.append(f"{what}: {api_message(exc)}")
                blocked = blocked or kind != "Pod"
        if failures:
            self._record_create_failure(ns, name, plan, failures, old_status.get("conditions") or [], version)
        for t in plan.transitions:
            plan.events.append(Event("Warning" if t.warning else "Normal", t.reason, t.event_message()))
        if created:
            plan.events.append(Event("Normal", "Created", "created " + ", ".join(created)))
        for posted in [self._io.submit(self.cluster.post_event, body, event) for event in plan.events]:
            posted.result()
        self.metrics.cache.update(ns, name, plan.status, _info(obs))
        if plan.delete_job:
            log.info("deleting %s/%s: ttlSecondsAfterFinished has passed", ns, name)
            self.cluster.delete_job(ns, name)
            self.forget(ns, name)
        return plan

    def _conflict(self, manifest: Mapping[str, Any], uid: str) -> Optional[str]:
        """Why an object that already exists under a child's name is not this job's (None: it is)."""
        meta = manifest["metadata"]
        obj = self.cluster.read(manifest["kind"], meta["namespace"], meta["name"])
        if obj is None:
            return None  # gone meanwhile: the next reconcile creates it
        theirs = obj.get("metadata") or {}
        owners = {o.get("uid") for o in theirs.get("ownerReferences") or []}
        if uid in owners:
            return None
        if theirs.get("deletionTimestamp"):
            return "an object of that name (an earlier job's) is still being deleted; waiting for it to go"
        if owners:
            listed = ", ".join(sorted(map(str, owners)))
            return f"exists and belongs to another owner ({listed}); delete it, or rename the job"
        return (
            "exists and belongs to no job (left by kubectl delete --cascade=orphan, or made by hand); "
            "delete it, or rename the job"
        )

    def _record_create_failure(
        self,
        ns: str,
        name: str,
        plan: Plan,
        failures: list[str],
        old_conditions: list[Mapping[str, Any]],
        version: Optional[str],
    ) -> None:
        """A refused creation (Pod Security, quota, RBAC) is reported as Created=False/CreateFailed."""
        message = "could not create " + "; ".join(failures)
        log.warning("%s/%s: %s", ns, name, message)
        # computed against the stored conditions, so lastTransitionTime moves only on a real change
        failed = conditions(old_conditions, {"Created": Cond.false("CreateFailed", message)}, now_utc(),
                            plan.status.get("observedGeneration"))  # fmt: skip
        created = next(c for c in failed if c["type"] == "Created")
        plan.status["conditions"] = [created if c["type"] == "Created" else c for c in plan.status["conditions"]]
        plan.transitions = transitions(old_conditions, plan.status["conditions"])
        self.cluster.patch_status(ns, name, plan.status, version)


def _info(obs: Observed) -> dict[str, str]:
    if obs.spec is None:
        return {}
    spec = obs.spec
    return {
        "program": spec.program.builtin or spec.program.import_path or "",
        "model": spec.model.name or spec.model.path or "",
        "queue": spec.queue_name or "",
        "training_gpus": str(spec.train_kwargs.num_training_gpus),
        "inference_gpus": str(spec.train_kwargs.num_inference_gpus),
    }

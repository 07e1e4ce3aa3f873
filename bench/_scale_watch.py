"""Timestamps of what happens in one namespace, taken from watches (no polling).

One thread per kind streams watch events as plain dicts (deserialising into the
client's models would cost the benchmark process more CPU than the controllers
it measures). Each object gets the monotonic time it was first seen and the
first time each of its kind's *marks* held (a pod's ``scheduled``, a job's
``running``...), plus its owner, so a job's children can be found.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch

Obj = Mapping[str, Any]
Mark = Callable[[Obj], bool]

GRPO_GROUP, GRPO_VERSION, GRPO_PLURAL = "grpo.dev", "v1alpha1", "grpojobs"
# Names the Job of an object created beside it, not by its controller (a hand-written job's PVC).
JOB_LABEL = "bench.grpo.dev/job"


def _true(obj: Obj, ctype: str) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conditions)


# What "running" means for each job kind: for a GRPOJob, the conditions that
# operator/grpo_operator/controller/lifecycle.py sets once the trainer pod runs and the vLLM pod is ready.
MARKS: dict[str, dict[str, Mark]] = {
    "GRPOJob": {"running": lambda o: _true(o, "Training") and _true(o, "InferenceReady")},
    "Job": {"running": lambda o: (o.get("status", {}).get("ready") or 0) >= (o["spec"].get("parallelism") or 1)},
    "Pod": {
        "scheduled": lambda o: bool(o["spec"].get("nodeName")),
        "running": lambda o: o.get("status", {}).get("phase") == "Running",
    },
    "PersistentVolumeClaim": {"bound": lambda o: o.get("status", {}).get("phase") == "Bound"},
    "ConfigMap": {},
    "Service": {},
}


@dataclass
class Seen:
    """One object: when it appeared, when each mark first held, who owns it."""

    added: float
    owner: tuple[str, str] | None  # (kind, name) of its controller
    marks: dict[str, float] = field(default_factory=dict)


class NamespaceRecorder:
    """Watch the kinds of ``MARKS`` in one namespace from now on; ``seen[kind][name]`` grows as events arrive."""

    def __init__(self, api: client.ApiClient, namespace: str, timeout_seconds: int = 3600) -> None:
        self.namespace = namespace
        self.timeout_seconds = timeout_seconds
        self.seen: dict[str, dict[str, Seen]] = {kind: {} for kind in MARKS}
        self._lock = threading.Lock()
        self._watches: dict[str, watch.Watch] = {}
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self.errors: list[str] = []  # watches that ended early: the numbers would be incomplete
        self.relists: list[str] = []  # watches that could not resume: marks noted late
        core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
        self._lists: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
            "GRPOJob": (custom.list_namespaced_custom_object, (GRPO_GROUP, GRPO_VERSION, namespace, GRPO_PLURAL)),
            "Job": (batch.list_namespaced_job, (namespace,)),
            "Pod": (core.list_namespaced_pod, (namespace,)),
            "PersistentVolumeClaim": (core.list_namespaced_persistent_volume_claim, (namespace,)),
            "ConfigMap": (core.list_namespaced_config_map, (namespace,)),
            "Service": (core.list_namespaced_service, (namespace,)),
        }

    def start(self) -> NamespaceRecorder:
        """Start every watch from the namespace's current resourceVersion (so nothing created after is missed)."""
        for kind in self._lists:
            rv = self._list(kind)
            t = threading.Thread(target=self._run, args=(kind, rv), name=f"watch {kind}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        """Ask the watches to end (each ends at its next event or bookmark; the threads are daemons)."""
        self._stopped = True
        for w in list(self._watches.values()):
            w.stop()

    def _list(self, kind: str) -> str:
        """List ``kind`` (noting what is there now) and return the list's resourceVersion."""
        func, args = self._lists[kind]
        listed = _json(func(*args, _preload_content=False))
        for obj in listed["items"]:
            self._note(kind, obj)
        return listed["metadata"]["resourceVersion"]

    def _run(self, kind: str, rv: str) -> None:
        """Watch from ``rv``, resuming where the last event left off when the API server ends the stream.

        The server closes watches at their timeout and drops a watcher that reads too
        slowly; resuming from the last resourceVersion loses nothing. Only when that
        version is too old (or the stream broke) is the kind listed again, which is
        counted in ``relists``: the marks noted by a list are late by the gap.
        """
        func, args = self._lists[kind]
        while not self._stopped:
            w = self._watches[kind] = watch.Watch()
            try:
                for event in w.stream(func, *args, resource_version=rv, allow_watch_bookmarks=True,
                                      deserialize=False, timeout_seconds=300):  # fmt: skip
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":  # 410 Gone: the version is too old
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._note(kind, obj)
            except Exception as exc:  # noqa: BLE001 - the stream broke: catch up from a fresh list
                if self._stopped:
                    return
                self.relists.append(f"{kind}: {exc}")
                try:
                    rv = self._list(kind)
                except Exception as list_exc:  # noqa: BLE001 - the control plane is gone: reported
                    if not self._stopped:
                        self.errors.append(f"watch of {kind} ended: {list_exc}")
                    return

    def _note(self, kind: str, obj: Obj) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        with self._lock:
            seen = self.seen[kind].get(name)
            if seen is None:
                seen = self.seen[kind][name] = Seen(now, _owner(obj))
            for mark, holds in MARKS[kind].items():
                if mark not in seen.marks and holds(obj):
                    seen.marks[mark] = now

    def count(self, kind: str, mark: str | None = None) -> int:
        """How many objects of ``kind`` were seen (with ``mark`` reached, when given)."""
        with self._lock:
            return sum(1 for s in self.seen[kind].values() if mark is None or mark in s.marks)

    def children(self, owner_kind: str) -> dict[str, list[tuple[str, Seen]]]:
        """Owner name → its children as (kind, Seen), over every kind watched."""
        out: dict[str, list[tuple[str, Seen]]] = {}
        with self._lock:
            for kind, objs in self.seen.items():
                for s in objs.values():
                    if s.owner is not None and s.owner[0] == owner_kind:
                        out.setdefault(s.owner[1], []).append((kind, s))
        return out


def _owner(obj: Obj) -> tuple[str, str] | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref["kind"], ref["name"]
    job = (obj["metadata"].get("labels") or {}).get(JOB_LABEL)
    return ("Job", job) if job else None


def _json(resp: Any) -> dict[str, Any]:
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()

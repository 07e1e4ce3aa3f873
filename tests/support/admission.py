"""The generated admission corpus against a real API server: what it refuses, and whether what it
accepts becomes a job (a pool) the operator can run.

Each mutation (tests/support/mutations.py) is created with ``dryRun=All``: nothing is stored, so
thousands go through one namespace in seconds. A refusal must name the mutated field. An accepted
job must survive everything after admission: pydantic (``parse_job`` of the object the API server
returned, defaults filled in), the job's resolution and every child builder, and the API server
itself for every child they render (``dryRun=All`` creates in a namespace enforcing Pod Security
"restricted", so a Service name, a label value or a pod's security are checked by the real thing).
Identical children are sent once.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from grpo_operator.api import GROUP, PLURAL, VERSION, InvalidJob, parse_job
from grpo_operator.api.pool import KIND as POOL_KIND
from grpo_operator.api.pool import PLURAL as POOL_PLURAL
from grpo_operator.api.pool import parse_pool
from grpo_operator.children import (
    Job,
    Pool,
    binding,
    config_map,
    inference_pod,
    inference_service,
    persistent_volume_claim,
    pool_children,
    pool_pod,
    referenced_secrets,
    result_endpoint,
    trainer_pod,
    user_claims,
    user_config_maps,
)
from grpo_operator.settings import OperatorSettings
from support.jobdocs import load_example
from support.mutations import Generated, Mutation, valid

VERDICTS = ("rejected-naming-the-field", "accepted-and-survived", "accepted-then-failing", "rejected-not-naming-it")
# A carrier pydantic accepts that the API server refuses: the CRD is stricter than the models.
VALID_REFUSED = "valid-but-refused"
PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
}
UID = "00000000-0000-4000-8000-000000000000"  # the owner of every child: identical children are sent once


class Session(Protocol):
    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]: ...


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    verdict: str
    detail: str = ""
    pydantic_agrees: bool = True  # a refused mutation that pydantic accepts is counted, not failed

    def line(self) -> str:
        return f"{self.mutation.label}: {self.verdict}: {self.detail[:400]}"


@dataclass
class Judge:
    """Sends mutations and children to the API server in ``namespace`` and judges each."""

    session: Session
    namespace: str
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    workers: int = 8
    _children: dict[str, Future[Optional[str]]] = field(default_factory=dict)
    _priority_classes: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: Optional[ThreadPoolExecutor] = None

    def run(self, mutations: Iterable[Mutation]) -> list[Outcome]:
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(self.workers) as children:
            self._pool = children
            try:
                return list(pool.map(self.judge, mutations))
            finally:
                self._pool = None

    def judge(self, mutation: Mutation) -> Outcome:
        validation = "Strict" if mutation.strict else "Ignore"
        plural = POOL_PLURAL if mutation.doc.get("kind") == POOL_KIND else PLURAL
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{plural}?dryRun=All&fieldValidation={validation}"
        status, body = self.session.request("POST", path, mutation.doc)
        if status >= 500 or status in (401, 403, 404, 409, 429):
            raise RuntimeError(f"{mutation.label}: the API server answered {status}: {body}")
        if status >= 400:
            text = _refusal(body)
            if mutation.kind == "valid":
                return Outcome(mutation, VALID_REFUSED, text)
            named = _names_field(body, mutation.names)
            verdict = VERDICTS[0] if named else VERDICTS[3]
            return Outcome(mutation, verdict, text, pydantic_agrees=not valid(mutation.doc))
        failure = self.survive(body)
        return Outcome(mutation, VERDICTS[2] if failure else VERDICTS[1], failure or "")

    def survive(self, stored: dict[str, Any]) -> Optional[str]:
        """Why the job (the pool) the API server accepted cannot run (None: it can)."""
        try:
            objects = self._pool_children(stored) if stored.get("kind") == POOL_KIND else self._job_children(stored)
        except InvalidJob as exc:  # InvalidPool is one
            return f"pydantic: {exc}"
        except Exception as exc:  # noqa: BLE001 -- any builder error is the finding
            return f"builders: {type(exc).__name__}: {exc}"
        futures = [self._child(obj) for obj in objects]
        errors = [e for e in (f.result() for f in futures) if e]
        return "; ".join(errors) or None

    def _job_children(self, stored: dict[str, Any]) -> list[dict[str, Any]]:
        job = Job(stored["metadata"]["name"], self.namespace, UID, parse_job(stored).spec)
        objects = [
            config_map(job, self.settings),
            inference_service(job, self.settings),
            trainer_pod(job, self.settings, 0),
            inference_pod(job, self.settings, 0),
            inference_pod(job, self.settings, 0, serve_result=True),
        ]
        pvc = persistent_volume_claim(job)
        objects += [pvc] if pvc is not None else []
        for reader in (referenced_secrets, user_claims, user_config_maps):
            reader(job)
        result_endpoint(job, self.settings, adapter=True)
        return objects

    def _pool_children(self, stored: dict[str, Any]) -> list[dict[str, Any]]:
        """The pool's children the API server can dry-run here (volume, ConfigMap, Service, server: its key
        Secret is of a fixed shape, its NetworkPolicy off by default), and the trainer of the example job on it."""
        pool = Pool(stored["metadata"]["name"], self.namespace, UID, parse_pool(stored).spec)
        objects = [m for m in pool_children(pool, self.settings, None) if m["kind"] in PLURALS]
        doc = load_example()
        doc["spec"]["inference"] = {"pool": pool.name}
        job = Job("papillon", self.namespace, UID, parse_job(doc).spec, pool=binding(pool.name, UID, pool.spec))
        return [*objects, pool_pod(pool, self.settings, 0), trainer_pod(job, self.settings, 0)]

    def _child(self, obj: dict[str, Any]) -> Future[Optional[str]]:
        key = json.dumps(obj, sort_keys=True)
        with self._lock:
            known = self._children.get(key)
            if known is None:
                assert self._pool is not None
                known = self._children[key] = self._pool.submit(self._create_child, obj)
        return known

    def _create_child(self, obj: dict[str, Any]) -> Optional[str]:
        name = obj["spec"].get("priorityClassName") if obj["kind"] == "Pod" else None
        if name:
            self._priority_class(name)
        path = f"/api/v1/namespaces/{self.namespace}/{PLURALS[obj['kind']]}?dryRun=All&fieldValidation=Strict"
        deadline = time.monotonic() + 10
        while True:
            status, body = self.session.request("POST", path, obj)
            if status < 300:
                return None
            # Priority admission reads PriorityClasses from its informer's cache, a moment behind their creation
            if not (name and "no PriorityClass" in _refusal(body) and time.monotonic() < deadline):
                return f"{obj['kind']} {obj['metadata']['name']}: {status} {_refusal(body)}"
            time.sleep(0.2)

    def _priority_class(self, name: str) -> None:
        """The PriorityClass a pod names exists (Priority admission refuses a pod otherwise): a test premise,
        like the Secrets a job references. A name no PriorityClass can have is left to fail the pod."""
        with self._lock:
            if name in self._priority_classes:
                return
            self._priority_classes.add(name)
        doc = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 0}
        self.session.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", doc)

    def clean_up(self) -> None:
        for name in sorted(self._priority_classes):
            self.session.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{urllib.parse.quote(name)}")

    @property
    def children_sent(self) -> int:
        return len(self._children)


def _refusal(body: Any) -> str:
    return str(body.get("message", body)) if isinstance(body, dict) else str(body)


def _names_field(body: Any, names: tuple[str, ...]) -> bool:
    """The refusal names the field: its path, or its name in a cause about its object (a rule of the object
    that contains it, e.g. "failure_score must exceed format_failure_score" at spec.grpo.failure_score)."""
    if not isinstance(body, dict):
        return False
    path = names[0]
    if path in _refusal(body):
        return True
    if len(names) < 2:
        return False
    parent = path[: -len(names[1])].rstrip(".")
    word = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(names[1])}(?![A-Za-z0-9_])")
    causes = (body.get("details") or {}).get("causes") or []
    return any(c.get("field", "").startswith(parent) and word.search(c.get("message", "")) for c in causes)


@dataclass(frozen=True)
class Counts:
    mutations: int
    verdicts: dict[str, int]
    valid_refused: int
    pydantic_lenient: int
    carried: int
    fields: int
    children: int
    seconds: float

    def table(self) -> str:
        rows = [("mutations", self.mutations), *((v, self.verdicts.get(v, 0)) for v in VERDICTS)]
        rows += [
            (VALID_REFUSED, self.valid_refused),
            ("refused by the API server, accepted by pydantic", self.pydantic_lenient),
            ("fields given a valid value (the others: refused keys)", f"{self.carried} of {self.fields}"),
            ("distinct children dry-run", self.children),
            ("wall time", f"{self.seconds:.1f} s"),
        ]
        return "\n".join(["| | count |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])


def count(outcomes: list[Outcome], corpus: Generated, children: int, seconds: float) -> Counts:
    verdicts = Counter(o.verdict for o in outcomes)
    return Counts(
        mutations=len(outcomes),
        verdicts={v: verdicts.get(v, 0) for v in VERDICTS},
        valid_refused=verdicts.get(VALID_REFUSED, 0),
        pydantic_lenient=sum(not o.pydantic_agrees for o in outcomes),
        carried=len(corpus.carried),
        fields=len(corpus.carried) + len(corpus.refused) + len(corpus.no_sample),
        children=children,
        seconds=seconds,
    )

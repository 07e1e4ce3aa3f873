"""The operator's Kubernetes API calls: the complete list, one method per verb the chart's ClusterRole grants.

Plain camelCase dicts in and out (the official client's models are skipped: see
:meth:`Cluster._call`). Creation reports "already exists" as False, deletion
tolerates 404: the reconciler above is idempotent on top of these.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, Optional

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from grpo_operator.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION
from grpo_operator.api.pool import PLURAL as POOL_PLURAL
from grpo_operator.children import JOB_LABEL, MANAGED_BY_LABEL, OPERATOR_NAME, POOL_LABEL
from grpo_operator.controller.conditions import now_utc, rfc3339
from grpo_operator.controller.lifecycle import Event

log = logging.getLogger(__name__)

# (connect, read) seconds of every API call: a connection dropped without a reset (an API server
# failing over behind a load balancer) fails the call, and the reconcile is retried, instead of
# holding a worker forever.
REQUEST_TIMEOUT = (5.0, 30.0)
# On a volume the operator kept for a finished job (storage.retainOnDelete): that job's uid.
RETAINED_ANNOTATION = "grpo.dev/retained-from"


class Conflict(Exception):
    """The object changed since the version a conditional write was based on (HTTP 409)."""


class Cluster:
    """The operator's API calls (official kubernetes client), returning plain camelCase dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a client method and return its response as plain JSON.

        The client's models are skipped: building them and converting them back to
        dicts cost more CPU than the rest of a reconcile at a few hundred jobs.
        """
        resp = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def get_job(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        return self._get_custom(PLURAL, namespace, name)

    def get_pool(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """A GRPOInferencePool, or None when there is none."""
        return self._get_custom(POOL_PLURAL, namespace, name)

    def _get_custom(self, plural: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(self, namespace: str) -> list[dict[str, Any]]:
        """The GRPOJobs of a namespace (a pool's reconcile: the jobs that name it)."""
        listed = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        return list(listed.get("items") or [])

    def pool_pods(self, namespace: str, pool: str, uid: str) -> list[dict[str, Any]]:
        """The pool's server pods, only those this very pool owns."""
        selector = f"{POOL_LABEL}={pool},{MANAGED_BY_LABEL}={OPERATOR_NAME}"
        pods = self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)["items"]
        return [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]

    def read(self, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """A Pod, PersistentVolumeClaim, ConfigMap, Service or NetworkPolicy, or None when there is none.
        (Never a Secret: the job's key is created and never read back.)"""
        read = {
            "Pod": self.core.read_namespaced_pod,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "ConfigMap": self.core.read_namespaced_config_map,
            "Service": self.core.read_namespaced_service,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
        }[kind]
        try:
            return self._call(read, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def job_pods(self, namespace: str, job: str, uid: str) -> list[dict[str, Any]]:
        """The job's pods (all attempts), only those this very job owns."""
        selector = f"{JOB_LABEL}={job},{MANAGED_BY_LABEL}={OPERATOR_NAME}"
        pods = self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)["items"]
        return [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]

    def secret_keys(self, namespace: str, name: str) -> Optional[set[str]]:
        """Keys of a Secret, or None when it does not exist. Raises PermissionError without RBAC get."""
        try:
            secret = self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise PermissionError(exc.reason) from None
            raise
        return set(secret.get("data") or {}) | set(secret.get("stringData") or {})

    def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create a child; False when it already exists (an earlier reconcile made it)."""
        kind, ns = manifest["kind"], manifest["metadata"]["namespace"]
        create = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "Secret": self.core.create_namespaced_secret,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }[kind]
        try:
            self._call(create, ns, manifest)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def release_claim(self, namespace: str, name: str, owner_uid: str) -> None:
        """Drop the owner reference to ``owner_uid`` from a claim, so deleting that owner keeps it.

        A JSON patch that first tests the claim's uid: a claim deleted and recreated meanwhile
        under the same name is left alone.
        """
        claim = self.read("PersistentVolumeClaim", namespace, name)
        if claim is None:
            return
        meta = claim["metadata"]
        owners = meta.get("ownerReferences") or []
        kept = [o for o in owners if o.get("uid") != owner_uid]
        if len(kept) == len(owners):
            return
        mark = (
            {"op": "add", "path": f"/metadata/annotations/{RETAINED_ANNOTATION.replace('/', '~1')}", "value": owner_uid}
            if meta.get("annotations")
            else {"op": "add", "path": "/metadata/annotations", "value": {RETAINED_ANNOTATION: owner_uid}}
        )
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
            {"op": "replace", "path": "/metadata/ownerReferences", "value": kept},
            mark,  # kept on purpose, not orphaned: what a later job of the name is told about
        ]
        self._call(self.core.patch_namespaced_persistent_volume_claim, name, namespace, patch)
        log.info("kept volume %s/%s: no longer owned by its job (storage.retainOnDelete)", namespace, name)

    def replace_config_map(self, manifest: Mapping[str, Any]) -> None:
        meta = manifest["metadata"]
        self._call(self.core.patch_namespaced_config_map, meta["name"], meta["namespace"], {"data": manifest["data"]})

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self._call(self.core.delete_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: Optional[str],
        plural: str = PLURAL,
    ) -> Optional[str]:
        """Merge-patch the job's status, only if the job is still at ``resource_version``; its new version.

        The version in the patch makes the API server refuse it (409, raised as :class:`Conflict`)
        when anyone wrote the job since it was read: a decision taken on what was read must not
        overwrite what was decided since (an attempt counter would move back).
        """
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        patch = self.custom.patch_namespaced_custom_object_status
        try:
            patched = self._call(patch, GROUP, VERSION, namespace, plural, name, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{namespace}/{name} changed since resourceVersion {resource_version}") from None
            raise
        return (patched.get("metadata") or {}).get("resourceVersion")

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self._call(
                self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(self, job: Mapping[str, Any], event: Event) -> None:
        meta = job["metadata"]
        now = rfc3339(now_utc())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": job.get("kind") or KIND,  # a GRPOJob's, or a GRPOInferencePool's
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": OPERATOR_NAME},
            "reportingComponent": OPERATOR_NAME,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call(self.core.create_namespaced_event, meta["namespace"], body)
        except ApiException as exc:  # events are best-effort
            log.warning(
                "could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], exc.reason
            )


def api_message(exc: ApiException) -> str:
    """The API server's own message (e.g. the Pod Security violation), not the HTTP boilerplate."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)

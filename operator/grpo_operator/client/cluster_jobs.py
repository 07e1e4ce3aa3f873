"""GRPOJobs in one namespace of a cluster, as the ``grpo`` CLI and ``compile()`` use them.

Thin calls of the Kubernetes API with the user's own credentials (kubeconfig, or the
pod's ServiceAccount inside the cluster); the API server's refusals come back as
:class:`JobRejected` with its field messages, a failed job as :class:`JobFailed` with
its Failed condition's words.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

from grpo_operator.api.job import GROUP, KIND, PLURAL, VERSION
from grpo_operator.client.errors import GRPOError, JobFailed, JobRejected, NotServed
from grpo_operator.client.job_view import JobView, poll_view
from grpo_operator.client.submission import Submission

SUBMISSION_ANNOTATION = "grpo.dev/submission-sha256"  # what compile() submitted, to recognise it on a re-run
TRAINER_CONTAINER = "trainer"
POLL_SECONDS = 2.0
LOG_OPEN_PATIENCE_SECONDS = 60.0  # how long a follower waits for the node to serve a started pod's log
LOG_RETRY_SECONDS = 1.0
# A started pod's log the API server could not get yet: its node does not serve it yet (400 "waiting to
# start", 404), or the API server could not reach the node ("500 Get https://<node>/containerLogs/...: EOF").
LOG_NOT_YET = frozenset({400, 404, 500, 502, 503})
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"

log = logging.getLogger(__name__)


def in_cluster() -> bool:
    return bool(os.environ.get(IN_CLUSTER_ENV)) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )


def _api_client(context: Optional[str], kubeconfig: Optional[str]) -> tuple[Any, str]:
    """An API client and the namespace its configuration names (the context's, the pod's, or default)."""
    from kubernetes import client, config

    if kubeconfig is None and context is None and in_cluster():
        config.load_incluster_config()
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as fh:
            return client.ApiClient(), fh.read().strip()
    api = config.new_client_from_config(config_file=kubeconfig, context=context)
    _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = active
    if context is not None:
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), active)
    return api, (chosen or {}).get("context", {}).get("namespace") or "default"


def _answer(exc: Any) -> tuple[str, list[str]]:
    """An ApiException's message and causes (a field's refusal, or the words of a node the API server relayed)."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") or exc.reason or str(exc)
    causes = [
        f"{c.get('field', '')}: {c.get('message', '')}".strip(": ")
        for c in (body.get("details") or {}).get("causes") or []
    ]
    return message, causes


def _refusal(exc: Any, what: str) -> GRPOError:
    """An ApiException as the error the user acts on: the API server's own message and field causes."""
    message, causes = _answer(exc)
    if exc.status in (400, 422):
        return JobRejected(f"{what} was refused by the API server: {message}", causes or [message])
    if exc.status == 403:
        return GRPOError(f"{what}: forbidden ({message}); ask for the rights in this namespace")
    no_such_type = "the server could not find the requested resource" in message  # not one missing object
    if exc.status == 404 and no_such_type and what.startswith("GRPOJob"):
        return GRPOError(f"{what}: the GRPOJob CRD is not installed in this cluster (helm install grpo-operator ...)")
    return GRPOError(f"{what}: {exc.status} {message}")


class ClusterJobs:
    """The GRPOJobs of one namespace."""

    def __init__(
        self,
        namespace: Optional[str] = None,
        *,
        context: Optional[str] = None,
        kubeconfig: Optional[str] = None,
        api_client: Any = None,
    ) -> None:
        from kubernetes import client

        if api_client is None:
            api_client, default_ns = _api_client(context, kubeconfig)
        else:
            default_ns = "default"
        self.api_client = api_client
        self.namespace = namespace or default_ns
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise _refusal(exc, what) from None

    # -- reading ---------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any]:
        return self._call(
            f"GRPOJob {name}", self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
        )

    def view(self, name: str) -> JobView:
        return JobView.of(self.get(name))

    def list(self) -> list[JobView]:
        items = self._call(
            "GRPOJobs", self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL
        )
        return [JobView.of(o) for o in items.get("items", [])]

    def exists(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _refusal(exc, f"GRPOJob {name}") from None
        return True

    # -- submitting ---------------------------------------------------------------

    def submit(self, submission: Submission, digest: str) -> dict[str, Any]:
        """Create the job, then its ConfigMaps and Secret owned by it (collected with it). A job of the same
        name that compile() submitted with the same content is taken as it is (a re-run follows it)."""
        from kubernetes.client.exceptions import ApiException

        job = json.loads(json.dumps(submission.job))
        job["metadata"].setdefault("annotations", {})[SUBMISSION_ANNOTATION] = digest
        try:
            created = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job)
        except ApiException as exc:
            if exc.status != 409:
                raise _refusal(exc, f"GRPOJob {submission.name}") from None
            existing = self.get(submission.name)
            if (existing["metadata"].get("annotations") or {}).get(SUBMISSION_ANNOTATION) != digest:
                raise JobRejected(
                    f"a GRPOJob named {submission.name} already exists in {self.namespace} with other content; pass "
                    f"GRPO(name=...) for a new job, or delete it (grpo delete {submission.name})"
                ) from None
            return existing
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": created["metadata"]["name"],
            "uid": created["metadata"]["uid"],
            "controller": False,
            "blockOwnerDeletion": False,
        }
        for manifest in submission.config_maps:
            body = json.loads(json.dumps(manifest))
            body["metadata"]["ownerReferences"] = [owner]
            self._create(self.core.create_namespaced_config_map, body, f"ConfigMap {body['metadata']['name']}")
        if submission.secret_data:
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": submission.secret_name, "ownerReferences": [owner]},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in submission.secret_data.items()},
            }
            self._create(self.core.create_namespaced_secret, secret, f"Secret {submission.secret_name}")
        return created

    def _create(self, create: Callable[..., Any], body: dict[str, Any], what: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            create(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise _refusal(exc, what) from None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a GRPOJob from a manifest (``grpo submit``)."""
        return self._call(
            f"GRPOJob {manifest.get('metadata', {}).get('name')}",
            self.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            manifest,
        )

    # -- changing -----------------------------------------------------------------

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            f"GRPOJob {name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            {"spec": spec},
        )

    def stop(self, name: str) -> None:
        """Suspend: the pods go (the trainer checkpoints on its way out), the volume stays; resume continues."""
        self.patch_spec(name, {"suspend": True})

    def resume(self, name: str) -> None:
        self.patch_spec(name, {"suspend": False})

    def result(self, name: str) -> dict[str, Any]:
        view = self.view(name)
        return {"result": view.result, "endpoint": view.endpoint}

    def export(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Add a destination to ``spec.export``: the operator exports the finished job's result there once."""
        from grpo_operator.client.export_target import with_destination

        spec = self.get(name).get("spec") or {}
        return self.patch_spec(name, {"export": with_destination(spec.get("export"), entry)})

    def delete(self, name: str) -> None:
        self._call(
            f"GRPOJob {name}", self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
        )

    # -- following ------------------------------------------------------------------

    def wait(
        self,
        name: str,
        *,
        until: Callable[[JobView], bool] = lambda v: v.finished,
        on_view: Optional[Callable[[JobView], None]] = None,
        timeout: Optional[float] = None,
        poll: float = POLL_SECONDS,
    ) -> JobView:
        """Poll the job until ``until`` holds (default: Succeeded or Failed); raises TimeoutError."""
        return poll_view(
            lambda: self.view(name), until, on_view=on_view, timeout=timeout, poll=poll, what=f"GRPOJob {name}"
        )

    def logs(self, name: str, *, follow: bool = False, tail: Optional[int] = None) -> Iterator[str]:
        """The trainer's log lines (the current attempt's pod), as ``kubectl logs`` shows them; ``follow`` first
        waits for the trainer to start (a job just submitted has no running trainer yet)."""
        pod = self._started_trainer(name) if follow else self.view(name).trainer_pod
        if not pod:
            raise GRPOError(f"GRPOJob {name} has no trainer pod yet")
        kwargs: dict[str, Any] = {"container": TRAINER_CONTAINER, "follow": follow, "_preload_content": False}
        if tail is not None:
            kwargs["tail_lines"] = tail
        response = self._open_log(pod, kwargs, patience=LOG_OPEN_PATIENCE_SECONDS if follow else 0.0)
        buffer = b""
        try:
            for chunk in response.stream(amt=4096, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            if buffer:
                yield buffer.decode("utf-8", errors="replace")
        finally:
            response.release_conn()

    def _open_log(self, pod: str, kwargs: dict[str, Any], patience: float) -> Any:
        """The log stream of ``pod``. The API server reports the pod Running a moment before its node may
        serve the container's log (404 or 400 "waiting to start" from the kubelet), and relays a failed
        connection to the node as a 5xx: a follower waiting for that pod retries for ``patience`` seconds,
        as long as the pod itself still exists."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + patience
        while True:
            try:
                return self.core.read_namespaced_pod_log(pod, self.namespace, **kwargs)
            except ApiException as exc:
                if exc.status not in LOG_NOT_YET:
                    raise _refusal(exc, f"the log of pod {pod}") from None
                message, causes = _answer(exc)
                words = "; ".join(causes) or message  # the node's own, as the API server relays them
                if time.monotonic() >= deadline or not self._pod_exists(pod):
                    raise GRPOError(f"the log of pod {pod} is not available: {words}") from None
                log.info("pod %s: waiting for its node to serve the log (%s)", pod, words)
            time.sleep(LOG_RETRY_SECONDS)

    def _pod_exists(self, pod: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespaced_pod(pod, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _refusal(exc, f"pod {pod}") from None
        return True

    def _started_trainer(self, name: str) -> str:
        """The trainer pod's name once its container has started (or the job finished without one)."""
        from kubernetes.client.exceptions import ApiException

        while True:
            view = self.view(name)
            if view.trainer_pod:
                try:
                    pod = self.core.read_namespaced_pod(view.trainer_pod, self.namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise _refusal(exc, f"pod {view.trainer_pod}") from None
                else:
                    if pod.status.phase in ("Running", "Succeeded", "Failed"):
                        return view.trainer_pod
            if view.finished:
                return view.trainer_pod or ""
            time.sleep(POLL_SECONDS)

    def secret_value(self, name: str, key: str) -> str:
        secret = self._call(f"Secret {name}", self.core.read_namespaced_secret, name, self.namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise NotServed(f"Secret {name} has no key {key}")
        return base64.b64decode(data).decode()


def raise_if_failed(view: JobView) -> None:
    if view.state == "Failed":
        raise JobFailed(view.name, view.reason, view.message)

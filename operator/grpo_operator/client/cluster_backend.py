"""compile() on a cluster: submit the GRPOJob, follow it with a progress bar, reach its served result.

The job runs whatever happens to the notebook: an interrupted compile() leaves it
running (``grpo stop NAME`` suspends it), and running the same cell again follows
the same job. With ``serve`` (the default) the succeeded job's vLLM pod keeps
serving the best adapter; the optimized program reaches it by the Service's URL
inside the cluster and by a port-forward outside it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional
from urllib.parse import urlsplit

from grpo_operator.api import parse_job
from grpo_operator.client.cluster_jobs import ClusterJobs, in_cluster, raise_if_failed
from grpo_operator.client.errors import NotServed
from grpo_operator.client.job_view import JobView
from grpo_operator.client.portforward import PortForward
from grpo_operator.client.served import ServedFormat, ServedResult
from grpo_operator.client.submission import Submission
from grpo_operator.local.display import Display, make_display
from grpo_operator.resolve import served_model_name

log = logging.getLogger(__name__)

SERVE_TIMEOUT = 1800.0  # the serving vLLM pod may have to start afresh (a model download, a load)
NO_KEY = "EMPTY"


def _digest(submission: Submission) -> str:
    """What was submitted, without the keys: a re-run with the same content finds the same job."""
    return hashlib.sha256(submission.yaml().encode()).hexdigest()


@dataclass
class ClusterBackend:
    """Run compile()'s job as a GRPOJob in a cluster (the kube context's, or this pod's).

    Args:
        namespace: the job's namespace (default: the context's, or this pod's).
        context, kubeconfig: which cluster (default: the current context; inside a pod, its ServiceAccount).
        trainer, inference, storage: the GRPOJob's ``spec.trainer`` / ``spec.inference`` / ``spec.storage``
            (images, resources, nodeSelector, tolerations, env, storage class ...).
        queue_name: a Kueue LocalQueue.
        serve: keep the succeeded job's vLLM serving the result (the optimized program calls it).
        endpoint: how to reach it: ``service`` (inside the cluster), ``port-forward`` (outside), ``auto``.
        timeout: seconds to wait for the job to finish (None: as long as it takes).
    """

    namespace: Optional[str] = None
    context: Optional[str] = None
    kubeconfig: Optional[str] = None
    trainer: Mapping[str, Any] = field(default_factory=dict)
    inference: Mapping[str, Any] = field(default_factory=dict)
    storage: Mapping[str, Any] = field(default_factory=dict)
    queue_name: Optional[str] = None
    serve: bool = True
    endpoint: Literal["auto", "service", "port-forward"] = "auto"
    timeout: Optional[float] = None
    display: Optional[Display] = None

    def jobs(self) -> ClusterJobs:
        return ClusterJobs(self.namespace, context=self.context, kubeconfig=self.kubeconfig)

    def spec_overrides(self) -> Mapping[str, Any]:
        spec: dict[str, Any] = {"serve": {"enabled": self.serve}}
        for key, value in (("trainer", self.trainer), ("inference", self.inference), ("storage", self.storage)):
            if value:
                spec[key] = dict(value)
        if self.queue_name:
            spec["queueName"] = self.queue_name
        return spec

    def run(self, submission: Submission) -> ServedResult:
        jobs = self.jobs()
        jobs.submit(submission, _digest(submission))
        log.info(
            "GRPOJob %s submitted in namespace %s (grpo status %s)", submission.name, jobs.namespace, submission.name
        )
        display = self.display or make_display(sys.stderr)
        try:
            view = jobs.wait(submission.name, on_view=lambda v: display.update(v.progress()), timeout=self.timeout)
        except KeyboardInterrupt:
            display.message(
                f"GRPOJob {submission.name} goes on in the cluster; `grpo stop {submission.name}` suspends it"
            )
            raise
        finally:
            display.close()
        raise_if_failed(view)
        return self.served(jobs, view, submission.student.trained)

    def served(self, jobs: ClusterJobs, view: JobView, trained: Any) -> ServedResult:
        """The succeeded job's result as served by its vLLM pod, reachable from here."""
        if not self.serve and not view.serving:
            return ServedResult(view.name, jobs.namespace, view.result or {}, "", "", "", NO_KEY, tuple(trained))
        view = jobs.wait(
            view.name, until=lambda v: v.serving or v.state == "Failed" or v.suspended, timeout=SERVE_TIMEOUT
        )
        raise_if_failed(view)
        if not view.serving or view.endpoint is None:
            raise NotServed(f"GRPOJob {view.name} does not serve its result: {view.message}")
        endpoint = dict(view.endpoint)
        spec = parse_job(jobs.get(view.name)).spec
        ref = endpoint.get("apiKeySecretRef")
        key = jobs.secret_value(ref["name"], ref["key"]) if ref else NO_KEY
        url, close = str(endpoint["url"]), (lambda: None)
        if self.endpoint == "port-forward" or (self.endpoint == "auto" and not in_cluster()):
            parts = urlsplit(url)
            forward = PortForward(
                jobs.core, jobs.namespace, lambda: jobs.view(view.name).inference_pod or "", parts.port or 80
            )
            url, close = forward.url + parts.path, forward.close
        return ServedResult(
            job=view.name,
            namespace=jobs.namespace,
            result=view.result or {},
            url=url,
            model=str(endpoint["model"]),
            base_model=served_model_name(spec),
            api_key=key,
            trained=tuple(trained),
            format=ServedFormat.of(spec.grpo, spec.train_kwargs),
            close=close,
        )

"""``grpo logs -f``: a follower waits out a node that cannot serve the trainer's log yet.

The API server is stood in for by a fake CoreV1Api: the failure here is a node's connection dropping
under the API server's log request (CI saw "500 Get https://<node>/containerLogs/...: EOF" once, on a
loaded machine), which cannot be brought about on demand. The node's 404 goes through the real API
server and a KWOK node in tests/cluster/test_operator_e2e.py.
"""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from grpo_operator.client import cluster_jobs
from grpo_operator.client.cluster_jobs import ClusterJobs
from grpo_operator.client.errors import GRPOError

DROPPED = 'Get "https://127.0.0.1:37603/containerLogs/ns/topics-trainer-0/trainer?follow=true": EOF'


def api_error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="refused")
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return exc


class Core:
    """Answers the log request with ``errors`` first, then a stream; the pod exists throughout."""

    def __init__(self, *errors: ApiException) -> None:
        self.errors = list(errors)
        self.log_calls = 0

    def read_namespaced_pod_log(self, pod: str, namespace: str, **kwargs: object) -> str:
        self.log_calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "stream"

    def read_namespaced_pod(self, pod: str, namespace: str) -> object:
        return object()


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> ClusterJobs:
    monkeypatch.setattr(cluster_jobs, "LOG_RETRY_SECONDS", 0.01)
    return ClusterJobs("ns", api_client=object())


def test_a_dropped_connection_to_the_node_is_retried_by_a_follower(jobs: ClusterJobs) -> None:
    jobs.core = Core(api_error(500, DROPPED), api_error(404, "no logs yet"))
    assert jobs._open_log("topics-trainer-0", {"follow": True}, patience=5.0) == "stream"
    assert jobs.core.log_calls == 3


def test_a_node_that_stays_unreachable_fails_in_its_words_naming_the_pod(jobs: ClusterJobs) -> None:
    jobs.core = Core(*[api_error(500, DROPPED)] * 1000)
    with pytest.raises(GRPOError) as refused:
        jobs._open_log("topics-trainer-0", {"follow": True}, patience=0.2)
    assert str(refused.value) == f"the log of pod topics-trainer-0 is not available: {DROPPED}"


def test_a_refusal_of_the_user_is_not_retried(jobs: ClusterJobs) -> None:
    jobs.core = Core(api_error(403, 'pods "topics-trainer-0" is forbidden: User "bob" cannot get resource "pods/log"'))
    with pytest.raises(GRPOError) as refused:
        jobs._open_log("topics-trainer-0", {"follow": True}, patience=5.0)
    assert "forbidden" in str(refused.value) and jobs.core.log_calls == 1

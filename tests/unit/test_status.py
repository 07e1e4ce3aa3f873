"""Status vocabulary: pod trouble read from real pod documents, the condition list, the
trainer's progress over HTTP, and the operator's metrics at scrape time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from grpo_operator.api.status import CONDITION_ORDER, GRPOJobStatus
from grpo_operator.controller.conditions import Cond, conditions, pod_view, state, transitions
from grpo_operator.controller.progress_poll import fetch_progress, progress_status, progress_url
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_trainer.contract.progress import Progress, RunResult
from support.fake_trainer import ReplyByPath

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)


def pod(phase: str = "Pending", conditions_: list | None = None, containers: list | None = None, **status) -> dict:
    return {
        "metadata": {"name": "job-trainer-0", "labels": {"app.kubernetes.io/component": "trainer"}},
        "spec": {"nodeName": status.pop("node", None)},
        "status": {"phase": phase, "conditions": conditions_ or [], "containerStatuses": containers or [], **status},
    }


# --------------------------------------------------------------------------- pods


def test_unschedulable_pod_names_the_scheduler_reason():
    msg = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available"
    view = pod_view(
        pod(conditions_=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}])
    )
    assert (view.problem_reason, view.problem_message) == ("Unschedulable", msg)
    assert view.component == "trainer" and not view.running


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CrashLoopBackOff"]
)
def test_container_that_cannot_start_is_a_problem(reason):
    waiting = {"name": "trainer", "state": {"waiting": {"reason": reason, "message": 'secret "k" not found'}}}
    view = pod_view(pod(containers=[waiting], node="gpu-node-0"))
    assert view.problem_reason == reason
    assert 'secret "k" not found' in view.problem_message and "trainer" in view.problem_message


def test_normal_waiting_is_not_a_problem():
    waiting = {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_view(pod(containers=[waiting])).problem_reason is None


def test_running_ready_and_exit_codes():
    running = pod_view(
        pod(
            "Running",
            [{"type": "Ready", "status": "True"}],
            podIP="10.0.0.5",
            node="n1",
            startTime="2026-11-25T12:00:00Z",
        )
    )
    assert running.running and running.ready and running.ip == "10.0.0.5" and running.node == "n1"
    failed = pod_view(
        pod("Failed", containers=[{"name": "t", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    )
    assert failed.finished and failed.exit_code == 137
    assert "exit code 137" in failed.describe_exit() and "OOMKilled" in failed.describe_exit()
    evicted = pod_view(pod("Failed", reason="Evicted", message="The node was low on resource: memory."))
    assert evicted.problem_reason == "Evicted" and "low on resource" in evicted.describe_exit()


# --------------------------------------------------------------------------- conditions


def test_conditions_are_a_full_list_in_the_declared_order():
    new = {t: Cond.false("NotYet") for t in reversed(CONDITION_ORDER)}
    new["Training"] = Cond.true("Running", "step 3/10")
    out = conditions([], new, T0, 4)
    assert [c["type"] for c in out] == list(CONDITION_ORDER)
    assert all(c["observedGeneration"] == 4 and c["lastTransitionTime"] == "2026-11-25T12:00:00Z" for c in out)
    GRPOJobStatus.model_validate({"conditions": out})  # what the CRD schema accepts
    assert state({"conditions": out}) == "Training"
    assert state({"conditions": []}) == "Pending"


def test_last_transition_time_moves_only_when_status_changes():
    first = conditions([], {"Training": Cond.false("Pending"), "Created": Cond.true("ChildrenCreated")}, T0, 1)
    later = T0 + timedelta(minutes=5)
    # reason and message change, status does not: the time stays
    second = conditions(
        first, {"Training": Cond.false("Unschedulable", "no GPUs"), "Created": Cond.true("ChildrenCreated")}, later, 1
    )
    assert second[0]["lastTransitionTime"] == "2026-11-25T12:00:00Z"
    assert second[0]["reason"] == "Unschedulable"
    third = conditions(second, {"Training": Cond.true("Running")}, later, 2)
    assert third[0]["lastTransitionTime"] == "2026-11-25T12:05:00Z"
    # conditions not restated keep their old value
    assert third[1] == second[1]
    changed = transitions(first, third)
    assert [(t.ctype, t.status, t.reason) for t in changed] == [("Training", "True", "Running")]
    assert transitions(second, third)[0].warning is False
    assert transitions(first, second)[0].warning is True  # turned Unschedulable


def test_failed_first_makes_state_failed_even_with_created_true():
    conds = conditions(
        [],
        {
            "Created": Cond.true("ChildrenCreated"),
            "Failed": Cond.true("BackoffLimitExceeded"),
            "Training": Cond.false("JobFailed"),
        },
        T0,
        1,
    )
    assert state({"conditions": conds}) == "Failed"


# --------------------------------------------------------------------------- progress


class _ProgressHandler(BaseHTTPRequestHandler):
    document: dict = {}

    def do_GET(self) -> None:
        if self.path != "/progress":
            self.send_error(404)
            return
        body = json.dumps(self.document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def progress_server() -> Iterator[tuple[str, int, type[_ProgressHandler]]]:
    handler = type("Handler", (_ProgressHandler,), {"document": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_progress_is_read_from_the_trainer_over_http(progress_server):
    """The trainer's own progress document (grpo_trainer.contract.progress.Progress), served over HTTP."""
    host, port, handler = progress_server
    doc = Progress(
        job="papillon",
        max_steps=500,
        step=12,
        reward_mean=0.61,
        reward_std=0.2,
        val_score=0.55,
        best_val_score=0.58,
        baseline_val_score=0.41,
        adapter_version="policy-v12",
        best_adapter_version="policy-v10",
        best_step=10,
        eta_seconds=300.7,
        updated_at=datetime(2026, 11, 25, 12, 3, tzinfo=timezone.utc),
        val_scores={0: 0.41, 10: 0.58},
        trained_predictors=["craft_redacted_request.predict", "respond_to_query"],
        result=RunResult(
            path="result", adapter="result/adapter", step=10, val_score=0.58, base_model="Qwen/Qwen2.5-1.5B"
        ),
    )
    handler.document = json.loads(doc.model_dump_json())
    fields = progress_status(fetch_progress(progress_url(host, port), timeout=2), T0)
    assert fields == {  # maxSteps is the spec's (grpo.num_train_steps), not the trainer's word
        "step": 12,
        "trainReward": 0.61,
        "trainRewardStd": 0.2,
        "valScore": 0.55,
        "bestValScore": 0.58,
        "baselineValScore": 0.41,
        "adapterVersion": "policy-v12",
        "bestAdapterVersion": "policy-v10",
        "bestStep": 10,
        "estimatedRemainingSeconds": 300,
        "trainedPredictors": ["craft_redacted_request.predict", "respond_to_query"],
        "result": {  # an object, camelCase as the CRD has it: what a pipeline reads with jsonpath
            "path": "result", "adapter": "result/adapter", "step": 10, "valScore": 0.58,
            "baseModel": "Qwen/Qwen2.5-1.5B", "finished": False,
        },  # fmt: skip
        "progressPercentage": 2,
        "lastProgressTime": "2026-11-25T12:03:00Z",
    }
    GRPOJobStatus.model_validate(fields)  # every field is declared in the CRD


def test_progress_skips_bad_values_and_reads_no_synonyms():
    doc = {"step": "3", "max_steps": 4, "val_score": "nan", "reward_mean": "x", "best_step": -1,
           "updated_at": "2023-11-14T22:13:20+00:00"}  # fmt: skip
    fields = progress_status(doc, T0)
    assert fields["step"] == 3 and fields["progressPercentage"] == 75
    assert "valScore" not in fields and "trainReward" not in fields and "bestStep" not in fields
    # a result that is not one (a string, a missing step) is skipped, not half-copied
    assert "result" not in progress_status({"result": "result/"}, T0)
    assert "result" not in progress_status({"result": {"path": "result", "base_model": "m"}}, T0)
    assert fields["lastProgressTime"] == "2023-11-14T22:13:20Z"
    assert progress_status({}, T0) == {"lastProgressTime": "2026-11-25T12:00:00Z"}
    # keys the document never had are not read (a reader that guesses hides a writer's rename)
    assert progress_status({"current_step": 3, "trainReward": 0.5, "eta_seconds": 9}, T0) == {
        "estimatedRemainingSeconds": 9,
        "lastProgressTime": "2026-11-25T12:00:00Z",
    }


def test_every_status_field_is_written_by_the_trainer_and_declared_in_the_crd():
    """The table is the one definition: the document has each source, the status model each field."""
    from grpo_trainer.contract.progress import FINAL_FIELDS, STATUS_FIELDS, Progress

    assert {f.source for f in STATUS_FIELDS.values()} <= set(Progress.model_fields)
    assert {f.source for f in STATUS_FIELDS.values()} <= FINAL_FIELDS  # the termination message carries them
    status_fields = GRPOJobStatus.model_fields
    for name, field in STATUS_FIELDS.items():
        assert status_fields[name].description == field.description


def test_hostile_progress_values_are_dropped_never_raised_nor_passed_to_the_api_server():
    """The trainer runs the user's code: what it reports is bounded to what the status schema takes."""
    doc = {"step": 1e400, "best_step": 10**30, "val_score": 1e400, "reward_mean": -1e400, "adapter_version": "v" * 5000,
           "result": {"path": "result", "step": 10**30, "base_model": "m" * 5000, "finished": True},
           "trained_predictors": [{"name": "x"}, *(["p" * 5000] * 100)]}  # fmt: skip
    fields = progress_status(doc, T0)
    assert not {"step", "bestStep", "valScore", "trainReward"} & set(fields)
    assert len(fields["adapterVersion"]) == 1024
    assert fields["result"] == {"path": "result", "baseModel": "m" * 1024, "finished": True}  # the huge step dropped
    assert fields["trainedPredictors"] == ["p" * 253] * 64  # names only, as many and as long as the schema takes
    assert "trainedPredictors" not in progress_status({"trained_predictors": "a,b"}, T0)
    GRPOJobStatus.model_validate(fields)


def test_a_huge_trickling_or_deep_progress_reply_is_refused_in_bounded_time():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReplyByPath)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path in ("/huge", "/huge-chunked", "/deep", "/garbage"):
            assert fetch_progress(base + path, timeout=2) is None, path
        # numbers no status field holds are read, then dropped (test_hostile_progress_values_...)
        assert not {"step", "bestStep", "valScore"} & set(progress_status(fetch_progress(base + "/overflowing", 2), T0))
        started = time.monotonic()
        assert fetch_progress(base + "/trickle", timeout=1) is None  # each byte is on time; the whole is not
        assert time.monotonic() - started < 4  # bounded by twice the timeout, not by the reply's 86 s
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_or_broken_trainer_is_not_an_error(progress_server):
    host, port, handler = progress_server
    assert fetch_progress(f"http://{host}:{port}/nothing-here", timeout=1) is None  # 404
    handler.document = ["not", "an", "object"]  # type: ignore[assignment]
    assert fetch_progress(progress_url(host, port), timeout=1) is None
    # a port nothing listens on
    assert fetch_progress(progress_url("127.0.0.1", 9), timeout=1) is None


# --------------------------------------------------------------------------- metrics


def test_metrics_show_job_state_and_progress_at_scrape_time():
    metrics = OperatorMetrics()
    conds = conditions([], {"Training": Cond.true("Running"), "Created": Cond.true("ChildrenCreated")}, T0, 1)
    status = {
        "conditions": conds,
        "step": 7,
        "maxSteps": 20,
        "trainReward": 0.5,
        "restarts": 1,
        "progressPercentage": 35,
    }
    metrics.cache.update("ns1", "papillon", status, {"model": "Qwen/Qwen2.5-1.5B-Instruct"})
    metrics.reconciles.labels("ns1", "papillon").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'grpo_job_state{name="papillon",namespace="ns1",state="Training"} 1.0' in text
    assert 'grpo_job_state{name="papillon",namespace="ns1",state="Created"} 0.0' in text
    assert 'grpo_job_step{name="papillon",namespace="ns1"} 7.0' in text
    assert 'grpo_job_max_steps{name="papillon",namespace="ns1"} 20.0' in text
    assert 'grpo_job_restarts{name="papillon",namespace="ns1"} 1.0' in text
    assert 'grpo_job_progress_ratio{name="papillon",namespace="ns1"} 0.35' in text
    assert 'grpo_job_info{model="Qwen/Qwen2.5-1.5B-Instruct",name="papillon",namespace="ns1"} 1.0' in text
    assert 'grpo_operator_reconcile_total{name="papillon",namespace="ns1"} 1.0' in text
    assert "grpo_operator_reconcile_duration_seconds_bucket" in text
    assert "grpo_job_val_score{" not in text  # unknown values are absent, not 0
    metrics.forget("ns1", "papillon")
    text = generate_latest(metrics.registry).decode()
    assert 'name="papillon"' not in text

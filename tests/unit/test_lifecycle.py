"""The lifecycle rules of a GRPOJob, decided from observed snapshots (no cluster needed).

Pod documents here are shaped like the API server's; the cluster e2e tests run
the same rules against a real control plane.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from grpo_operator.api.status import GRPOJobStatus
from grpo_operator.children import Job, resolved
from grpo_operator.controller.conditions import state
from grpo_operator.controller.lifecycle import Observed, Plan, decide
from grpo_trainer.contract import exit_codes
from grpo_trainer.contract.progress import termination_message
from grpo_trainer.run.main import refusal
from grpo_trainer.run.ownership import ForeignRunError, check_owner, claim_run_dir
from support.jobstates import SETTINGS, T0, a_pod, cond, created_names, observe, spec


def running_pair(trainer: str = "papillon-trainer-0", inference: str = "papillon-inference-0") -> tuple:
    return a_pod(trainer, "trainer"), a_pod(inference, "inference")


def exited_trainer(code: int, message: str | None = None, name: str = "papillon-trainer-0"):
    """A trainer pod whose container exited with ``code`` (and left ``message`` as its termination message)."""
    terminated: dict[str, Any] = {"exitCode": code, **({"message": message} if message is not None else {})}
    return a_pod(name, "trainer", "Failed", containerStatuses=[{"name": "trainer", "state": {"terminated": terminated}}])


def test_new_job_creates_every_child_once():
    fresh = observe(pvc_exists=False, config_map_data=None, service_exists=False, key_secret_exists=False)
    plan = decide(fresh, SETTINGS)
    assert created_names(plan) == [
        "PersistentVolumeClaim/papillon-run",
        "ConfigMap/papillon-config",
        "Service/papillon-vllm",
        "Secret/papillon-vllm-key-uid",
        "Pod/papillon-inference-0",
        "Pod/papillon-trainer-0",
    ]
    assert plan.delete_pods == [] and not plan.delete_job
    assert cond(plan, "Created")["status"] == "True"
    assert cond(plan, "Training")["reason"] == "Creating"
    assert "startTime" not in plan.status  # nothing runs yet
    assert plan.status["maxSteps"] == 500 and plan.status["restarts"] == 0
    assert state(plan.status) == "Created"
    GRPOJobStatus.model_validate(plan.status)  # everything we write is declared in the CRD


def run_mounts(plan: Plan) -> dict[str, dict]:
    """Pod name -> how it mounts the job's volume."""
    return {
        m["metadata"]["name"]: next(v for v in m["spec"]["containers"][0]["volumeMounts"] if v["name"] == "run")
        for m in plan.create
        if m["kind"] == "Pod"
    }


def test_a_new_job_keeps_its_run_in_its_own_folder_of_the_volume_and_records_where():
    plan = decide(observe(), SETTINGS)
    assert plan.status["runPath"] == "runs/papillon"
    own_folder = {"name": "run", "mountPath": "/mnt/grpo", "subPath": "runs/papillon"}
    assert run_mounts(plan) == {"papillon-inference-0": own_folder, "papillon-trainer-0": own_folder}
    # kept from then on, whatever else the status gains
    failed = exited_trainer(1)
    again = decide(observe(status=plan.status, pods=(failed, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    assert again.status["runPath"] == "runs/papillon"
    assert run_mounts(again)["papillon-trainer-1"]["subPath"] == "runs/papillon"


def test_a_job_whose_pods_an_older_operator_created_keeps_its_run_at_the_volumes_root():
    """After an upgrade: its checkpoints are at the root, and its next attempt must resume from them."""
    old_status = {"restarts": 1, "interruptions": 0, "inferenceRestarts": 0, "trainerPod": "papillon-trainer-1",
                  "inferencePod": "papillon-inference-0"}  # fmt: skip
    failed = exited_trainer(1, name="papillon-trainer-1")
    plan = decide(observe(status=old_status, pods=(failed, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    assert plan.status["runPath"] == "."
    assert run_mounts(plan) == {"papillon-trainer-2": {"name": "run", "mountPath": "/mnt/grpo"}}
    config = json.loads(next(m for m in plan.replace + plan.create if m["kind"] == "ConfigMap")["data"]["config.json"])
    assert config["owner"]["where"] == "the root of claim 'papillon-run'"
    # and so on, once recorded
    later = decide(observe(status=plan.status, pods=(a_pod("papillon-inference-0", "inference"),)), SETTINGS)
    assert later.status["runPath"] == "." and "subPath" not in run_mounts(later)["papillon-trainer-2"]
    # a job the older operator never got to create pods for (suspended from the start) gets its own folder
    assert decide(observe(status={"restarts": 0}), SETTINGS).status["runPath"] == "runs/papillon"


def test_running_job_is_left_alone_and_reports_training():
    first = decide(observe(pods=running_pair()), SETTINGS)
    assert first.create == [] and first.delete_pods == []
    assert state(first.status) == "Training"
    assert cond(first, "InferenceReady")["status"] == "True"
    # the same observation again: nothing to do, nothing to report
    again = decide(observe(status=first.status, pods=running_pair(), now=T0 + timedelta(minutes=1)), SETTINGS)
    assert again.create == [] and again.delete_pods == [] and again.transitions == []
    assert again.status == first.status


def test_progress_lands_in_status_and_the_training_message():
    progress = {
        "step": 12,
        "trainReward": 0.6,
        "valScore": 0.5,
        "adapterVersion": "policy-v12",
        "lastProgressTime": "2026-11-25T12:00:00Z",
    }
    plan = decide(observe(pods=running_pair(), progress=progress), SETTINGS)
    assert plan.status["step"] == 12 and plan.status["adapterVersion"] == "policy-v12"
    assert cond(plan, "Training")["message"] == "step 12/500"


def test_trainer_failure_recreates_the_next_attempt_and_counts_it():
    failed = a_pod(
        "papillon-trainer-0",
        "trainer",
        "Failed",
        containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 1}}}],
    )
    plan = decide(observe(pods=(failed, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    assert plan.status["restarts"] == 1
    assert plan.delete_pods == ["papillon-trainer-0"]
    assert created_names(plan) == ["Pod/papillon-trainer-1"]
    assert plan.status["trainerPod"] == "papillon-trainer-1"
    assert cond(plan, "Training")["reason"] == "TrainerRestarting"
    assert "exit code 1" in plan.events[0].message and plan.events[0].type == "Warning"
    assert cond(plan, "Failed")["status"] == "False"


def test_interrupted_trainer_resumes_as_the_next_attempt_without_using_the_backoff_limit():
    """Exit 75: a signal stopped the trainer container after a checkpoint (the pod was not deleted)."""
    s = spec(runPolicy={"backoffLimit": 0})
    stopped = a_pod(
        "papillon-trainer-0",
        "trainer",
        "Failed",
        containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": exit_codes.INTERRUPTED}}}],
    )
    plan = decide(observe({"step": 40}, (stopped, a_pod("papillon-inference-0", "inference")), job_spec=s), SETTINGS)
    assert state(plan.status) != "Failed"
    assert plan.status["restarts"] == 0 and plan.status["interruptions"] == 1
    assert plan.delete_pods == ["papillon-trainer-0"] and created_names(plan) == ["Pod/papillon-trainer-1"]
    assert plan.status["trainerPod"] == "papillon-trainer-1"
    (event,) = plan.events
    assert event.type == "Normal" and event.reason == "TrainerInterrupted"
    assert "step 40" in event.message and "not counted against backoffLimit" in event.message
    # a failure after that is counted, and its pod is the attempt after
    failed = a_pod("papillon-trainer-1", "trainer", "Failed")
    s3 = spec(runPolicy={"backoffLimit": 3})
    later = decide(observe(plan.status, (failed, a_pod("papillon-inference-0", "inference")), job_spec=s3), SETTINGS)
    assert later.status["restarts"] == 1 and later.status["interruptions"] == 1
    assert created_names(later) == ["Pod/papillon-trainer-2"]


def test_a_trainer_that_exited_0_after_a_stop_is_not_a_finished_job():
    """An older trainer image exits 0 after a SIGTERM; its final report says it stopped."""
    report = json.dumps({"phase": "stopped", "step": 7, "max_steps": 500, "finished": False})
    stopped = a_pod(
        "papillon-trainer-0",
        "trainer",
        "Succeeded",
        containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": report}}}],
    )
    plan = decide(observe(pods=(stopped, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    assert state(plan.status) != "Succeeded" and plan.status["interruptions"] == 1
    assert created_names(plan) == ["Pod/papillon-trainer-1"]


def test_failure_event_quotes_the_trainers_error_or_the_end_of_its_log():
    def failed(message: str) -> Plan:
        pod = a_pod(
            "papillon-trainer-0",
            "trainer",
            "Failed",
            containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 1, "message": message}}}],
        )
        return decide(observe(pods=(pod, a_pod("papillon-inference-0", "inference"))), SETTINGS)

    report = json.dumps({"phase": "failed", "step": 3, "error": "RuntimeError: CUDA out of memory"})
    assert (
        failed(report)
        .events[0]
        .message.startswith(
            "pod papillon-trainer-0 failed, exit code 1, RuntimeError: CUDA out of memory; restart 1 of 3"
        )
    )
    tail = "loading model\nTraceback (most recent call last):\n  ...\nOSError: /models/x is not a directory\n"
    assert "OSError: /models/x is not a directory" in failed(tail).events[0].message
    assert len(failed("x" * 5000).events[0].message) < 600


def test_stale_attempt_left_by_a_crash_is_removed_not_duplicated():
    # restarts was written, then the operator died before deleting trainer-0 / creating trainer-1
    failed_old = a_pod("papillon-trainer-0", "trainer", "Failed")
    plan = decide(
        observe(status={"restarts": 1}, pods=(failed_old, a_pod("papillon-inference-0", "inference"))), SETTINGS
    )
    assert plan.delete_pods == ["papillon-trainer-0"]
    assert created_names(plan) == ["Pod/papillon-trainer-1"]
    assert plan.status["restarts"] == 1


def test_trainer_failure_beyond_backoff_limit_fails_the_job():
    s = spec(runPolicy={"backoffLimit": 1})
    failed = a_pod("papillon-trainer-1", "trainer", "Failed")
    plan = decide(observe({"restarts": 1}, (failed, a_pod("papillon-inference-0", "inference")), job_spec=s), SETTINGS)
    assert state(plan.status) == "Failed"
    assert cond(plan, "Failed")["reason"] == "BackoffLimitExceeded"
    assert plan.status["restarts"] == 1 and plan.status["completionTime"] == "2026-11-25T12:00:00Z"
    assert plan.delete_pods == ["papillon-inference-0"]  # GPU freed; the trainer's logs stay
    assert plan.create == []
    # once Failed, later reconciles change nothing
    later = decide(observe(plan.status, (failed,), T0 + timedelta(hours=1), job_spec=s), SETTINGS)
    assert later.create == [] and later.delete_pods == [] and state(later.status) == "Failed"


def test_an_invalid_job_fails_at_once_with_the_trainers_reason_and_no_retry():
    """Exit 78: the trainer found the program, metric or data wrong before loading the model."""
    error = "program.importPath 'topics.programs:Topic': ValueError: cannot import"
    report = json.dumps({"phase": "failed", "error": error, "error_reason": "InvalidProgram"})
    invalid = a_pod(
        "papillon-trainer-0",
        "trainer",
        "Failed",
        containerStatuses=[
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_codes.INVALID_JOB, "message": report}}}
        ],
    )
    s = spec(runPolicy={"backoffLimit": 3})
    plan = decide(observe(pods=(invalid, a_pod("papillon-inference-0", "inference")), job_spec=s), SETTINGS)
    assert state(plan.status) == "Failed" and plan.status["restarts"] == 0
    failed = cond(plan, "Failed")
    assert failed["reason"] == "InvalidProgram"
    assert "program.importPath 'topics.programs:Topic'" in failed["message"] and "no retry" in failed["message"]
    assert plan.create == [] and plan.delete_pods == ["papillon-inference-0"]  # vLLM's GPU freed, trainer log kept
    (transition,) = [t for t in plan.transitions if t.ctype == "Failed"]
    assert transition.warning  # an Event of its own
    # an older trainer without a report still fails without a retry
    bare = a_pod(
        "papillon-trainer-0",
        "trainer",
        "Failed",
        containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": exit_codes.INVALID_JOB}}}],
    )
    plan = decide(observe(pods=(bare, a_pod("papillon-inference-0", "inference")), job_spec=s), SETTINGS)
    assert cond(plan, "Failed")["reason"] == "InvalidJob" and plan.status["restarts"] == 0


def test_a_run_directory_of_another_job_fails_the_job_with_the_trainers_refusal(tmp_path: Path):
    """Job 'second' finds job papillon's record in its run directory: the trainer refuses before any model loads,
    and what it leaves in the termination message is the job's Failed condition, with no retry."""
    first = resolved(Job("papillon", "ns", "uid-a", spec()), SETTINGS).config.owner
    second = resolved(Job("second", "ns", "uid", spec()), SETTINGS).config
    assert first is not None and second.owner is not None
    claim_run_dir(tmp_path, first)
    with pytest.raises(ForeignRunError) as raised:
        check_owner(tmp_path, second.owner)
    trainer = exited_trainer(exit_codes.INVALID_JOB, termination_message(refusal(second, raised.value)))
    plan = decide(observe(pods=(trainer, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    failed = cond(plan, "Failed")
    assert (failed["status"], failed["reason"], plan.status["restarts"]) == ("True", "ForeignRunDirectory", 0)
    assert "folder runs/second of claim 'second-run'" in failed["message"]
    assert "holds the run of job 'ns/papillon' (uid uid-a) (job.json), not of this job 'ns/second'" in failed["message"]
    assert "spec.storage.existingClaim" in failed["message"] and "no retry" in failed["message"]


def test_a_failed_code_fetch_is_named_with_its_error_and_retried():
    """An init container (git clone, pip install of spec.code) failed: maybe the network; a retry may succeed."""
    error = "ERROR grpo_trainer.usercode.fetch: git clone https://git.example/t.git exited 128: fatal: not found"
    pod = a_pod(
        "papillon-trainer-0",
        "trainer",
        "Failed",
        initContainerStatuses=[
            {"name": "code-0", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": error}}}
        ],
        containerStatuses=[{"name": "trainer", "state": {"waiting": {"reason": "PodInitializing"}}}],
    )
    plan = decide(observe(pods=(pod, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    assert plan.status["restarts"] == 1
    (event,) = plan.events
    assert "exit code 1, init container code-0 Error" in event.message and "fatal: not found" in event.message


def test_succeeded_trainer_completes_the_job_and_frees_vllm():
    done = a_pod("papillon-trainer-0", "trainer", "Succeeded")
    plan = decide(observe(pods=(done, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    assert state(plan.status) == "Succeeded"
    assert plan.status["completionTime"] == "2026-11-25T12:00:00Z"
    assert plan.delete_pods == ["papillon-inference-0"]
    assert cond(plan, "Training")["status"] == "False"
    assert any(t.ctype == "Succeeded" and t.status == "True" for t in plan.transitions)


def test_a_retained_volume_is_released_from_its_job_when_the_job_finishes_and_only_then():
    storage = spec().storage.model_dump(by_alias=True, exclude_none=True)
    keep = spec(storage={**storage, "retainOnDelete": True})
    running = decide(observe(pods=running_pair(), job_spec=keep), SETTINGS)
    assert running.release_claims == []  # deleting a running job still deletes its volume

    done = (a_pod("papillon-trainer-0", "trainer", "Succeeded"), a_pod("papillon-inference-0", "inference"))
    plan = decide(observe(pods=done, job_spec=keep), SETTINGS)
    assert state(plan.status) == "Succeeded" and plan.release_claims == ["papillon-run"]
    assert decide(observe(pods=done), SETTINGS).release_claims == []  # not asked for: owned to the end
    # once released (no longer the job's), a finished job leaves it alone
    finished = decide(observe(status=plan.status, pods=done[:1], job_spec=keep, pvc_exists=False), SETTINGS)
    assert finished.release_claims == [] and state(finished.status) == "Succeeded"


def test_a_new_job_does_not_mount_the_volume_an_earlier_job_of_its_name_kept():
    """Mounting it silently would resume the old run from its checkpoints: the user chooses."""
    plan = decide(observe(pvc_exists=False, config_map_data=None, service_exists=False, retained_claim=True), SETTINGS)
    assert plan.create == []
    created = cond(plan, "Created")
    assert created["status"] == "False" and "storage.existingClaim: papillon-run" in created["message"]
    assert "storage.retainOnDelete" in created["message"]


def serving_spec() -> Any:
    return spec(serve={"enabled": True})


def test_a_succeeded_job_with_serve_keeps_vllm_serving_its_result_until_serve_is_turned_off():
    result = {"path": "result", "adapter": "result/adapter", "step": 7, "valScore": 0.9, "baseModel": "m"}
    done = (a_pod("papillon-trainer-0", "trainer", "Succeeded"), a_pod("papillon-inference-0", "inference"))
    plan = decide(observe(pods=done, job_spec=serving_spec(), progress={"result": result}), SETTINGS)
    assert state(plan.status) == "Succeeded" and plan.delete_pods == [] and plan.create == []
    endpoint = plan.status["endpoint"]
    key = {"name": "papillon-vllm-key-uid", "key": "api-key"}
    url = "http://papillon-vllm.ns.svc.cluster.local:8000/v1"
    assert endpoint == {"url": url, "model": "papillon", "apiKeySecretRef": key}
    ready = cond(plan, "InferenceReady")
    assert (ready["status"], ready["reason"]) == ("True", "Serving") and endpoint["url"] in ready["message"]

    # vLLM lost after the job finished: the next attempt serves the result adapter from its command line
    lost = a_pod("papillon-inference-0", "inference", "Failed", reason="Evicted", message="node pressure")
    plan = decide(observe(status=plan.status, pods=(done[0], lost), job_spec=serving_spec()), SETTINGS)
    assert plan.delete_pods == ["papillon-inference-0"] and plan.status["inferenceRestarts"] == 1
    (pod,) = plan.create
    argv = pod["spec"]["containers"][0]["command"]
    assert argv[argv.index("--lora-modules") + 1] == "papillon=/mnt/grpo/result/adapter"
    assert pod["metadata"]["name"] == "papillon-inference-1"

    # serve turned off: the pod goes, and with it the endpoint
    off = decide(observe(status=plan.status, pods=done), SETTINGS)
    assert off.delete_pods == ["papillon-inference-0"] and off.status["endpoint"] is None  # removed by the patch


def test_a_failed_job_or_one_whose_base_model_won_serves_no_adapter():
    failed = a_pod("papillon-trainer-0", "trainer", "Failed", exit_code=1)
    status = {"restarts": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                             "lastTransitionTime": "2026-11-25T11:00:00Z"}]}  # fmt: skip
    plan = decide(observe(status=status, pods=(failed, a_pod("papillon-inference-0", "inference")),
                          job_spec=serving_spec()), SETTINGS)  # fmt: skip
    assert plan.delete_pods == ["papillon-inference-0"] and plan.status.get("endpoint") is None
    done = (a_pod("papillon-trainer-0", "trainer", "Succeeded"),)
    base = {"path": "result", "step": 0, "valScore": 0.5, "baseModel": "m"}  # no adapter beat the base
    plan = decide(observe(pods=done, job_spec=serving_spec(), progress={"result": base}), SETTINGS)
    (pod,) = plan.create  # no vLLM pod left: one is started, serving the base model
    assert "--lora-modules" not in pod["spec"]["containers"][0]["command"]
    assert plan.status["endpoint"]["model"] == spec().model.name
    with_adapter = {**base, "adapter": "result/adapter", "step": 3}
    plan = decide(observe(pods=done, job_spec=serving_spec(), progress={"result": with_adapter}), SETTINGS)
    (pod,) = plan.create  # the serving pod, not a training one
    assert "papillon=/mnt/grpo/result/adapter" in pod["spec"]["containers"][0]["command"]


def test_a_changed_trainer_option_is_said_to_apply_from_the_next_attempt():
    """spec.trainer may change while the pod runs; the running pod keeps what it started with."""
    from grpo_operator.children import trainer_pod
    from grpo_operator.controller.conditions import pod_view

    started = trainer_pod(Job("papillon", "ns", "uid", spec()), SETTINGS, 0)
    started["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    pods = (pod_view(started), a_pod("papillon-inference-0", "inference"))
    same = decide(observe(pods=pods), SETTINGS)
    assert cond(same, "Training")["message"] == "trainer running"
    moved = decide(observe(pods=pods, job_spec=spec(trainer={"nodeSelector": {"pool": "h100"}})), SETTINGS)
    training = cond(moved, "Training")
    assert training["status"] == "True" and "spec.trainer (or the operator's defaults) changed" in training["message"]
    assert "applies from the next attempt" in training["message"] and moved.delete_pods == []


def test_vllm_loss_recreates_it_while_the_trainer_keeps_running():
    lost = a_pod("papillon-inference-0", "inference", "Failed", reason="Evicted", message="node pressure")
    plan = decide(observe(pods=(a_pod("papillon-trainer-0", "trainer"), lost)), SETTINGS)
    assert plan.status["inferenceRestarts"] == 1
    assert plan.delete_pods == ["papillon-inference-0"]
    assert created_names(plan) == ["Pod/papillon-inference-1"]
    assert cond(plan, "InferenceReady")["reason"] == "InferenceRestarting"
    assert state(plan.status) == "Training" and plan.status["restarts"] == 0


def test_suspend_deletes_pods_keeps_volume_and_resume_recreates():
    s = spec(suspend=True)
    plan = decide(observe(pods=running_pair(), job_spec=s), SETTINGS)
    assert sorted(plan.delete_pods) == ["papillon-inference-0", "papillon-trainer-0"]
    assert plan.create == []  # PVC, ConfigMap and Service exist and stay
    assert state(plan.status) == "Suspended"
    resumed = decide(observe(plan.status, ()), SETTINGS)
    assert created_names(resumed) == ["Pod/papillon-inference-0", "Pod/papillon-trainer-0"]
    assert cond(resumed, "Suspended")["status"] == "False"


def test_the_deadline_counts_from_the_trainer_running_and_afresh_after_a_suspend():
    s = spec(runPolicy={"activeDeadlineSeconds": 600})
    pending = a_pod("papillon-trainer-0", "trainer", "Pending", ready=False, node=None)
    queued = decide(observe(pods=(pending,), now=T0 + timedelta(hours=5), job_spec=s), SETTINGS)
    assert "startTime" not in queued.status and state(queued.status) != "Failed"  # hours queued: not run time
    running = decide(observe(pods=running_pair(), now=T0, job_spec=s), SETTINGS)
    assert running.status["startTime"] == "2026-11-25T12:00:00Z"
    paused = spec(runPolicy={"activeDeadlineSeconds": 600}, suspend=True)
    suspended = decide(observe(running.status, running_pair(), T0 + timedelta(seconds=500), job_spec=paused), SETTINGS)
    assert suspended.status["startTime"] is None  # removed by the merge patch
    resumed_status = {k: v for k, v in suspended.status.items() if v is not None}
    overnight = T0 + timedelta(hours=12)
    resumed = decide(observe(resumed_status, running_pair(), overnight, job_spec=s), SETTINGS)
    assert state(resumed.status) == "Training" and resumed.status["startTime"] == "2026-11-26T00:00:00Z"


def test_active_deadline_fails_the_job():
    s = spec(runPolicy={"activeDeadlineSeconds": 600})
    status = {"startTime": "2026-11-25T12:00:00Z"}
    before = decide(observe(status, running_pair(), T0 + timedelta(seconds=599), job_spec=s), SETTINGS)
    assert state(before.status) == "Training"
    after = decide(observe(status, running_pair(), T0 + timedelta(seconds=600), job_spec=s), SETTINGS)
    assert cond(after, "Failed")["reason"] == "DeadlineExceeded"
    assert sorted(after.delete_pods) == ["papillon-inference-0", "papillon-trainer-0"]


def test_ttl_after_finished_deletes_the_job():
    s = spec(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(observe(pods=(a_pod("papillon-trainer-0", "trainer", "Succeeded"),), job_spec=s), SETTINGS)
    assert not done.delete_job
    soon = decide(observe(done.status, (), T0 + timedelta(seconds=59), job_spec=s), SETTINGS)
    assert not soon.delete_job
    late = decide(observe(done.status, (), T0 + timedelta(seconds=60), job_spec=s), SETTINGS)
    assert late.delete_job


def test_missing_secret_and_claim_are_named_and_no_pod_is_created():
    missing = ("Secret 'openai-api-key' not found in namespace 'ns' (needed for key 'api-key')",)
    plan = decide(observe(pvc_exists=False, config_map_data=None, service_exists=False, missing=missing), SETTINGS)
    assert plan.create == []
    created = cond(plan, "Created")
    assert created["status"] == "False" and created["reason"] == "MissingReference"
    assert "openai-api-key" in created["message"]
    assert cond(plan, "Training")["reason"] == "MissingReference"
    assert any(t.warning for t in plan.transitions)


def test_unschedulable_trainer_is_reported_with_the_schedulers_words():
    msg = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    pending = a_pod(
        "papillon-trainer-0", "trainer", "Pending", ready=False,
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}],
    )  # fmt: skip
    plan = decide(observe(pods=(pending, a_pod("papillon-inference-0", "inference"))), SETTINGS)
    training = cond(plan, "Training")
    assert training["reason"] == "Unschedulable" and msg in training["message"]
    assert plan.create == [] and plan.delete_pods == []
    assert any(t.reason == "Unschedulable" and t.warning for t in plan.transitions)


def unplaced(name: str, component: str, since: datetime, message: str) -> Any:
    """A pod the scheduler has failed to place since ``since`` (no node)."""
    return a_pod(
        name, component, "Pending", ready=False, node=None,
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}],
    )  # fmt: skip


BESIDE = "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) didn't match pod affinity rules."


def test_rwo_pods_that_cannot_share_a_node_are_both_recreated_off_it_after_the_wait():
    """The trainer took a node with no GPU left for vLLM: after replace_unplaceable_seconds both
    go, and the next attempt's pods (same names) are kept off that node."""
    trainer = a_pod("papillon-trainer-0", "trainer", node="gpu-a")
    wait = SETTINGS.replace_unplaceable_seconds
    early = unplaced("papillon-inference-0", "inference", T0 - timedelta(seconds=wait - 5), BESIDE)
    plan = decide(observe(pods=(trainer, early)), SETTINGS)
    assert plan.delete_pods == [] and "placement" not in plan.status
    assert cond(plan, "InferenceReady")["reason"] == "Unschedulable"

    stuck = unplaced("papillon-inference-0", "inference", T0 - timedelta(seconds=wait + 1), BESIDE)
    plan = decide(observe(pods=(trainer, stuck)), SETTINGS)
    assert sorted(plan.delete_pods) == ["papillon-inference-0", "papillon-trainer-0"] and plan.create == []
    assert plan.status["placement"] == {"avoidNodes": ["gpu-a"], "replacements": 1}
    assert plan.status["restarts"] == 0 and plan.status["interruptions"] == 0  # not a failure, same attempt
    for ctype in ("Training", "InferenceReady"):
        assert cond(plan, ctype)["reason"] == "Replacing"
        assert "papillon-inference-0" in cond(plan, ctype)["message"] and "gpu-a" in cond(plan, ctype)["message"]
    warned = [t for t in plan.transitions if t.reason == "Replacing"]
    assert warned and all(t.warning for t in warned) and all(BESIDE in t.message for t in warned)
    assert GRPOJobStatus.model_validate(plan.status).placement.avoid_nodes == ["gpu-a"]  # the CRD keeps it

    # once both are gone: recreated under the same names, both kept off gpu-a, beside each other
    plan = decide(observe(status=plan.status, pods=()), SETTINGS)
    made = {m["metadata"]["name"]: m for m in plan.create if m["kind"] == "Pod"}
    assert sorted(made) == ["papillon-inference-0", "papillon-trainer-0"]
    for pod in made.values():
        affinity = pod["spec"]["affinity"]
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["gpu-a"]}]}]
        assert affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]


def test_when_neither_pod_fits_off_the_avoided_nodes_they_are_forgotten_and_every_node_tried_again():
    late = T0 - timedelta(seconds=SETTINGS.replace_unplaceable_seconds + 1)
    status = {"placement": {"avoidNodes": ["gpu-a", "gpu-b"], "replacements": 2}}
    pods = (
        unplaced("papillon-trainer-0", "trainer", late, "0/2 nodes are available: 2 node(s) didn't match affinity."),
        unplaced("papillon-inference-0", "inference", late, BESIDE),
    )
    plan = decide(observe(status=status, pods=pods), SETTINGS)
    assert plan.status["placement"] == {"avoidNodes": [], "replacements": 3}
    assert sorted(plan.delete_pods) == ["papillon-inference-0", "papillon-trainer-0"]
    # with nothing avoided, two unplaceable pods are only reported (the scheduler's words)
    plan = decide(observe(pods=pods), SETTINGS)
    assert plan.delete_pods == [] and cond(plan, "Training")["reason"] == "Unschedulable"


def test_no_replacement_for_shared_volumes_kueue_jobs_or_when_turned_off():
    trainer = a_pod("papillon-trainer-0", "trainer", node="gpu-a")
    stuck = unplaced("papillon-inference-0", "inference", T0 - timedelta(hours=1), BESIDE)
    storage = spec().storage.model_dump(by_alias=True, exclude_none=True)
    cases = [
        (spec(storage={**storage, "accessMode": "ReadWriteMany"}), SETTINGS),
        (spec(queueName="gpu-queue"), SETTINGS),
        (spec(), SETTINGS.model_copy(update={"replace_unplaceable_seconds": 0})),
    ]
    for job_spec, settings in cases:
        plan = decide(observe(pods=(trainer, stuck), job_spec=job_spec), settings)
        assert plan.delete_pods == [] and "placement" not in plan.status, job_spec


def test_kueue_gated_pods_wait_for_admission():
    gated = a_pod(
        "papillon-inference-0", "inference", "Pending", ready=False,
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated", "message": "Scheduling is blocked due to non-empty scheduling gates"}],
    )  # fmt: skip
    plan = decide(observe(pods=(gated,)), SETTINGS)
    assert cond(plan, "InferenceReady")["reason"] == "WaitingForAdmission"


def test_config_map_drift_is_replaced():
    plan = decide(observe(pods=running_pair(), config_map_data={"config.json": "{}"}), SETTINGS)
    assert [m["metadata"]["name"] for m in plan.replace] == ["papillon-config"]


def test_invalid_spec_is_a_condition_not_a_crash():
    obs = Observed(
        "papillon", "ns", "uid", 3, None, "spec.grpo.num_train_steps: must be >= 1", {}, False, None, False, (), now=T0
    )
    plan = decide(obs, SETTINGS)
    created = cond(plan, "Created")
    assert (created["status"], created["reason"]) == ("False", "InvalidSpec")
    assert "num_train_steps" in created["message"] and plan.create == []
    assert plan.status["observedGeneration"] == 3


# --------------------------------------------------------------------------- spec.export

EXPORT = {
    "destinations": [
        {"claim": {"claimName": "models"}},
        {"s3": {"bucket": "ml-models", "credentialsSecretRef": {"name": "minio"}}},
    ],
    "backoffLimit": 1,
}
HUB = {"hub": {"repoId": "team-a/papillon", "tokenSecretRef": {"name": "hf-write"}}}


def export_spec(export: dict | None = None, **changes: Any):
    return spec(export=export or EXPORT, **changes)


def export_report(s, outcomes: dict[int, str | None], step: int = 7) -> str:
    """The export pod's termination message: index -> error (None: exported)."""
    from grpo_operator.resolve import destination_hash, destination_name
    from grpo_trainer.contract.export import Exported, ExportReport

    destinations = []
    for i, error in outcomes.items():
        d = s.export.destinations[i]
        where = None if error else f"where-{i}"
        destinations.append(Exported(index=i, name=destination_name(d, "papillon"), spec_hash=destination_hash(d),
                                     merged=d.merged, location=where, error=error))  # fmt: skip
    return ExportReport(job="papillon", step=step, adapter=True, destinations=destinations).termination_message()


def exited(name: str, code: int, message: str = "", component: str = "export", **terminated: Any):
    state = {"exitCode": code, "message": message, **terminated}
    phase = "Succeeded" if code == 0 else "Failed"
    return a_pod(name, component, phase, containerStatuses=[{"name": component, "state": {"terminated": state}}])


def export_targets(plan: Plan) -> list[int]:
    (pod,) = [m for m in plan.create if m["metadata"]["name"].startswith("papillon-export-")]
    argv = pod["spec"]["containers"][0]["command"]
    return [t["index"] for t in json.loads(argv[argv.index("--plan") + 1])["targets"]]


def test_a_succeeded_job_exports_its_result_once_and_records_where_it_went():
    s = export_spec()
    done = a_pod("papillon-trainer-0", "trainer", "Succeeded")
    plan = decide(observe(pods=(done, a_pod("papillon-inference-0", "inference")), job_spec=s), SETTINGS)
    assert cond(plan, "Succeeded")["status"] == "True"
    assert created_names(plan) == ["Pod/papillon-export-0"] and export_targets(plan) == [0, 1]
    assert plan.status["export"]["phase"] == "Exporting" and plan.status["export"]["pod"] == "papillon-export-0"
    assert (cond(plan, "Exported")["status"], cond(plan, "Exported")["reason"]) == ("Unknown", "Exporting")
    assert state(plan.status) == "Succeeded"

    running = decide(observe(plan.status, (done, a_pod("papillon-export-0", "export")), job_spec=s), SETTINGS)
    assert running.create == [] and running.delete_pods == [] and cond(running, "Exported")["status"] == "Unknown"

    finished = exited("papillon-export-0", 0, export_report(s, {0: None, 1: None}))
    exported = decide(observe(running.status, (done, finished), job_spec=s), SETTINGS)
    record = exported.status["export"]
    assert record["phase"] == "Exported" and exported.create == [] and exported.delete_pods == []  # kept for its logs
    assert [d["location"] for d in record["destinations"]] == ["where-0", "where-1"]
    assert all(d["step"] == 7 and d["exportedAt"] and d["specHash"] for d in record["destinations"])
    message = cond(exported, "Exported")["message"]
    assert cond(exported, "Exported")["status"] == "True"
    assert "claim models:/papillon -> where-0" in message and "s3://ml-models/papillon -> where-1" in message
    GRPOJobStatus.model_validate(exported.status)
    assert any(t.ctype == "Exported" and t.status == "True" for t in exported.transitions)

    # the same spec.export: never again, whatever becomes of the pod
    for pods in ((done, finished), (done,)):
        again = decide(observe(exported.status, pods, T0 + timedelta(hours=1), job_spec=s), SETTINGS)
        assert again.create == [] and again.delete_pods == [] and again.transitions == []


def test_a_failed_export_is_retried_then_reported_and_the_job_stays_succeeded():
    s = export_spec()
    done = a_pod("papillon-trainer-0", "trainer", "Succeeded")
    start = decide(observe(pods=(done,), job_spec=s), SETTINGS)
    half = exited("papillon-export-0", 1, export_report(s, {0: None, 1: "ClientError: NoSuchBucket"}))
    retry = decide(observe(start.status, (done, half), job_spec=s), SETTINGS)
    assert retry.delete_pods == ["papillon-export-0"] and created_names(retry) == ["Pod/papillon-export-1"]
    assert export_targets(retry) == [1]  # the claim is exported already
    assert (retry.status["export"]["attempt"], retry.status["export"]["failures"]) == (1, 1)
    (event,) = retry.events
    assert (event.type, event.reason) == ("Warning", "ExportFailed") and "NoSuchBucket" in event.message
    assert cond(retry, "Exported")["status"] == "Unknown" and cond(retry, "Succeeded")["status"] == "True"

    # the retry is OOM-killed (no report): the backoffLimit is spent, the export failed, the job did not
    oom = exited("papillon-export-1", 137, reason="OOMKilled")
    failed = decide(observe(retry.status, (done, oom), job_spec=s), SETTINGS)
    assert failed.create == [] and failed.status["export"]["phase"] == "Failed"
    exported_cond = cond(failed, "Exported")
    assert (exported_cond["status"], exported_cond["reason"]) == ("False", "ExportFailed")
    assert "claim models:/papillon -> where-0" in exported_cond["message"] and "OOMKilled" in exported_cond["message"]
    assert cond(failed, "Succeeded")["status"] == "True" and cond(failed, "Failed")["status"] == "False"
    assert state(failed.status) == "Succeeded"
    GRPOJobStatus.model_validate(failed.status)
    assert decide(observe(failed.status, (done, oom), job_spec=s), SETTINGS).create == []


def test_a_changed_export_exports_what_it_adds_and_nothing_twice():
    s = export_spec()
    done = a_pod("papillon-trainer-0", "trainer", "Succeeded")
    start = decide(observe(pods=(done,), job_spec=s), SETTINGS)
    finished = exited("papillon-export-0", 0, export_report(s, {0: None, 1: None}))
    exported = decide(observe(start.status, (done, finished), job_spec=s), SETTINGS)

    # grpo export adds a hub destination: only it is exported, by the next pod; the last one goes
    more = export_spec({**EXPORT, "destinations": [*EXPORT["destinations"], HUB]})
    plan = decide(observe(exported.status, (done, finished), job_spec=more), SETTINGS)
    assert created_names(plan) == ["Pod/papillon-export-1"] and export_targets(plan) == [2]
    assert plan.delete_pods == ["papillon-export-0"]
    kept = plan.status["export"]["destinations"]
    assert [d.get("location") for d in kept] == ["where-0", "where-1", None]
    env = {e["name"] for e in plan.create[0]["spec"]["containers"][0]["env"]}
    assert "GRPO_EXPORT_2_HF_TOKEN" in env and "GRPO_EXPORT_1_AWS_ACCESS_KEY_ID" not in env

    # a change that exports nothing new (the retry budget): settled at once, no pod
    calmer = export_spec({**EXPORT, "backoffLimit": 5})
    same = decide(observe(exported.status, (done, finished), job_spec=calmer), SETTINGS)
    assert same.create == [] and same.delete_pods == [] and same.status["export"]["phase"] == "Exported"
    assert cond(same, "Exported")["status"] == "True"


def test_an_export_waits_for_success_and_says_so_and_a_failed_job_exports_nothing():
    s = export_spec(runPolicy={"backoffLimit": 0})
    training = decide(observe(pods=running_pair(), job_spec=s), SETTINGS)
    assert (cond(training, "Exported")["status"], cond(training, "Exported")["reason"]) == ("False", "NotFinished")
    assert not [m for m in training.create if "export" in m["metadata"]["name"]]
    crashed = exited("papillon-trainer-0", 1, component="trainer")
    failed = decide(observe(pods=(crashed,), job_spec=s), SETTINGS)
    assert cond(failed, "Failed")["status"] == "True" and cond(failed, "Exported")["reason"] == "NotExported"
    assert decide(observe(failed.status, (crashed,), job_spec=s), SETTINGS).create == []
    # a job without spec.export has no Exported condition at all
    plain = decide(observe(pods=running_pair()), SETTINGS)
    assert "Exported" not in {c["type"] for c in plain.status["conditions"]}


def test_the_ttl_waits_for_an_export_under_way():
    s = export_spec(runPolicy={"ttlSecondsAfterFinished": 0})
    done = a_pod("papillon-trainer-0", "trainer", "Succeeded")
    start = decide(observe(pods=(done,), job_spec=s), SETTINGS)
    later = T0 + timedelta(minutes=5)
    busy = decide(observe(start.status, (done, a_pod("papillon-export-0", "export")), later, job_spec=s), SETTINGS)
    assert not busy.delete_job
    finished = exited("papillon-export-0", 0, export_report(s, {0: None, 1: None}))
    assert decide(observe(busy.status, (done, finished), later, job_spec=s), SETTINGS).delete_job


def test_a_lost_export_pod_is_recreated_and_a_removed_export_is_stopped():
    s = export_spec(serve={"enabled": True})
    done = a_pod("papillon-trainer-0", "trainer", "Succeeded")
    vllm = a_pod("papillon-inference-0", "inference")
    start = decide(observe(pods=(done, vllm), job_spec=s), SETTINGS)
    (pod,) = [m for m in start.create if m["metadata"]["name"] == "papillon-export-0"]
    # the serving vLLM pod holds the ReadWriteOnce volume: the export pod goes to its node
    (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "inference"
    lost = decide(observe(start.status, (done, vllm), job_spec=s), SETTINGS)  # evicted, deleted by hand
    assert "Pod/papillon-export-0" in created_names(lost) and lost.status["export"]["attempt"] == 0

    removed = spec(serve={"enabled": True})
    running = a_pod("papillon-export-0", "export")
    stopped = decide(observe(start.status, (done, vllm, running), job_spec=removed), SETTINGS)
    assert stopped.delete_pods == ["papillon-export-0"] and stopped.status["export"]["phase"] == "Cancelled"
    assert cond(stopped, "Exported")["reason"] == "ExportCancelled"
    # put back as it was: exported after all, by the next pod
    back = decide(observe(stopped.status, (done, vllm), job_spec=s), SETTINGS)
    assert created_names(back) == ["Pod/papillon-export-1"]

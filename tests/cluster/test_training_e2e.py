"""A GRPOJob trains for real on the test cluster, survives a killed or stopped trainer and a killed vLLM, and succeeds.

The platform engineer's path with nothing faked but the hardware: the chart is
installed with helm; the operator runs as the chart's ServiceAccount with the
Deployment's settings; ``kubectl apply -f`` creates the job; kube-scheduler places
the operator's pods on a :class:`processnode.ProcessNode`, which runs them as they
are specified -- the trainer pod's command (the trainer, torch on CPU) and the
vLLM pod's (vLLM's CPU build), with their volumes (the run PVC provisioned by
kube-controller-manager, the model and data claims, the ConfigMap), env and
read-only root filesystem. The operator reads the real trainer's /progress into
the job's status.

The job asks for the seed's GPUs (3 training + 1 inference): the trainer runs as
three data-parallel ranks under the pod's launcher (gloo), so the faults below hit a
multi-process trainer: one rank SIGKILLed (the OOM killer's choice) ends the attempt
and the next resumes from the last checkpoint; SIGTERM to the container makes every
rank checkpoint and the pod exit 75 ("interrupted", not a failure). The collective
timeout is 10 s while vLLM takes far longer to start and the main rank validates:
the other ranks wait for it on the launcher's store, not in a collective.

A second test brings a team's own task (examples/own_program, not PAPILLON) without an image:
its program cloned from a git server, its metric packed into a ConfigMap, the package the metric
needs pip-installed from an index (git and index served by the test on loopback, fetched by the
trainer pod's init containers) and the team's settings on a volume; a misspelt importPath fails
its job at once (InvalidProgram, no retry).

Fakes, and why: the GPUs are advertised by the process node, not real (there is
none here): the ranks and vLLM (its CPU build, given the CPU build's one flag in
``inference.extraArgs``) run on the CPU; the images' contents are this machine's
Python environment (no container runtime here; processnode.py says what else a
process node is not). The job is the embedded default (a tiny model, the bundled
PII data), so the run takes minutes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until
from processnode import NODE_LABEL, TOLERATION, ProcessNode, process_node

from grpo_operator.local.default import default_job, default_model_dir
from grpo_trainer.contract.progress import Progress
from grpo_trainer.embedded.bundled import PII_DELEGATION
from support.chart import chart_operator
from support.checkout import SOURCE_DIRS, checkout_env
from support.claims import claim_dir, read_only_claim
from support.cluster_jobs import (
    RESTRICTED,
    cond,
    get_job,
    grpo,
    grpo_command,
    is_true,
    job_exists,
    team_member,
    wait_event,
    wait_job,
)
from support.operator import OperatorProcess, free_port
from support.ranks import alive, rank_pids
from support.served_result import assert_serves_result
from support.trainer_log import steps_done

pytestmark = [pytest.mark.cluster, pytest.mark.processnode, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

JOB = "papillon-tiny"
STEPS = 5
KILL_TRAINER_AT = 2  # completed steps (and checkpoints) when the trainer is killed
INTERRUPT_TRAINER_AT = 3  # ... when its container gets SIGTERM (the pod is not deleted)
KILL_VLLM_AT = 4
TRAINING_GPUS, INFERENCE_GPUS = 3, 1  # the seed's
COLLECTIVE_TIMEOUT = 10  # trainKwargs.ddp_timeout: far below vLLM's start-up and a validation here
# What the trainer logs when vLLM does not answer: a rollout's request failed, or a call to its API is retried.
VLLM_OUTAGE = ("policy sampling failed; waiting for vLLM", "vLLM unavailable")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def job_ns(control_plane: ControlPlane) -> Iterator[str]:
    ns = control_plane.create_namespace(f"training-{uuid.uuid4().hex[:5]}", labels=RESTRICTED)
    yield ns
    control_plane.kubectl("delete", "grpojobs", "--all", "-n", ns, "--wait=true", "--timeout=60s", check=False)
    control_plane.delete_namespace(ns)


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessNode]:
    # the project's packages: this checkout's source folders stand in for the image's site-packages
    gpus = TRAINING_GPUS + INFERENCE_GPUS
    with process_node(control_plane, "cpu-node-0", tmp_path_factory.mktemp("cpu-node-0"), SOURCE_DIRS, gpus=gpus) as n:
        yield n
    assert not n.errors, n.errors


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, job_ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The chart installed for the job's namespace; the operator as its Deployment would run."""
    log = tmp_path_factory.mktemp("training-operator") / "operator.log"
    # The pods share the host's network here: both servers get ports nobody else holds.
    with chart_operator(control_plane, "grpo-train", job_ns, log, {"GRPO_INFERENCE_PORT": str(free_port())}) as proc:
        yield proc


# --------------------------------------------------------------------------- helpers


def job_document(model_dir: Path) -> dict[str, Any]:
    """The embedded default as a cluster job: model and data on claims, pods on the process node."""
    doc = default_job(model_dir)
    doc["metadata"] = {"name": JOB}
    spec = doc["spec"]
    spec["model"] = {"path": model_dir.name, "volume": {"claimName": "models"}}
    spec["data"] = {
        split: {"file": {"path": f"{split}.jsonl", "format": "jsonl", "volume": {"claimName": "pii-data"}}}
        for split in ("train", "validation")
    }
    spec["data"]["validation"]["file"]["path"] = "val.jsonl"
    # Half the default's steps, a validation at the start and the end only, on half the rows. So that the
    # best adapter beats the base model (asserted) in 5 steps: the default's rollouts per step (the groups
    # GRPO learns from) at the rate that peaked around step 5 in bench/RESULTS.md ("learning": at 2e-3,
    # one run here gained only +0.010 on 16 rows).
    spec["grpo"].update(num_train_steps=STEPS, num_steps_for_val=STEPS)
    spec["trainKwargs"]["learning_rate"] = 3e-3
    spec["data"]["validation"]["limit"] = 32
    spec["trainKwargs"].update(
        num_training_gpus=TRAINING_GPUS, num_inference_gpus=INFERENCE_GPUS, ddp_timeout=COLLECTIVE_TIMEOUT
    )
    placement = {"nodeSelector": {NODE_LABEL: "true"}, "tolerations": [TOLERATION]}
    spec["trainer"] = dict(placement)
    # The vLLM pod asks for a GPU; the process node runs the CPU build, which needs what
    # grpo-local gives it on a CPU: whole prefills for seeded requests, and fp32 like the
    # trainer (the served-adapter check). The node gives it the rest (processnode.FAKE_GPU_ENV).
    spec["model"]["dtype"] = "float32"
    spec["inference"] = {**placement, "extraArgs": ["--no-enable-chunked-prefill"]}
    # The GPU pods' defaults ask for a GPU node's memory; the process node has this machine's.
    small = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    spec["trainer"]["resources"] = small
    spec["inference"]["resources"] = small
    spec["storage"] = {"size": "1Gi"}
    spec["runPolicy"] = {"backoffLimit": 2}
    return doc


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*") if p.name[5:].isdigit())


def log_records(lines: list[str]) -> list[dict[str, Any]]:
    """The trainer's JSON log records among these lines."""
    return [json.loads(line) for line in lines if line.startswith("{")]


def log_events(text: str, msg: str) -> list[dict[str, Any]]:
    """The trainer's JSON log records with this message."""
    return [doc for doc in log_records(text.splitlines()) if doc.get("msg") == msg]


def trainer_ranks(node: ProcessNode, ns: str, pod: str) -> dict[int, int]:
    """The trainer container's rank processes: rank -> pid."""
    (launcher,) = node.pids(ns, pod)
    return rank_pids(launcher)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


# --------------------------------------------------------------------------- the test


def test_job_trains_survives_killed_and_stopped_trainer_and_killed_vllm_and_ends_with_the_best_adapter(
    control_plane: ControlPlane, job_ns: str, node: ProcessNode, operator: OperatorProcess, tmp_path: Path
):
    cp, ns = control_plane, job_ns
    model_dir = default_model_dir()
    read_only_claim(cp, ns, "models", model_dir.parent)
    read_only_claim(cp, ns, "pii-data", PII_DELEGATION)
    job_file = tmp_path / "grpojob.yaml"
    job_file.write_text(yaml.safe_dump(job_document(model_dir), sort_keys=False))
    cp.kubectl("apply", "-f", job_file, "-n", ns)

    trainer0, vllm0 = f"{JOB}-trainer-0", f"{JOB}-inference-0"
    job = wait_job(cp, ns, JOB, lambda j: j.get("status", {}).get("step", 0) >= 1, "first step", timeout=900)
    assert cond(job, "InferenceReady")["status"] == "True"  # vLLM's /health, via the readiness probe
    pods = {p["metadata"]["name"]: p for p in cp.get_json("pods", namespace=ns)["items"]}
    assert pods[trainer0]["spec"]["nodeName"] == pods[vllm0]["spec"]["nodeName"] == node.name
    # the job's folder on its volume (provisioned by kube-controller-manager): runs/<job>, as on a shared claim
    assert job["status"]["runPath"] == f"runs/{JOB}"
    run_dir = claim_dir(cp, ns, f"{JOB}-run") / job["status"]["runPath"]

    # progress in `kubectl get` (the operator reads the trainer's /progress on its pod IP)
    row = cp.kubectl("get", "grpojobs", JOB, "-n", ns, "--no-headers").stdout.split()
    assert row[1] == "Training" and int(row[2]) >= 1 and row[3] == str(STEPS) and float(row[4]) > 0, row
    # the trainer's own /metrics, which the chart's PodMonitor scrapes
    trainer_ip = cp.get_json("pod", trainer0, namespace=ns)["status"]["podIP"]
    metrics = http_get(f"http://{trainer_ip}:{operator.env['GRPO_TRAINER_PORT']}/metrics")
    assert "grpo_trainer_step" in metrics, metrics[:2000]

    ranks = trainer_ranks(node, ns, trainer0)
    assert sorted(ranks) == list(range(TRAINING_GPUS)), ranks  # one process per (advertised) GPU

    # --- one rank dies (SIGKILL, as the OOM killer would) after a checkpoint: the attempt ends
    wait_job(cp, ns, JOB, lambda j: j["status"].get("step", 0) >= KILL_TRAINER_AT, "step 2", timeout=900)
    saved = checkpoints(run_dir)
    os.kill(ranks[1], signal.SIGKILL)
    job = wait_job(cp, ns, JOB, lambda j: j["status"].get("restarts") == 1, "a trainer restart", timeout=120)
    assert job["status"]["trainerPod"] == f"{JOB}-trainer-1"
    (failed,) = wait_event(cp, ns, "TrainerFailed")
    # the launcher's verdict (1: a rank died), not the dead rank's own 137
    assert re.search(rf"pod {trainer0} failed, exit code 1\b", failed["message"]), failed["message"]
    assert all(not alive(pid) for pid in ranks.values()), "ranks outlived their attempt"

    wait_job(cp, ns, JOB, lambda j: j["status"].get("step", 0) >= INTERRUPT_TRAINER_AT, "step 3", timeout=900)
    resumed = log_events(node.logs(ns, f"{JOB}-trainer-1"), "resumed from checkpoint")
    assert len(resumed) == 1 and resumed[0]["step"] >= max(saved), (resumed, saved)  # at most one step lost

    # --- the trainer's container is stopped (SIGTERM): every rank checkpoints and the container
    # exits "interrupted"; the job resumes without spending its backoffLimit
    node.kill(ns, f"{JOB}-trainer-1", sig=signal.SIGTERM)
    job = wait_job(cp, ns, JOB, lambda j: j["status"].get("interruptions") == 1, "an interruption", timeout=300)
    assert job["status"]["restarts"] == 1 and job["status"]["trainerPod"] == f"{JOB}-trainer-2"
    assert not is_true("Succeeded")(job) and not is_true("Failed")(job)
    (interrupted,) = wait_event(cp, ns, "TrainerInterrupted")
    assert f"pod {JOB}-trainer-1 failed, exit code 75" in interrupted["message"], interrupted["message"]

    wait_job(cp, ns, JOB, lambda j: j["status"].get("step", 0) >= KILL_VLLM_AT, "step 4 after the resume", timeout=900)

    # --- vLLM dies: its container is restarted in place (restartPolicy Always), the trainer waits and re-serves
    trainer2 = f"{JOB}-trainer-2"
    logged = len(node.logs(ns, trainer2).splitlines())  # the trainer's log up to the kill
    node.kill(ns, vllm0, sig=signal.SIGKILL)
    wait_until(
        lambda: cp.get_json("pod", vllm0, namespace=ns)["status"]["containerStatuses"][0]["restartCount"] == 1,
        timeout=60,
        what="vLLM container restarted",
    )

    # --- the job finishes
    job = wait_job(cp, ns, JOB, is_true("Succeeded"), "Succeeded=True", timeout=1500)
    status = job["status"]
    assert status["restarts"] == 1 and status["interruptions"] == 1 and status["completionTime"]
    # the trainer met the outage (a failed request, then waiting for vLLM), then served its adapter again
    # to the restarted vLLM (loaded anew, not found loaded) and trained on
    after_kill = [doc["msg"] for doc in log_records(node.logs(ns, trainer2).splitlines()[logged:])]
    met = [i for i, msg in enumerate(after_kill) if msg.startswith(VLLM_OUTAGE)]
    assert met, f"the trainer never met the vLLM outage: {after_kill}"
    served = [msg for msg in after_kill[met[0] :] if msg.startswith("published policy-v")]
    assert served, f"no adapter published to the restarted vLLM: {after_kill[met[0]:]}"
    # the best adapter is this run's, and beats the base model on validation (best includes the baseline)
    baseline, best_score = status["baselineValScore"], status["bestValScore"]
    print(f"validation: baseline {baseline:.4f}, best {best_score:.4f} at step {status.get('bestStep')}")
    assert status.get("bestStep") == STEPS and best_score > baseline, (baseline, best_score, status.get("bestStep"))
    row = cp.kubectl("get", "grpojobs", JOB, "-n", ns, "--no-headers").stdout.split()
    assert row[1:4] == ["Succeeded", str(STEPS), str(STEPS)], row

    # the best adapter and the last one are on the volume; vLLM served exactly the last one
    progress = Progress.read(run_dir)
    assert progress is not None and progress.step == STEPS
    assert (run_dir / "adapters" / f"step-{STEPS}" / "adapter_model.safetensors").is_file()
    best = status["bestStep"]
    assert status["bestAdapterVersion"] == f"policy-v{best}"
    assert (run_dir / "adapters" / f"step-{best}" / "adapter_model.safetensors").is_file()
    # what a pipeline reads (kubectl get -o jsonpath='{.status.result}'): the best, kept in result/ on the volume
    result = status["result"]
    assert (result["path"], result["step"], result["finished"]) == ("result", best, True), result
    assert result["valScore"] == status["bestValScore"] and result["baseModel"]
    assert result["adapter"] == "result/adapter"
    assert (run_dir / "result" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        run_dir / "adapters" / f"step-{best}" / "adapter_model.safetensors"
    ).read_bytes()
    assert json.loads((run_dir / "result" / "result.json").read_text())["job"] == JOB
    check = progress.served_check
    assert check is not None and check["adapter"] == f"policy-v{STEPS}", check
    assert check["served_vs_disk"] <= 1e-3, check
    # the trainer's last word, kept in its pod's status (the operator reads the final numbers there)
    trainer = cp.get_json("pod", status["trainerPod"], namespace=ns)
    final = json.loads(trainer["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert final["phase"] == "done" and final["step"] == STEPS and final["best_val_score"] == status["bestValScore"]

    # the vLLM pod is freed once the job is done (deleted gracefully: its process is gone)
    wait_until(lambda: not node.pids(ns, vllm0), timeout=90, what="vLLM stopped after success")
    text = operator.metrics()
    assert f'grpo_job_step{{name="{JOB}",namespace="{ns}"}} {float(STEPS)}' in text
    assert f'grpo_job_state{{name="{JOB}",namespace="{ns}",state="Succeeded"}} 1.0' in text
    assert get_job(cp, ns, JOB)["status"]["step"] == STEPS


# --------------------------------------------------------------------------- the user's own code

OWN_PROGRAM = Path(__file__).resolve().parents[2] / "examples" / "own_program"
OWN_STEPS = 3


def own_program_job(model_dir: Path, name: str, program: str) -> dict[str, Any]:
    """A task that is not PAPILLON (examples/own_program), on the CPU; its code comes with the test."""
    doc = job_document(model_dir)
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec["program"] = {"importPath": program}
    spec["metric"] = {"importPath": "topics.metric:topic_match"}
    spec["data"] = {
        "train": {"file": {"path": "train.jsonl", "volume": {"claimName": "topics-data"}}},
        "validation": {"file": {"path": "val.jsonl", "volume": {"claimName": "topics-data"}}},
    }
    spec["grpo"].update(num_train_steps=OWN_STEPS, num_steps_for_val=OWN_STEPS, num_samples_per_input=4)
    spec["trainKwargs"].update(num_training_gpus=0, num_inference_gpus=0)
    spec["runPolicy"] = {"backoffLimit": 2}
    return doc


# A notebook's metrics for the team's program: one that raises, one that scores the topic.
BROKEN_METRIC = "def score(gold, pred, trace=None):\n    raise ValueError('no gold topic here')\n"
TOPIC_METRIC = (
    "def score(gold, pred, trace=None):\n"
    "    return float(str(pred.topic).strip().lower() == str(gold.topic).strip().lower())\n"
)


def compile_topics(ns: str, kubeconfig: Path, model_dir: Path, work: Path, name: str, metric_source: str) -> Any:
    """GRPO(...).compile() of the team's program on the cluster, as a notebook's process runs it: the metric is
    defined in a module of the notebook's folder (shipped with the job), one step on 8 examples. Returns the
    optimized program, bound to the served result through a port-forward from here."""
    import dspy

    from grpo_operator.client import GRPO, ClusterBackend
    from grpo_operator.local.display import LineDisplay

    folder = work / f"notebook-{name}"
    folder.mkdir()
    module = f"{name.replace('-', '_')}_metric"  # e.g. topics_compiled_metric, named in the job's errors
    (folder / f"{module}.py").write_text(metric_source)
    sys.path[:0] = [str(OWN_PROGRAM), str(folder)]
    try:
        score = __import__(module).score
        from topics.program import Topic  # type: ignore[import-not-found]

        student = Topic()
        student.set_lm(dspy.LM("openai/unused"))
        rows = [json.loads(line) for line in (OWN_PROGRAM / "data" / "train.jsonl").read_text().splitlines()[:8]]
        examples = [dspy.Example(**r).with_inputs("text") for r in rows]
        placement = {"nodeSelector": {NODE_LABEL: "true"}, "tolerations": [TOLERATION]}
        small = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
        compiler = GRPO(
            metric=score,
            num_train_steps=1,
            num_samples_per_input=2,
            train_kwargs={"num_training_gpus": 0, "num_inference_gpus": 0},
            model={"path": model_dir.name, "volume": {"claimName": "models"}, "dtype": "float32"},
            name=name,
            backend=ClusterBackend(
                namespace=ns,
                kubeconfig=str(kubeconfig),
                trainer={**placement, "resources": small},
                inference={**placement, "resources": small, "extraArgs": ["--no-enable-chunked-prefill"]},
                storage={"size": "1Gi"},
                timeout=600,
                display=LineDisplay(io.StringIO()),
            ),
        )
        return compiler.compile(student, trainset=examples, valset=examples[:4])
    finally:
        sys.path[:] = [p for p in sys.path if p not in (str(OWN_PROGRAM), str(folder))]
        sys.modules.pop(module, None)


def test_a_users_own_program_from_every_kind_of_code_source_trains_and_a_misspelt_one_fails_at_once(
    control_plane: ControlPlane, job_ns: str, node: ProcessNode, operator: OperatorProcess, tmp_path: Path
):
    """Two jobs at once, their code from every kind of source: the program cloned from the team's git
    server, the metric packed into a ConfigMap, the package it needs pip-installed from their index (git
    and index served by this test over HTTP on loopback; git and pip fetched by the pod's init
    containers), the team's settings on a volume. One trains; the other has a misspelt importPath.
    Both ask for their result on the team's models claim (spec.export): the one that trains gets it
    there, copied by its export pod beside the serving vLLM pod; the other's says there is nothing.
    Meanwhile a team member's notebook compile()s the same program with a metric that raises (JobFailed,
    the job's words). Then a later session load()s the YAML job's result, the team exports it once more
    with the CLI, a TTL deletes the job while retainOnDelete keeps its volume, and the notebook compile()s
    with a metric that scores: the program it returns answers through its job's served adapter."""
    from safetensors.numpy import load_file

    from grpo_operator.code_pack import SHA_ANNOTATION, config_map
    from support.own_program import TEAM_METRIC, WORDS_REQUIREMENT, team_task
    from support.pyindex import git_http, package_index

    cp, ns = control_plane, job_ns
    model_dir = default_model_dir()
    read_only_claim(cp, ns, "models", model_dir.parent)
    read_only_claim(cp, ns, "topics-data", OWN_PROGRAM / "data")
    task = team_task(tmp_path)
    read_only_claim(cp, ns, "team-settings", task.settings)
    exports = tmp_path / "team-models"
    exports.mkdir()
    read_only_claim(cp, ns, "team-models", exports, mode="ReadWriteMany")
    packed = config_map("team-metrics", task.metrics, namespace=ns)
    with git_http(task.repo, tmp_path / "git") as git_url, package_index([task.wheel], tmp_path / "index") as index:
        code = [
            {"git": {"url": git_url, "ref": "main", "subPath": "src"}},
            {"configMap": {"name": "team-metrics"}},
            {"pip": {"requirements": [WORDS_REQUIREMENT], "indexUrl": index}},
            {"volume": {"claimName": "team-settings"}},
        ]
        docs = [packed]
        for name, program in (("topics", "topics.program:Topic"), ("topics-typo", "topics.programs:Topic")):
            doc = own_program_job(model_dir, name, program)  # the typo's module is topics.program
            doc["spec"].update(code=code, metric={"importPath": TEAM_METRIC}, serve={"enabled": True})
            doc["spec"]["export"] = {"destinations": [{"claim": {"claimName": "team-models", "path": f"grpo/{name}"}}]}
            docs.append(doc)
        job_file = tmp_path / "topics.yaml"
        job_file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        cp.kubectl("apply", "-f", job_file, "-n", ns)
        applied = time.monotonic()
        # a team member follows the trainer's log as it is written (grpo logs -f waits for the trainer to start)
        alice = team_member(cp, ns)
        follower = subprocess.Popen(
            grpo_command(alice, "logs", "-f", "topics", "-n", ns),
            env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        # --- the misspelt importPath fails in the trainer's first seconds, with no retry spent
        typo = wait_job(cp, ns, "topics-typo", is_true("Failed"), "Failed=True", timeout=300)
        print(f"misspelt importPath: Failed {time.monotonic() - applied:.0f} s after kubectl apply")
        failed = cond(typo, "Failed")
        assert failed["reason"] == "InvalidProgram", failed
        assert "program.importPath 'topics.programs:Topic'" in failed["message"], failed["message"]
        assert typo["status"]["restarts"] == 0 and typo["status"]["trainerPod"] == "topics-typo-trainer-0"
        wait_event(cp, ns, "InvalidProgram", type="Warning", name="topics-typo")
        pods = [p["metadata"]["name"] for p in cp.get_json("pods", namespace=ns)["items"]]
        assert "topics-typo-trainer-1" not in pods
        assert cond(typo, "Exported")["reason"] == "NotExported" and "topics-typo-export-0" not in pods

        # --- compile() from a notebook's process, as that team member: its metric raises, and the job's own
        # words come back as the exception (the trainer's check before any model loads)
        from grpo_operator.client import JobFailed

        with pytest.raises(JobFailed) as failed:
            compile_topics(ns, alice, model_dir, tmp_path, "topics-compiled", BROKEN_METRIC)
        assert failed.value.reason == "InvalidMetric", failed.value
        assert "no gold topic here" in failed.value.message and "topics_compiled_metric:score" in failed.value.message

        # --- the other trains on the team's code and data
        job = wait_job(cp, ns, "topics", is_true("Succeeded"), "Succeeded=True", timeout=1500)
        assert job["status"]["step"] == OWN_STEPS and job["status"]["restarts"] == 0
        followed, errors = follower.communicate(timeout=120)  # the stream ended with the trainer
        assert follower.returncode == 0, errors
        assert steps_done(followed) == list(range(1, OWN_STEPS + 1)), followed[-3000:]

    # --- and goes on serving its result (spec.serve): the vLLM pod that served training stays
    job = wait_job(cp, ns, "topics", lambda j: cond(j, "InferenceReady").get("reason") == "Serving", "Serving")
    endpoint, result = job["status"]["endpoint"], job["status"]["result"]
    assert endpoint["url"] == f"http://topics-vllm.{ns}.svc.cluster.local:{operator.env['GRPO_INFERENCE_PORT']}/v1"
    assert endpoint["model"] == ("topics" if result.get("adapter") else str(model_dir))
    assert cond(job, "InferenceReady")["status"] == "True" and job["status"]["inferencePod"] == "topics-inference-0"
    models = f"http://127.0.0.1:{operator.env['GRPO_INFERENCE_PORT']}/v1/models"  # the pods share the host network
    with pytest.raises(urllib.error.HTTPError, match="401"):  # the job's key, or nothing
        urllib.request.urlopen(models, timeout=10)
    ref = endpoint["apiKeySecretRef"]  # where a client in the namespace reads it
    key = base64.b64decode(cp.get_json("secret", ref["name"], namespace=ns)["data"][ref["key"]]).decode()
    request = urllib.request.Request(models, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        served = {m["id"]: m.get("root") for m in json.loads(resp.read())["data"]}
    if result.get("adapter"):  # the best adapter, from result/ on the volume as vLLM sees it
        assert served.get("topics") == "/mnt/grpo/result/adapter", served
    else:
        assert endpoint["model"] in served, served

    run_dir = claim_dir(cp, ns, "topics-run") / "runs" / "topics"
    # --- a later Python session load()s the result: outside the cluster, through a port-forward, as alice
    from grpo_operator.client import ClusterBackend, load

    sys.path.insert(0, str(OWN_PROGRAM))  # the team's program class, as on their machine
    try:
        program = load("topics", backend=ClusterBackend(namespace=ns, kubeconfig=str(alice)))
    finally:
        sys.path.remove(str(OWN_PROGRAM))
    try:
        served_result = program.grpo_result
        assert served_result.url.startswith("http://127.0.0.1:") and served_result.model == endpoint["model"]
        assert served_result.trained == ("classify",)
        if result.get("adapter"):
            assert_serves_result(program.classify.lm, run_dir, "A match report: the home side won.", model_dir)
        assert program(text="We cooked pasta with basil for dinner.").topic.strip()
    finally:
        served_result.close()

    # the result differs from the base model: LoRA's B matrices start at zero and were trained
    weights = load_file(str(run_dir / "adapters" / f"step-{OWN_STEPS}" / "adapter_model.safetensors"))
    assert any("lora_B" in k and float(abs(v).max()) > 0 for k, v in weights.items()), "LoRA B is still 0"
    progress = Progress.read(run_dir)
    assert progress is not None and progress.served_check is not None
    assert progress.served_check["served_vs_disk"] <= 1e-3, progress.served_check
    # which code trained it: the commit cloned, the ConfigMap's archive, the package installed
    git, archive, pip, settings = json.loads((run_dir / "code.json").read_text())
    assert settings["origin"] == "spec.code[3].volume 'team-settings'" and settings["path"] == "/code/3"
    assert git["git_commit"] == task.commit and git["path"] == "/code/0/repo/src"
    assert archive["sha256"] == packed["metadata"]["annotations"][SHA_ANNOTATION]
    assert pip["pip_freeze"] == ["topic-words==1.0"]
    status_code = job["status"]["code"]  # what `kubectl get -o yaml` shows
    assert f"@{task.commit[:12]}" in status_code and "topic-words==1.0" in status_code, status_code
    trainer = cp.get_json("pod", "topics-trainer-0", namespace=ns)
    inits = {s["name"]: s["state"]["terminated"]["exitCode"] for s in trainer["status"]["initContainerStatuses"]}
    assert inits == {"code-0": 0, "code-2": 0}  # git and pip; the ConfigMap needs no fetch

    # --- the result, exported to the team's claim by pod topics-export-0 (kept for its logs)
    job = wait_job(cp, ns, "topics", lambda j: cond(j, "Exported").get("status") == "True", "Exported=True", 300)
    (record,) = job["status"]["export"]["destinations"]
    assert record["location"] == "team-models:/grpo/topics" and record["step"] == result["step"], record
    assert "team-models:/grpo/topics" in cond(job, "Exported")["message"] and is_true("Succeeded")(job)
    copied = exports / "grpo" / "topics"
    result_dir = run_dir / "result"
    assert sorted(p.relative_to(copied) for p in copied.rglob("*")) == sorted(
        p.relative_to(result_dir) for p in result_dir.rglob("*")
    )
    assert (copied / "result.json").read_bytes() == (result_dir / "result.json").read_bytes()
    export_pod = cp.get_json("pod", "topics-export-0", namespace=ns)
    assert export_pod["status"]["phase"] == "Succeeded" and export_pod["spec"]["nodeName"] == node.name
    job_volume = [m for m in export_pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/grpo"]
    assert job_volume[0]["readOnly"]  # the export only reads the job's volume
    # --- later, a team member exports it once more with the CLI: only the new destination is exported
    again = grpo(alice, "export", "topics", "-n", ns, "--to", "claim:team-models/grpo/topics-again", "--wait",
                 "--timeout", "300", timeout=330)  # fmt: skip
    assert again.returncode == 0 and "Exported=True" in again.stdout, again.stdout + again.stderr
    assert (exports / "grpo" / "topics-again" / "result.json").read_bytes() == (result_dir / "result.json").read_bytes()
    records = get_job(cp, ns, "topics")["status"]["export"]["destinations"]
    assert [r["location"] for r in records] == ["team-models:/grpo/topics", "team-models:/grpo/topics-again"]

    # --- kept after the job: retainOnDelete and a TTL, both set after the fact (the only mutable storage field),
    # and the TTL deletes the job; its serving pod goes with it, its volume and result/ stay
    adapter = (result_dir / "adapter" / "adapter_model.safetensors").read_bytes() if result.get("adapter") else None
    patch = {"spec": {"storage": {"retainOnDelete": True}, "runPolicy": {"ttlSecondsAfterFinished": 1}}}
    cp.kubectl("patch", "grpojob", "topics", "-n", ns, "--type", "merge", "-p", json.dumps(patch))
    wait_until(lambda: not job_exists(cp, ns, "topics"), timeout=120, what="the finished job deleted by its TTL")
    wait_until(lambda: not node.pids(ns, "topics-inference-0"), timeout=120, what="the serving vLLM stopped")
    claim = cp.get_json("pvc", "topics-run", namespace=ns)
    assert not claim["metadata"].get("ownerReferences") and not claim["metadata"].get("deletionTimestamp"), claim
    assert json.loads((result_dir / "result.json").read_text())["job"] == "topics"
    if adapter is not None:
        assert (result_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter

    # --- a notebook's compile() to the end, once the topics job is gone (pods share the node's network, so one
    # job's servers at a time): the program it returns answers through its job's served best adapter (a
    # port-forward from here), the adapter on that job's volume
    started = time.monotonic()
    optimized = compile_topics(ns, alice, model_dir, tmp_path, "topics-notebook", TOPIC_METRIC)
    print(f"compile() on the cluster: {time.monotonic() - started:.0f} s")
    compiled = optimized.grpo_result
    try:
        assert compiled.job == "topics-notebook" and tuple(compiled.trained) == ("classify",), compiled
        notebook_run = claim_dir(cp, ns, "topics-notebook-run") / "runs" / "topics-notebook"
        if compiled.result.get("adapter"):
            assert_serves_result(optimized.classify.lm, notebook_run, "A match report: the home side won.", model_dir)
        # one step on the tiny model does not teach the topic format: what shows it answers is the LM's reply
        (reply,) = optimized.classify.lm("Which topic is this? We cooked pasta with basil for dinner.")
        assert str(reply).strip(), reply
    finally:
        compiled.close()

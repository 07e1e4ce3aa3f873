"""One resolution of a job for the cluster and for a local run: the two runners render it and cannot drift.

A local run on a 4-GPU machine is compared with the same job's pods: the same vLLM
flags (seed included), the same trainer command and environment, the same trainer
config, differing only in where things are (mount points or local paths, hosts, ports,
the interpreter) and in how GPUs are handed out (the device plugin or CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from grpo_operator.api import parse_job
from grpo_operator.api.spec import EnvVar
from grpo_operator.children import Job, config_map, inference_pod, resolved, trainer_pod
from grpo_operator.local.default import default_job
from grpo_operator.resolve import ClusterTarget, LocalTarget, UnplaceableJob, resolve, run_path
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.config import TrainerConfig
from grpo_trainer.contract.vllm_command import vllm_command
from support.jobdocs import load_example

SETTINGS = OperatorSettings()


def seed_spec():
    return parse_job(load_example()).spec


def default_spec(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    return parse_job(default_job(model)).spec


def local_target(tmp_path: Path, gpus: int) -> LocalTarget:
    return LocalTarget(
        run_dir=str(tmp_path / "run"),
        config_path=str(tmp_path / "run" / "config.json"),
        vllm_port=8123,
        trainer_port=9555,
        gpus=gpus,
        python="/venv/bin/python",
    )


def cluster(spec) -> ClusterTarget:
    return ClusterTarget(inference_host="svc.ns", inference_port=8000, trainer_port=9400, api_key_secret="key")


def without(argv: list[str], *flags: str) -> list[str]:
    """argv without the interpreter and the value of each flag (where things are)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif i > 0:
            out.append(arg)
    return out


WHERE_FLAGS = ("--model", "--host", "--port", "--config")


@pytest.fixture(params=["seed", "embedded-default"])
def spec(request: pytest.FixtureRequest, tmp_path: Path):
    return seed_spec() if request.param == "seed" else default_spec(tmp_path)


def test_vllm_starts_with_the_same_flags_in_a_pod_and_locally(spec, tmp_path: Path) -> None:
    pod_run = resolve("j", spec, cluster(spec))
    local_run = resolve("j", spec, local_target(tmp_path, gpus=4))
    pod_cmd, local_cmd = vllm_command(pod_run.vllm), vllm_command(local_run.vllm)
    assert without(pod_cmd.argv, *WHERE_FLAGS) == without(local_cmd.argv, *WHERE_FLAGS)
    assert pod_cmd.argv[pod_cmd.argv.index("--seed") + 1] == str(spec.grpo.seed)
    where = ("CUDA_VISIBLE_DEVICES", "OMP_WAIT_POLICY", "PYTHONPATH")  # one machine's sharing, the guard's folder
    assert {k: v for k, v in pod_cmd.env.items() if k not in where} == {
        k: v for k, v in local_cmd.env.items() if k not in where
    }
    # both servers ask for the job's key on every path but the probes, through the guard where each keeps it
    assert "--middleware" in pod_cmd.argv and "--middleware" in local_cmd.argv
    assert (pod_cmd.env["PYTHONPATH"], local_cmd.env["PYTHONPATH"]) == ("/etc/grpo-vllm", f"{tmp_path}/run/vllm-guard")


def test_the_trainer_runs_the_same_command_and_environment(spec, tmp_path: Path) -> None:
    pod_run = resolve("j", spec, cluster(spec))
    local_run = resolve("j", spec, local_target(tmp_path, gpus=4))
    assert without(pod_run.trainer_argv, "--config") == without(local_run.trainer_argv, "--config")
    assert local_run.trainer_argv[0] == "/venv/bin/python" and local_run.trainer_argv[-1].endswith("config.json")
    pod_env = {k: v for k, v in pod_run.trainer_env.items() if k != "GRPO_TRAINER_CONFIG"}
    sharing = ("CUDA_VISIBLE_DEVICES", "OMP_WAIT_POLICY")  # how one machine's processes share it
    local_env = {k: v for k, v in local_run.trainer_env.items() if k != "GRPO_TRAINER_CONFIG" and k not in sharing}
    assert pod_env == local_env


def test_the_trainer_config_differs_only_in_where_things_are(spec, tmp_path: Path) -> None:
    def comparable(config: TrainerConfig) -> dict[str, Any]:
        doc = config.model_dump()
        for key in ("run_dir", "model", "port"):
            doc.pop(key)
        doc["owner"].pop("where")  # how a refusal names the run directory and the way out: a claim or a path
        doc["owner"].pop("fix")
        doc["vllm"].pop("base_url")
        doc["vllm"].pop("adapter_dir")
        for data in ("train_data", "val_data"):
            if doc[data] and doc[data]["path"]:
                doc[data]["path"] = Path(doc[data]["path"]).name
        return doc

    pod_config = resolve("j", spec, cluster(spec)).config
    local_config = resolve("j", spec, local_target(tmp_path, gpus=4)).config
    assert comparable(pod_config) == comparable(local_config)
    assert pod_config.vllm.adapter_dir == f"{pod_config.run_dir}/adapters"
    assert local_config.vllm.adapter_dir == f"{tmp_path}/run/adapters"
    assert local_config.vllm.base_url == "http://127.0.0.1:8123/v1"


def test_the_run_directory_is_the_jobs_own_folder_of_its_volume_unless_it_started_at_the_root(
    spec, tmp_path: Path
) -> None:
    """Pods mount runs/<name> of the claim (its root for a job an older operator started); a local run is its
    run directory, by default runs/<name> of the working directory (grpo_operator.local.plan)."""
    pods = resolve("j", spec, cluster(spec), namespace="team-a", uid="u1")
    assert pods.run_sub_path == "runs/j" and pods.config.run_dir == "/mnt/grpo"
    assert pods.config.owner is not None and pods.config.owner.where == "folder runs/j of claim 'j-run'"
    assert (pods.config.owner.job.namespace, pods.config.owner.job.uid) == ("team-a", "u1")
    legacy = resolve("j", spec, replace(cluster(spec), claim_root=True))
    assert legacy.run_sub_path is None and legacy.config.owner is not None
    assert legacy.config.owner.where == "the root of claim 'j-run'"
    local = resolve("j", spec, local_target(tmp_path, gpus=4))
    assert local.run_sub_path is None and local.config.owner is not None
    assert local.config.owner.where == f"run directory {tmp_path}/run" and "--fresh" in local.config.owner.fix
    assert run_path("j") == "runs/j"


def test_a_local_machine_splits_its_gpus_vllm_first() -> None:
    run = resolve("j", seed_spec(), local_target(Path("/x"), gpus=4))  # the seed: 3 training + 1 vLLM
    assert (run.training_gpus, run.inference_gpus) == (3, 1)
    assert run.vllm.extra_env["CUDA_VISIBLE_DEVICES"] == "0"
    assert run.trainer_env["CUDA_VISIBLE_DEVICES"] == "1,2,3"
    assert run.trainer_argv[run.trainer_argv.index("--nproc") + 1] == "3"
    assert run.config.device == "cuda" and run.vllm.device == "gpu"


def test_too_few_gpus_is_refused_naming_the_fields() -> None:
    with pytest.raises(UnplaceableJob, match="num_training_gpus/num_inference_gpus.*0 and 0 runs on the CPU"):
        resolve("j", seed_spec(), local_target(Path("/x"), gpus=2))


def test_a_machine_without_gpus_runs_the_seed_on_its_cpu() -> None:
    run = resolve("j", seed_spec(), local_target(Path("/x"), gpus=0))
    assert (run.training_gpus, run.inference_gpus) == (0, 0)
    assert run.config.device == "cpu" and run.vllm.device == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in run.trainer_env and "grpo_trainer.run.launch" not in run.trainer_argv
    # rollouts overlapped with training: both processes compute on the same cores at once, and OpenMP
    # threads sleep when idle (unless the job says otherwise); sequential steps keep libgomp's default
    assert run.config.grpo.overlap_rollouts
    assert run.trainer_env["OMP_WAIT_POLICY"] == vllm_command(run.vllm).env["OMP_WAIT_POLICY"] == "PASSIVE"
    spec = seed_spec()
    spec.trainer.env = [EnvVar(name="OMP_WAIT_POLICY", value="ACTIVE")]
    assert resolve("j", spec, local_target(Path("/x"), gpus=0)).trainer_env["OMP_WAIT_POLICY"] == "ACTIVE"
    sequential = seed_spec()
    sequential.grpo.overlap_rollouts = False
    # a pod has its own cores; a local GPU run's processes compute on their GPUs
    pods, gpus = resolve("j", seed_spec(), cluster(seed_spec())), resolve("j", seed_spec(), local_target(Path("/x"), 4))
    for other in (resolve("j", sequential, local_target(Path("/x"), gpus=0)), pods, gpus):
        assert "OMP_WAIT_POLICY" not in other.trainer_env and "OMP_WAIT_POLICY" not in vllm_command(other.vllm).env


def test_the_pods_render_the_resolution() -> None:
    job = Job("papillon", "team-a", "uid-1", seed_spec())
    run = resolved(job, SETTINGS)
    trainer = trainer_pod(job, SETTINGS, 0)["spec"]["containers"][0]
    vllm = inference_pod(job, SETTINGS, 0)["spec"]["containers"][0]
    assert trainer["command"] == run.trainer_argv
    assert vllm["command"] == vllm_command(run.vllm).argv
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert all(env[k] == v for k, v in run.trainer_env.items())
    assert TrainerConfig.model_validate_json(next(iter(config_map(job, SETTINGS)["data"].values()))) == run.config
    assert sys.executable not in trainer["command"]  # an image's interpreter, not this machine's


def test_a_node_can_move_the_trainers_device_and_listening_address_but_the_operator_never_sets_them(
    tmp_path: Path,
) -> None:
    """A node whose pods share one network (the test cluster's process node) gives each trainer its pod's
    address to listen on; without it a trainer listens on all of them, as in a pod of its own."""
    from grpo_trainer.contract.config import DEVICE_ENV, LISTEN_HOST_ENV
    from grpo_trainer.run.progress_board import ProgressBoard
    from grpo_trainer.run.progress_server import ProgressServer

    job = Job("papillon", "team-a", "uid-1", seed_spec())
    path = tmp_path / "config.json"
    path.write_text(next(iter(config_map(job, SETTINGS)["data"].values())))
    env = {e["name"] for e in trainer_pod(job, SETTINGS, 0)["spec"]["containers"][0]["env"]}
    assert not env & {DEVICE_ENV, LISTEN_HOST_ENV}
    assert TrainerConfig.load(path, environ={}).listen_host == "0.0.0.0"
    cfg = TrainerConfig.load(path, environ={DEVICE_ENV: "cpu", LISTEN_HOST_ENV: "127.103.0.9"})
    assert (cfg.device, cfg.listen_host) == ("cpu", "127.103.0.9")
    server = ProgressServer(ProgressBoard(tmp_path, "papillon", 1), 0, cfg.listen_host).start()
    try:
        assert server.host == "127.103.0.9"
    finally:
        server.stop()

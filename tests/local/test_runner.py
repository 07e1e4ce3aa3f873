"""The local runner's checks and failure paths, through the real ``grpo-local`` command.

Everything here fails before the trainer starts, so no trainer is needed; the
vLLM start-failure test runs the real vLLM (CPU build) on a broken model.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpo_operator.api import parse_job
from grpo_operator.local.default import default_job
from grpo_operator.local.plan import CONFIG_FILE, InvalidInput, RunOptions, make_plan
from grpo_operator.local.rundir import LOCK_FILE
from grpo_operator.resolve import LocalTarget, resolve
from grpo_trainer.contract.identity import JobIdentity, RunOwner
from grpo_trainer.run.ownership import OWNER_FILE, claim_run_dir

# -- invalid input: exit 2, nothing started --------------------------------------------------


def assert_nothing_started(run_dir: Path) -> None:
    assert not (run_dir / "logs").exists(), "a process log exists: something was started"
    assert not (run_dir / CONFIG_FILE).exists()


def test_invalid_job_exits_2_naming_the_field_and_starts_nothing(
    cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    default_doc["spec"]["grpo"]["num_samples_per_input"] = 1
    run_dir = tmp_path / "run"
    result = cli(
        str(write_job(default_doc)), "--run-dir", str(run_dir), "--port", str(ports[0]), "--trainer-port", str(ports[1])
    )
    assert result.returncode == 2, result.stderr
    assert "spec.grpo.num_samples_per_input" in result.stderr
    assert_nothing_started(run_dir)


def test_unreadable_job_file_exits_2(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    result = cli(str(bad))
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr
    result = cli(str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr


def test_missing_model_path_is_named(
    cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    missing = tmp_path / "no-such-model"
    default_doc["spec"]["model"]["path"] = str(missing)
    run_dir = tmp_path / "run"
    result = cli(
        str(write_job(default_doc)), "--run-dir", str(run_dir), "--port", str(ports[0]), "--trainer-port", str(ports[1])
    )
    assert result.returncode == 2, result.stderr
    assert "spec.model.path" in result.stderr
    assert str(missing) in result.stderr
    assert_nothing_started(run_dir)


def test_missing_data_file_is_named(
    cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    default_doc["spec"]["data"]["validation"]["file"]["path"] = str(tmp_path / "val.jsonl")
    result = cli(
        str(write_job(default_doc)),
        "--run-dir",
        str(tmp_path / "run"),
        "--port",
        str(ports[0]),
        "--trainer-port",
        str(ports[1]),
    )
    assert result.returncode == 2
    assert "spec.data.validation.file.path" in result.stderr


@pytest.mark.parametrize("which", ["vllm", "trainer"])
def test_port_in_use_is_a_clear_error(
    which: str, cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    vllm_port, trainer_port = ports
    busy = vllm_port if which == "vllm" else trainer_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        result = cli(
            str(write_job(default_doc)),
            "--run-dir", str(tmp_path / "run"),
            "--port", str(vllm_port),
            "--trainer-port", str(trainer_port),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    flag = "--port" if which == "vllm" else "--trainer-port"
    assert f"port {busy} is in use; pass {flag}" in result.stderr
    assert_nothing_started(tmp_path / "run")


def test_volume_claims_map_to_directories(
    default_doc: dict[str, Any], tiny_model: Path, tmp_path: Path, ports: tuple[int, int], write_job
) -> None:
    models = tmp_path / "models-pvc"
    (models / "base").mkdir(parents=True)
    shutil.copytree(tiny_model, models / "base" / "tiny", dirs_exist_ok=True)
    default_doc["spec"]["model"] = {"path": "tiny", "volume": {"claimName": "models", "subPath": "base"}}
    job = write_job(default_doc)
    options = RunOptions(job_file=job, run_dir=tmp_path / "run", port=ports[0], trainer_port=ports[1])
    with pytest.raises(
        InvalidInput, match=r"spec\.model\.volume\.claimName: volume 'models' is not mapped.*--volume models=DIR"
    ):
        make_plan(options)
    plan = make_plan(
        RunOptions(
            job_file=job, run_dir=tmp_path / "run", port=ports[0], trainer_port=ports[1], volumes={"models": models}
        )
    )
    assert Path(plan.config.model) == (models / "base" / "tiny").resolve()
    assert Path(plan.vllm.model) == (models / "base" / "tiny").resolve()


def test_second_runner_on_the_same_run_dir_is_refused(
    cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = cli(
            str(write_job(default_doc)),
            "--run-dir",
            str(run_dir),
            "--port",
            str(ports[0]),
            "--trainer-port",
            str(ports[1]),
        )
    assert result.returncode == 2
    assert "in use by another grpo-local" in result.stderr


def test_fresh_refuses_to_delete_a_directory_that_is_not_a_run(
    cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = cli(
        str(write_job(default_doc)),
        "--run-dir",
        str(precious),
        "--fresh",
        "--port",
        str(ports[0]),
        "--trainer-port",
        str(ports[1]),
    )
    assert result.returncode == 2
    assert "not a run directory" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_a_run_directory_of_another_job_is_refused_before_anything_is_written_to_it(
    cli, default_doc: dict[str, Any], write_job, tmp_path: Path, ports: tuple[int, int]
) -> None:
    """``--run-dir`` of another job (it would resume that job's checkpoints): the trainer's own check, run by
    grpo-local first, as a run and as ``--check``."""
    run_dir = tmp_path / "theirs"
    theirs = JobIdentity(name="other-job", definition={"model": "0" * 64})
    claim_run_dir(run_dir, RunOwner(job=theirs, where=str(run_dir), fix="-"))
    job = str(write_job(default_doc))
    for extra in ((), ("--check",)):
        result = cli(job, "--run-dir", str(run_dir), "--port", str(ports[0]), "--trainer-port", str(ports[1]), *extra)
        assert result.returncode == 2, result.stderr
        assert f"ForeignRunDirectory: run directory {run_dir} holds the run of job 'other-job'" in result.stderr
        assert "Pass --run-dir with a directory of its own, or --fresh" in result.stderr
        assert_nothing_started(run_dir)
    assert JobIdentity.model_validate_json((run_dir / OWNER_FILE).read_text()) == theirs


# -- the embedded default ---------------------------------------------------------------------


def test_default_job_parses_and_translates_to_a_cpu_run(
    tiny_model: Path, tmp_path: Path, ports: tuple[int, int]
) -> None:
    job = parse_job(default_job(tiny_model))
    target = LocalTarget(str(tmp_path), str(tmp_path / "c.json"), 8000, 9400, gpus=0, python=sys.executable)
    config = resolve(job.metadata.name or "", job.spec, target).config
    assert (config.program, config.metric) == ("papillon", "papillon_offline")
    assert Path(config.model).is_dir() and (Path(config.model) / "config.json").is_file()
    assert config.train_data.path is not None and Path(config.train_data.path).is_file()
    assert config.val_data is not None and config.val_data.path is not None and Path(config.val_data.path).is_file()
    assert config.untrusted is None and config.judge is None  # the local base model stands in
    assert json.loads(config.to_json())["vllm"]["adapter_dir"] == f"{tmp_path}/adapters"

    plan = make_plan(RunOptions(run_dir=tmp_path / "run", port=ports[0], trainer_port=ports[1]))
    assert plan.vllm.device == "cpu" and plan.config.device == "cpu"
    assert plan.config.vllm.base_url == f"http://127.0.0.1:{ports[0]}/v1"
    assert plan.config.port == ports[1]
    assert plan.trainer_argv == [
        sys.executable,
        "-m",
        "grpo_trainer.run.main",
        "--config",
        str((tmp_path / "run" / CONFIG_FILE).resolve()),
    ]


def test_steps_option_overrides_num_train_steps(tmp_path: Path, ports: tuple[int, int]) -> None:
    plan = make_plan(RunOptions(run_dir=tmp_path / "run", port=ports[0], trainer_port=ports[1], steps=3))
    assert plan.config.grpo.num_train_steps == 3


def test_print_default_round_trips_through_parse_job(cli, tiny_model: Path) -> None:
    result = cli("--print-default")
    assert result.returncode == 0, result.stderr
    printed = parse_job(yaml.safe_load(result.stdout))
    assert printed == parse_job(default_job(tiny_model))


# -- vLLM that cannot start ---------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_start_failure_shows_its_log_tail_and_leaves_no_process(
    cli,
    default_doc: dict[str, Any],
    write_job,
    tiny_model: Path,
    tmp_path: Path,
    ports: tuple[int, int],
    survivors: Callable[[], list[str]],
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": '
    )
    default_doc["spec"]["model"]["path"] = str(broken)
    run_dir = tmp_path / "run"
    result = cli(
        str(write_job(default_doc)), "--run-dir", str(run_dir), "--port", str(ports[0]), "--trainer-port", str(ports[1]),
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "vLLM" in result.stderr
    log_lines = [line for line in (run_dir / "logs" / "vllm.log").read_text().splitlines() if line.strip()]
    assert log_lines, "vLLM wrote no log"
    assert log_lines[-1] in result.stderr  # the tail of the log, verbatim
    assert not (run_dir / "logs" / "trainer.log").exists(), "the trainer was started although vLLM never served"
    assert survivors() == []


@pytest.mark.vllm
def test_ctrl_c_while_vllm_starts_stops_it_and_exits_0(
    start_cli, tmp_path: Path, ports: tuple[int, int], survivors: Callable[[], list[str]]
) -> None:
    run_dir = tmp_path / "run"
    out = tmp_path / "out"
    runner = start_cli("--run-dir", str(run_dir), "--port", str(ports[0]), "--trainer-port", str(ports[1]), out=out)
    try:
        deadline = time.monotonic() + 120
        while "starting vLLM" not in out.read_text():
            assert runner.poll() is None, out.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        runner.send_signal(signal.SIGINT)
        code = runner.wait(120)  # 2.7 s on a quiet machine; 62 s in a loaded full CI run
    finally:
        if runner.poll() is None:
            runner.kill()
    assert code == 0, out.read_text()
    assert not (run_dir / "logs" / "trainer.log").exists()
    assert survivors() == []


# -- grpo-local --check: the trainer's own check of the job's code, program, metric and data ------

OWN_PROGRAM = Path(__file__).resolve().parents[2] / "examples" / "own_program"


def _own_program_doc(default_doc: dict[str, Any], data_dir: Path, program: str = "topics.program:Topic") -> dict:
    spec = default_doc["spec"]
    spec["program"] = {"importPath": program}
    spec["metric"] = {"importPath": "topics.metric:topic_match"}
    spec["data"] = {
        "train": {"file": {"path": str(data_dir / "train.jsonl")}},
        "validation": {"file": {"path": str(data_dir / "val.jsonl")}},
    }
    return default_doc


def test_check_imports_a_users_program_beside_the_job_file_and_starts_nothing(
    cli, default_doc: dict[str, Any], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(OWN_PROGRAM, project)
    job = project / "topics.yaml"
    job.write_text(yaml.safe_dump(_own_program_doc(default_doc, project / "data"), sort_keys=False))
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = cli(str(job), "--check", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.split("the trainer found:\n", 1)[1])
    assert found["program"] == "Topic" and found["train_examples"] == 16 and found["inputs"] == ["text"]
    assert {"origin": "the job file's folder", "path": str(project)} in [
        {k: c[k] for k in ("origin", "path")} for c in found["code"]
    ]
    assert not list(run_dir.glob("logs/*.log")), "--check started a process"
    assert time.monotonic() - started < 90  # no model load, no vLLM (generous for a loaded machine)

    job.write_text(yaml.safe_dump(_own_program_doc(default_doc, project / "data", "topics.programs:Topic")))
    result = cli(str(job), "--check", "--run-dir", str(run_dir))
    assert result.returncode == 2, result.stdout
    assert "InvalidProgram: program.importPath 'topics.programs:Topic'" in result.stderr, result.stderr


def test_check_uses_packed_code_appended_to_the_job_file(cli, default_doc: dict[str, Any], tmp_path: Path) -> None:
    """The ConfigMap a cluster job mounts, read from the job file: the code is nowhere else on disk."""
    from grpo_operator.code_pack import config_map

    doc = _own_program_doc(default_doc, OWN_PROGRAM / "data")
    doc["spec"]["code"] = [{"configMap": {"name": "topics-code"}}]
    packed = config_map("topics-code", OWN_PROGRAM, excludes=("data", "__pycache__"))
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job = jobs / "topics.yaml"
    job.write_text(yaml.safe_dump_all([doc, packed], sort_keys=False))
    result = cli(str(job), "--check", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.split("the trainer found:\n", 1)[1])
    first = found["code"][0]
    assert first["origin"] == "spec.code[0].configMap 'topics-code'"
    assert first["sha256"] == packed["metadata"]["annotations"]["grpo.dev/code-sha256"]


def test_check_reads_inline_rows_and_a_config_map_file_from_the_job_file(
    cli, default_doc: dict[str, Any], tmp_path: Path
) -> None:
    """Data without a volume: rows in the job, a file in a ConfigMap appended to the job file."""
    rows = [json.loads(line) for line in (OWN_PROGRAM / "data" / "train.jsonl").read_text().splitlines()]
    doc = _own_program_doc(default_doc, OWN_PROGRAM / "data")
    doc["spec"]["data"] = {
        "train": {"inline": {"rows": rows[:5]}},
        "validation": {"configMap": {"name": "topics-val", "key": "val.jsonl"}},
    }
    val = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "topics-val"},
        "data": {"val.jsonl": (OWN_PROGRAM / "data" / "val.jsonl").read_text()},
    }
    job = tmp_path / "topics.yaml"
    job.write_text(yaml.safe_dump_all([doc, val], sort_keys=False))
    result = cli(str(job), "--check", "--run-dir", str(tmp_path / "run"), "--code", str(OWN_PROGRAM))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.split("the trainer found:\n", 1)[1])
    assert found["train_examples"] == 5 and found["val_examples"] == 8


def test_check_brings_code_from_git_a_config_map_pip_and_a_volume_as_a_pod_would(
    cli, default_doc: dict[str, Any], tmp_path: Path
) -> None:
    """The program from a git repository, the metric packed in a ConfigMap (in the job file), the
    package the metric imports from the team's index (loopback), its settings from a volume (a folder
    here): fetched as the init containers would."""
    from grpo_operator.code_pack import config_map
    from support.own_program import TEAM_METRIC, WORDS_REQUIREMENT, team_task
    from support.pyindex import package_index

    task = team_task(tmp_path)
    doc = _own_program_doc(default_doc, OWN_PROGRAM / "data")
    doc["spec"]["metric"] = {"importPath": TEAM_METRIC}
    packed = config_map("team-metrics", task.metrics)
    jobs = tmp_path / "jobs"  # not beside the code: only the job's sources can provide it
    jobs.mkdir()
    job = jobs / "topics.yaml"
    with package_index([task.wheel], tmp_path / "index") as index:
        doc["spec"]["code"] = [
            {"git": {"url": f"file://{task.repo}", "ref": "main", "subPath": "src"}},
            {"configMap": {"name": "team-metrics"}},
            {"pip": {"requirements": [WORDS_REQUIREMENT], "indexUrl": index}},
            {"volume": {"claimName": "team-settings"}},
        ]
        job.write_text(yaml.safe_dump_all([doc, packed], sort_keys=False))
        volume = f"team-settings={task.settings}"
        result = cli(str(job), "--check", "--run-dir", str(tmp_path / "run"), "--volume", volume, timeout=300)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.split("the trainer found:\n", 1)[1])
    git, archive, pip, settings = found["code"][:4]
    assert settings["origin"] == "spec.code[3].volume 'team-settings'" and settings["path"] == str(task.settings)
    assert git["origin"] == f"spec.code[0].git 'file://{task.repo}'" and git["git_commit"] == task.commit
    assert git["path"] == str(tmp_path / "run" / "code" / "0" / "repo" / "src")
    assert archive["sha256"] == packed["metadata"]["annotations"]["grpo.dev/code-sha256"]
    assert pip["pip_freeze"] == ["topic-words==1.0"]

    # without the pip source the metric cannot import its package: InvalidMetric, named
    doc["spec"]["code"] = [c for c in doc["spec"]["code"] if "pip" not in c]
    job.write_text(yaml.safe_dump_all([doc, packed], sort_keys=False))
    result = cli(str(job), "--check", "--run-dir", str(tmp_path / "run"), "--volume", volume, timeout=300)
    assert result.returncode == 2 and "InvalidMetric" in result.stderr and "topic_words" in result.stderr, result.stderr

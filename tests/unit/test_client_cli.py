"""The ``grpo`` CLI on grpo-local's runs (``--local``), and the one reading of a job's status both the CLI
and compile() use (the cluster side runs against the real API server in tests/cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_operator.client.cli import main
from grpo_operator.client.job_view import JobView
from grpo_operator.local.rundir import LOGS_DIR
from grpo_trainer.contract.progress import Progress, RunResult
from support.checkout import checkout_env


def run_dir(root: Path, name: str, **progress: object) -> Path:
    path = root / name
    (path / LOGS_DIR).mkdir(parents=True)
    doc = Progress(job=name, max_steps=10, **progress)  # type: ignore[arg-type]
    (path / "progress.json").write_text(doc.model_dump_json())
    (path / LOGS_DIR / "trainer.log").write_text("line 1\nline 2\nline 3\n")
    return path


def test_status_and_result_of_local_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = RunResult(path="result", adapter="result/adapter", step=8, val_score=0.97, base_model="/m", finished=True)
    run_dir(tmp_path, "done", step=10, phase="done", finished=True, best_val_score=0.97, result=result)
    run_dir(tmp_path, "broken", step=3, phase="failed", error="boom", error_reason="InvalidMetric")
    run_dir(tmp_path, "paused", step=4, phase="stopped", reward_mean=0.5)
    assert main(["status", "--local", "--workdir", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "STATE", "STEP", "MAX", "REWARD", "VAL", "BEST", "MESSAGE"]
    states = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert states == {"broken": "Failed", "done": "Succeeded", "paused": "Suspended"}
    assert main(["result", "done", "--local", "--workdir", str(tmp_path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"]["adapter"] == "result/adapter"
    assert main(["result", "paused", "--local", "--workdir", str(tmp_path)]) == 1
    assert main(["wait", "broken", "--local", "--workdir", str(tmp_path)]) == 1
    assert "Failed (InvalidMetric) boom" in capsys.readouterr().out
    assert main(["logs", "done", "--local", "--workdir", str(tmp_path), "--tail", "2"]) == 0
    assert capsys.readouterr().out == "line 2\nline 3\n"
    assert main(["status", "nothing", "--local", "--workdir", str(tmp_path)]) == 1


def test_stop_asks_the_running_grpo_local_for_its_checkpointed_stop(tmp_path: Path) -> None:
    """`grpo stop --local` finds the runner by the pid in its run directory's lock and sends it Ctrl-C."""
    path = run_dir(tmp_path, "running", step=2, phase="train")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "from pathlib import Path\n"
            "from grpo_operator.local.rundir import lock_run_dir\n"
            f"lock = lock_run_dir(Path({str(path)!r}), fresh=False)\n"
            "signal.signal(signal.SIGINT, lambda *a: sys.exit(42))\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        env=checkout_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["status", "running", "--local", "--workdir", str(tmp_path), "-o", "json"]) == 0
        assert main(["stop", "running", "--local", "--workdir", str(tmp_path)]) == 0
        assert holder.wait(10) == 42
    finally:
        if holder.poll() is None:
            holder.kill()
    assert main(["stop", "running", "--local", "--workdir", str(tmp_path)]) == 1  # nobody runs it now


def test_a_jobs_state_is_its_first_true_condition_in_the_operators_order() -> None:
    obj = {
        "metadata": {"name": "j", "namespace": "ns", "generation": 2},
        "spec": {"grpo": {"num_train_steps": 500}},
        "status": {
            "step": 42,
            "trainReward": 0.61,
            "valScore": 0.58,
            "observedGeneration": 2,
            "conditions": [
                {"type": "Training", "status": "True", "reason": "Running", "message": "step 42/500"},
                {"type": "Created", "status": "True", "reason": "ChildrenCreated", "message": ""},
            ],
        },
    }
    view = JobView.of(obj)
    assert (view.state, view.reason, view.step, view.max_steps) == ("Training", "Running", 42, 500)
    assert view.progress().phase == "train" and not view.finished and not view.serving
    pending = JobView.of(
        {
            "metadata": {"name": "j"},
            "spec": {},
            "status": {
                "conditions": [
                    {
                        "type": "Created",
                        "status": "False",
                        "reason": "MissingReference",
                        "message": "Secret 'k' is missing",
                    }
                ]
            },
        }
    )
    assert (pending.state, pending.reason) == ("Pending", "MissingReference")


def test_export_destinations_are_written_as_urls_and_checked_by_the_apis_model() -> None:
    from grpo_operator.client.errors import JobRejected
    from grpo_operator.client.export_target import ExportOptions, destination, with_destination

    assert destination(ExportOptions("claim:team-models/grpo/topics")) == {
        "claim": {"claimName": "team-models", "path": "grpo/topics"}
    }
    hub = destination(ExportOptions("hf://acme/topics@v2", merged=True, token_secret="hf:write-token"))
    assert hub == {
        "hub": {"repoId": "acme/topics", "tokenSecretRef": {"name": "hf", "key": "write-token"}, "revision": "v2"},
        "merged": True,
    }
    s3 = destination(ExportOptions("s3://models/grpo", credentials_secret="s3", endpoint="http://minio:9000",
                                   path_style=True))  # fmt: skip
    assert s3["s3"] == {"bucket": "models", "credentialsSecretRef": {"name": "s3"}, "prefix": "grpo",
                        "endpointUrl": "http://minio:9000", "addressingStyle": "path"}  # fmt: skip
    with pytest.raises(JobRejected, match="--token-secret"):
        destination(ExportOptions("hf://acme/topics"))
    with pytest.raises(JobRejected, match="claim:NAME"):
        destination(ExportOptions("ftp://x"))
    with pytest.raises(JobRejected, match=r"--to s3://Bad_Bucket: s3\.bucket"):
        destination(ExportOptions("s3://Bad_Bucket", credentials_secret="s3"))
    entry = {"claim": {"claimName": "a"}}
    assert with_destination({"destinations": [entry], "backoffLimit": 3}, entry) == {
        "destinations": [entry], "backoffLimit": 3
    }

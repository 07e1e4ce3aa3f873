"""The trainer's pre-flight check of a job's own program, metric, data and code (before any model loads).

Uses the user package of ``examples/own_program`` (a topic classifier, not PAPILLON) as
a team would ship it: from a directory or packed into an archive (a ConfigMap's form).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from grpo_trainer.contract import exit_codes
from grpo_trainer.contract.config import CodeSource, DataSpec, TrainerConfig, VLLMEndpoint
from grpo_trainer.contract.identity import JobIdentity, RunOwner
from grpo_trainer.contract.progress import Progress
from grpo_trainer.dspy.task import TaskError, load_task
from grpo_trainer.run.ownership import claim_run_dir

ROOT = Path(__file__).resolve().parents[2]
OWN = ROOT / "examples" / "own_program"


@pytest.fixture(autouse=True)
def _fresh_imports() -> Iterator[None]:
    """Each test imports the user's package from its own sources (sys.path and modules restored), never a copy
    an earlier test of the session imported from elsewhere."""
    for name in [m for m in sys.modules if m == "topics" or m.startswith("topics.")]:
        del sys.modules[name]
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def config(tmp_path: Path, **update: Any) -> TrainerConfig:
    base = TrainerConfig(
        job_name="topics",
        run_dir=str(tmp_path / "run"),
        program="topics.program:Topic",
        metric="topics.metric:topic_match",
        model=str(tmp_path / "no-such-model"),  # never loaded by the check
        vllm=VLLMEndpoint(base_url="http://127.0.0.1:9/v1", served_model_name="base", adapter_dir=str(tmp_path)),
        train_data=DataSpec(source="file", path=str(OWN / "data" / "train.jsonl")),
        val_data=DataSpec(source="file", path=str(OWN / "data" / "val.jsonl")),
        code=[CodeSource(kind="dir", path=str(OWN), origin="spec.code[0].volume 'code'")],
        port=0,
        device="cpu",
    )
    return base.model_copy(update=update)


def check(cfg: TrainerConfig) -> Any:
    return load_task(cfg, untrusted_lm=None, judge_lm=None)


def expect(cfg: TrainerConfig, reason: str, *needles: str) -> TaskError:
    with pytest.raises(TaskError) as info:
        check(cfg)
    assert info.value.reason == reason, info.value
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    return info.value


def test_a_users_own_program_metric_and_data_pass_the_check(tmp_path: Path) -> None:
    task = check(config(tmp_path))
    assert type(task.program).__name__ == "Topic"
    assert len(task.train) == 16 and len(task.val) == 8
    assert set(task.train[0].inputs().keys()) == {"text"}
    assert task.code[0].path == str(OWN) and task.code[0].origin == "spec.code[0].volume 'code'"


def test_the_code_summary_for_the_jobs_status_names_each_source_briefly() -> None:
    from grpo_trainer.usercode.install import CodeIdentity, code_summary

    used = [
        CodeIdentity("spec.code[0].configMap 'c'", "/tmp/x", sha256="ab" * 32),
        CodeIdentity("spec.code[1].git 'https://git.example/t.git'", "/code/1/repo", git_commit="0123456789abcdef" * 2),
        CodeIdentity("spec.code[2].pip 'topic-words'", "/code/2", pip_freeze=["topic-words==1.0"]),
        CodeIdentity("the working directory", "/home/me"),
    ]
    assert code_summary(used, 1024) == (
        "code[0].configMap 'c' sha256:abababababababab; code[1].git 'https://git.example/t.git' @0123456789ab; "
        "code[2].pip 'topic-words' -> topic-words==1.0"
    )
    assert len(code_summary(used * 40, 200) or "") == 200 and code_summary(used[3:], 10) is None


def test_a_packed_archive_is_unpacked_and_identified_by_its_hash(tmp_path: Path) -> None:
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(OWN / "topics", arcname="topics")
    cfg = config(tmp_path, code=[CodeSource(kind="archive", path=str(archive), origin="spec.code[0].configMap 'c'")])
    task = check(cfg)
    assert len(task.code[0].sha256 or "") == 64
    assert Path(task.code[0].path, "topics", "program.py").is_file()
    assert sys.modules["topics.program"].__file__.startswith(task.code[0].path)


def test_misspelt_import_paths_name_the_field(tmp_path: Path) -> None:
    expect(config(tmp_path, program="topics.programs:Topic"), "InvalidProgram", "program.importPath", "topics.programs")
    expect(config(tmp_path, program="topics.program:Topik"), "InvalidProgram", "has no attribute 'Topik'")
    expect(config(tmp_path, metric="topics.metric:nope"), "InvalidMetric", "metric.importPath", "'nope'")
    # without the code source the package is not importable at all
    for name in [m for m in sys.modules if m == "topics" or m.startswith("topics.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p != str(OWN)]
    expect(config(tmp_path, code=[]), "InvalidProgram", "cannot import module 'topics.program'")


def test_a_missing_code_source_is_invalid_code(tmp_path: Path) -> None:
    gone = CodeSource(kind="dir", path=str(tmp_path / "gone"), origin="spec.code[1].volume 'x'")
    expect(config(tmp_path, code=[gone]), "InvalidCode", "spec.code[1].volume 'x'", "does not exist")


def test_data_that_does_not_feed_the_program_is_invalid_data(tmp_path: Path) -> None:
    renamed = DataSpec(
        source="file",
        path=str(OWN / "data" / "train.jsonl"),
        fields={"body": "text", "topic": "topic"},
        input_fields=["body"],
    )
    expect(config(tmp_path, train_data=renamed), "InvalidData", "needs input(s) text", "data.train.fields")
    wrong_column = DataSpec(source="file", path=str(OWN / "data" / "val.jsonl"), fields={"text": "sentence"})
    expect(config(tmp_path, val_data=wrong_column), "InvalidData", "data.validation", "no column 'sentence'")
    missing = DataSpec(source="file", path=str(tmp_path / "absent.jsonl"))
    expect(config(tmp_path, train_data=missing), "InvalidData", "data.train", "does not exist")


def test_data_that_cannot_be_fetched_for_now_is_not_an_invalid_job(tmp_path: Path) -> None:
    """A network failure is retried (backoffLimit), not blamed on the job."""
    from grpo_trainer.dspy.data import DataUnavailable

    unreachable = DataSpec(source="url", url="http://127.0.0.1:9/train.jsonl")
    with pytest.raises(DataUnavailable):
        check(config(tmp_path, train_data=unreachable))


def _module(tmp_path: Path, name: str, source: str) -> CodeSource:
    d = tmp_path / f"code-{name}"
    d.mkdir()
    (d / f"{name}.py").write_text(source)
    return CodeSource(kind="dir", path=str(d), origin=f"spec.code 'code-{name}'")


def test_a_metric_that_raises_or_returns_no_number_is_invalid(tmp_path: Path) -> None:
    raises = _module(tmp_path, "bad_metric", "def m(example, pred, trace=None):\n    return pred.label.lower()\n")
    cfg = config(tmp_path, metric="bad_metric:m", code=[*config(tmp_path).code, raises])
    expect(cfg, "InvalidMetric", "raised on the first training example", "AttributeError")
    text = _module(tmp_path, "text_metric", "def m(example, pred, trace=None):\n    return 'good'\n")
    cfg = config(tmp_path, metric="text_metric:m", code=[*config(tmp_path).code, text])
    expect(cfg, "InvalidMetric", "returned 'good'", "finite number")


def test_a_program_that_fails_on_import_is_invalid(tmp_path: Path) -> None:
    broken = _module(tmp_path, "broken_prog", "import dspy\nraise RuntimeError('config file not found')\n")
    cfg = config(tmp_path, program="broken_prog:Program", code=[broken, *config(tmp_path).code])
    expect(cfg, "InvalidProgram", "RuntimeError: config file not found")


REVIEWED = """
import dspy
from topics.program import TopicSignature


class Reviewed(dspy.Module):
    \"\"\"The local model classifies; a larger model of the program's own choosing reviews.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict(TopicSignature)
        self.review = dspy.Predict("text, topic -> agrees: bool")
        self.review.lm = dspy.LM("openai/gpt-4.1-mini", api_key="unused")

    def forward(self, text: str) -> dspy.Prediction:
        topic = self.classify(text=text).topic
        return dspy.Prediction(topic=topic, agrees=self.review(text=text, topic=topic).agrees)


class AllOwn(Reviewed):
    def __init__(self) -> None:
        super().__init__()
        self.classify.lm = dspy.LM("openai/gpt-4.1-mini", api_key="unused")
"""


def test_predictors_with_an_lm_of_their_own_are_not_trained_and_one_must_be_left(tmp_path: Path) -> None:
    reviewed = _module(tmp_path, "reviewed", REVIEWED)
    task = check(config(tmp_path, program="reviewed:Reviewed", code=[*config(tmp_path).code, reviewed]))
    assert task.trained_predictors == ["classify"] and task.summary()["trained_predictors"] == ["classify"]
    assert task.program.review.lm.model == "openai/gpt-4.1-mini"  # as the program built it
    cfg = config(tmp_path, program="reviewed:AllOwn", code=[*config(tmp_path).code, reviewed])
    expect(cfg, "InvalidProgram", "reviewed:AllOwn", "every predictor has an LM of its own (classify, review)")


def _trainer(cfg: TrainerConfig, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    termination = tmp_path / "termination-log"
    env = {**os.environ, "GRPO_TERMINATION_LOG": str(termination)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "grpo_trainer.run.main", "--config", str(path), "--log-format", "text", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    return done, time.monotonic() - started


def test_the_trainer_exits_invalid_job_before_loading_the_model(tmp_path: Path) -> None:
    """The model path does not exist: a trainer that loaded it first would fail with exit 1, not 78."""
    cfg = config(tmp_path, program="topics.programs:Topic")
    done, seconds = _trainer(cfg, tmp_path)
    assert done.returncode == exit_codes.INVALID_JOB, done.stderr[-2000:]
    report = json.loads((tmp_path / "termination-log").read_text())
    assert report["error_reason"] == "InvalidProgram" and "topics.programs" in report["error"]
    progress = Progress.read(cfg.run_dir)
    assert progress is not None and progress.phase == "failed" and progress.error_reason == "InvalidProgram"
    assert seconds < 120, f"took {seconds:.0f} s"  # imports only (generous for a loaded CI machine)


def test_the_trainer_refuses_another_jobs_run_directory_before_loading_the_model(tmp_path: Path) -> None:
    """Two jobs on one claim folder (or a grpo-local --run-dir of another job): the second trainer exits 78 with
    ForeignRunDirectory in seconds, and writes nothing into the first one's directory."""
    run_dir = tmp_path / "run"

    def owner(name: str, data: str) -> RunOwner:
        job = JobIdentity(name=name, namespace="team-a", uid=f"uid-{name}", definition={"data": data})
        return RunOwner(job=job, where="folder runs/x of claim 'shared'", fix="Use a claim of its own.")

    first = owner("topics", "d1")
    claim_run_dir(run_dir, first)
    (run_dir / "checkpoints" / "step-3").mkdir(parents=True)
    state = {"step": 3, "job": first.job.model_dump()}
    (run_dir / "checkpoints" / "step-3" / "state.json").write_text(json.dumps(state))
    (run_dir / "checkpoints" / "step-3" / "COMPLETE").write_text("{}")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))

    for other, needle in ((owner("other", "d1"), "holds the run of job 'team-a/topics'"),
                          (owner("topics", "d2"), "started with another spec.data")):  # fmt: skip
        done, seconds = _trainer(config(tmp_path, owner=other), tmp_path)
        assert done.returncode == exit_codes.INVALID_JOB, done.stderr[-2000:]
        report = json.loads((tmp_path / "termination-log").read_text())
        assert report["error_reason"] == "ForeignRunDirectory" and needle in report["error"], report
        assert "Use a claim of its own." in report["error"]
        assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # nothing written there
        assert seconds < 120, f"took {seconds:.0f} s"
        print(f"refused {other.job.describe()} in {seconds:.1f} s: {report['error'][:120]}...")


def test_check_mode_passes_a_good_job_and_prints_what_it_found(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    done, _ = _trainer(cfg, tmp_path, "--check")
    assert done.returncode == exit_codes.DONE, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["program"] == "Topic" and found["inputs"] == ["text"] and found["train_examples"] == 16
    assert found["trained_predictors"] == ["classify"]
    assert [c["path"] for c in found["code"]] == [str(OWN)]
    bad, _ = _trainer(config(tmp_path, metric="topics.metric:nope"), tmp_path, "--check")
    assert bad.returncode == exit_codes.INVALID_JOB and "InvalidMetric" in bad.stderr

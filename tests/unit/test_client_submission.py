"""compile()'s job: the student read as the trainer will rebuild it, the GRPOJob and its ConfigMaps and
keys built from the tutorial's arguments, valid before anything is submitted."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import dspy
import pytest
import yaml

from grpo_operator.api import parse_job
from grpo_operator.client.code_bundle import make_bundle
from grpo_operator.client.errors import BundleError
from grpo_operator.client.student import analyse
from grpo_operator.client.submission import UNTRUSTED_KEY, build
from support.checkout import checkout_env
from support.seed import seed_call  # the tutorial's configuration cell

PROGRAMS = textwrap.dedent("""
    import dspy

    JUDGE = dspy.LM("openai/gpt-4.1-mini")

    class Delegate(dspy.Module):
        def __init__(self, untrusted_model=None):
            self.craft = dspy.ChainOfThought("user_query -> llm_request")
            self.respond = dspy.Predict("user_query, llm_request -> response")
            self.audit = dspy.Predict("response -> verdict")
            self.audit.lm = JUDGE  # an LM of its own: stays on it, not trained
            self.untrusted_model = untrusted_model

        def forward(self, user_query):
            request = self.craft(user_query=user_query).llm_request
            return self.respond(user_query=user_query, llm_request=request)

    class NeedsArgs(dspy.Module):
        def __init__(self, depth):
            self.p = dspy.Predict("q -> a")

    def score(gold, pred, trace=None):
        return float(gold.response == pred.response)
""")


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Any]:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "delegate_programs.py").write_text(PROGRAMS)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("delegate_programs")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("delegate_programs", None)


def examples(n: int, size: int = 10) -> list[dspy.Example]:
    return [
        dspy.Example(user_query=f"q{i} " + "x" * size, response=f"r{i}").with_inputs("user_query") for i in range(n)
    ]


def student(programs: Any) -> dspy.Module:
    untrusted = dspy.LM("openai/gpt-4.1-mini", api_key="sk-test-untrusted-0123456789", max_tokens=512)
    program = programs.Delegate(untrusted_model=untrusted)
    program.set_lm(dspy.LM("openai/arbor:Qwen/Qwen2.5-1.5B-Instruct", temperature=1.0))
    program.audit.lm = programs.JUDGE  # set_lm bound every predictor; the class gives this one its own
    program.craft.predict.signature = program.craft.predict.signature.with_instructions(
        "Write a request without names."
    )
    return program


def submit(programs: Any, program: dspy.Module, tmp_path: Path, trainset: list[dspy.Example], **kw: Any):
    analysed = analyse(program)
    paths, bundle = make_bundle({"program": analysed.program_class, "metric": programs.score}, tmp_path / "code")
    args: dict[str, Any] = dict(
        student=analysed,
        bundle=bundle,
        paths=paths,
        trainset=trainset,
        valset=examples(4),
        grpo={"num_dspy_examples_per_grpo_step": 4, "num_samples_per_input": 8, "num_train_steps": 500},
        train_kwargs=seed_call()[0],
        model=None,
        name=None,
        spec_overrides={},
        main_ns={},
    )
    args.update(kw)
    return build(**args)


def test_the_student_is_read_as_the_trainer_rebuilds_it(programs: Any) -> None:
    read = analyse(student(programs))
    assert read.trained == ("craft.predict", "respond") and read.own_lms == {"audit": "openai/gpt-4.1-mini"}
    assert read.local_lm is not None and read.local_lm.model == "openai/arbor:Qwen/Qwen2.5-1.5B-Instruct"
    assert read.untrusted_lm is not None and read.untrusted_lm.model == "openai/gpt-4.1-mini"
    assert "sk-test" not in json.dumps(read.state)  # LMs (and their keys) are not part of the state


def test_a_student_the_trainer_could_not_rebuild_or_train_is_refused_with_the_fix(programs: Any) -> None:
    with pytest.raises(BundleError, match=r"NeedsArgs\(\).*Give the constructor's other parameters defaults"):
        analyse(programs.NeedsArgs(depth=2))
    split = student(programs)
    split.respond.lm = dspy.LM("openai/other-local")
    with pytest.raises(BundleError, match="use 2 different LMs; GRPO trains one local model"):
        analyse(split)


def test_the_tutorials_arguments_make_a_valid_job_whose_keys_travel_only_in_its_secret(
    programs: Any, tmp_path: Path
) -> None:
    sub = submit(programs, student(programs), tmp_path, examples(12))
    job = parse_job(sub.job)
    assert job.spec.model.name == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (
        job.spec.program.import_path == "grpo_student:student"
        and job.spec.metric.import_path == "delegate_programs:score"
    )
    assert job.spec.grpo.num_samples_per_input == 8 and job.spec.train_kwargs.num_training_gpus == 3
    assert job.spec.untrusted_model is not None and job.spec.untrusted_model.model == "gpt-4.1-mini"
    assert job.spec.untrusted_model.max_tokens == 512
    assert job.spec.untrusted_model.api_key_secret_ref.name == sub.secret_name
    assert sub.secret_data == {UNTRUSTED_KEY: "sk-test-untrusted-0123456789"}
    assert "sk-test" not in sub.yaml()
    assert job.spec.data.train.inline is not None and len(job.spec.data.train.inline.rows) == 12
    assert job.spec.data.train.input_fields == ["user_query"]
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(sub.yaml())]
    assert names == [sub.name, f"{sub.name}-code"]


def test_the_same_program_config_and_data_give_the_same_job_name_and_other_data_another(
    programs: Any, tmp_path: Path
) -> None:
    first = submit(programs, student(programs), tmp_path / "a", examples(12)).name
    again = submit(programs, student(programs), tmp_path / "b", examples(12)).name
    other = submit(programs, student(programs), tmp_path / "c", examples(13)).name
    assert first == again != other and first.startswith("delegate-")


def test_large_sets_go_into_a_data_configmap_and_too_large_ones_are_refused(programs: Any, tmp_path: Path) -> None:
    sub = submit(programs, student(programs), tmp_path / "a", examples(400, size=1000))  # ~400 KiB
    train = sub.job["spec"]["data"]["train"]
    assert train["configMap"] == {"name": f"{sub.name}-data", "key": "train.jsonl", "format": "jsonl"}
    data = next(d for d in sub.config_maps if d["metadata"]["name"] == f"{sub.name}-data")
    assert len(data["data"]["train.jsonl"].splitlines()) == 400
    with pytest.raises(BundleError, match="at most 1024 KiB of data.*volume, a URL or the hub"):
        submit(programs, student(programs), tmp_path / "b", examples(1200, size=1000))


def test_the_trainer_builds_the_student_with_its_instructions_and_own_lms(programs: Any, tmp_path: Path) -> None:
    sub = submit(programs, student(programs), tmp_path, examples(4))
    code = tmp_path / "code"
    env = checkout_env()
    env["PYTHONPATH"] = f"{code}:{tmp_path / 'src'}:{env['PYTHONPATH']}"
    script = (
        "import grpo_student\n"
        "p = grpo_student.student(untrusted_model=None)\n"
        "print(p.craft.predict.signature.instructions)\n"
        "print(p.audit.lm.model, p.respond.lm)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["Write a request without names.", "openai/gpt-4.1-mini None"]
    assert sub.student.trained == ("craft.predict", "respond")

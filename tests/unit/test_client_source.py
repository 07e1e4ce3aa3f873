"""compile()'s code shipping: a notebook's definitions cut down to what the program and metric need,
a user's own modules copied, installed ones named; secrets never shipped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grpo_operator.client.code_bundle import MAIN_MODULE, make_bundle
from grpo_operator.client.errors import BundleError
from grpo_operator.client.main_source import SourceError, extract
from support.checkout import checkout_env

# The seed notebook's shape: imports, signatures, the program, a judge configured after it is built,
# the metric, then what a notebook does besides (data, LMs for the run, compile, printing).
CELLS = [
    ("cell 1", "import dspy\nimport random\nfrom typing import Any\n%pip install dspy\n"),
    (
        "cell 2",
        textwrap.dedent("""
        local_lm = dspy.LM("openai/arbor:Qwen/Qwen2.5-1.5B-Instruct", temperature=0.7)
        openai_lm = dspy.LM("openai/gpt-4.1-mini", max_tokens=4000)
        dspy.configure(lm=local_lm)
    """),
    ),
    (
        "cell 3",
        textwrap.dedent('''
        class CraftRedactedRequest(dspy.Signature):
            """Make a privacy-preserving request."""
            user_query = dspy.InputField()
            llm_request = dspy.OutputField()

        class PAPILLON(dspy.Module):
            def __init__(self, untrusted_model=None):
                self.craft = dspy.ChainOfThought(CraftRedactedRequest)
                self.untrusted_model = untrusted_model

            def forward(self, user_query):
                request = self.craft(user_query=user_query).llm_request
                return dspy.Prediction(llm_request=request, response=request)
    '''),
    ),
    (
        "cell 4",
        textwrap.dedent("""
        class JudgeQuality(dspy.Signature):
            user_query = dspy.InputField()
            judgment: bool = dspy.OutputField()

        llm_judge = dspy.ChainOfThought(JudgeQuality)
        llm_judge.set_lm(openai_lm)
        THRESHOLD = 0.5

        def compute_overall_score(gold, pred, trace=None):
            score = float(bool(pred.response)) * THRESHOLD
            return score if trace is None else score >= THRESHOLD
    """),
    ),
    (
        "cell 5",
        textwrap.dedent("""
        from datasets import load_dataset
        pupa = load_dataset("Columbia-NLP/PUPA", "pupa_new")
        trainset = [dspy.Example(user_query=x["user_query"]).with_inputs("user_query") for x in pupa["train"]]
        papillon = PAPILLON(untrusted_model=openai_lm)
        papillon.set_lm(local_lm)
        optimized = compiler.compile(student=papillon, trainset=trainset)
        print(random.random())
    """),
    ),
]


def _module(text: str, folder: Path) -> dict[str, object]:
    (folder / f"{MAIN_MODULE}.py").write_text(text)
    namespace: dict[str, object] = {}
    exec(compile(text, str(folder / f"{MAIN_MODULE}.py"), "exec"), namespace)
    return namespace


def test_the_notebooks_program_and_metric_come_with_what_they_need_and_nothing_else(tmp_path: Path) -> None:
    source = extract(["PAPILLON", "compute_overall_score"], CELLS, "the notebook")
    text = source.text
    for needed in ("class PAPILLON", "class CraftRedactedRequest", "def compute_overall_score", "THRESHOLD = 0.5"):
        assert needed in text, needed
    # the judge the metric's module builds, and what configures it, come along (its LM too)
    assert "llm_judge = dspy.ChainOfThought(JudgeQuality)" not in text  # the metric does not read it
    for left_out in (
        "load_dataset",
        "compiler.compile",
        "print(",
        "random",
        "pip install",
        "dspy.configure",
        "local_lm",
    ):
        assert left_out not in text, left_out
    namespace = _module(text, tmp_path)
    program = namespace["PAPILLON"]()  # type: ignore[operator]
    assert [name for name, _ in program.named_predictors()] == ["craft.predict"]
    metric = namespace["compute_overall_score"]
    assert metric(None, type("P", (), {"response": "ok"})()) == 0.5  # type: ignore[operator]


def test_a_configured_global_comes_with_the_statements_that_configure_it(tmp_path: Path) -> None:
    cells = CELLS + [
        (
            "cell 6",
            "def judged(gold, pred, trace=None):\n    return float(llm_judge(user_query=gold.user_query).judgment)\n",
        )
    ]
    text = extract(["judged"], cells).text
    assert "llm_judge = dspy.ChainOfThought(JudgeQuality)" in text and "llm_judge.set_lm(openai_lm)" in text
    assert "openai_lm = dspy.LM('openai/gpt-4.1-mini', max_tokens=4000)" in text
    assert "local_lm" not in text and "PAPILLON" not in text
    namespace = _module(text, tmp_path)
    assert namespace["llm_judge"].predict.lm.model == "openai/gpt-4.1-mini"  # type: ignore[attr-defined]


def test_a_secret_written_into_a_needed_statement_is_refused_with_the_fix() -> None:
    cells = [
        (
            "cell 1",
            'import dspy\nlm = dspy.LM("openai/gpt-4.1", api_key="sk-live-0123456789abcdef")\n'
            "def metric(gold, pred, trace=None):\n    return float(lm is not None)\n",
        )
    ]
    with pytest.raises(SourceError, match=r"cell 1:2 writes a secret .*api_key=<literal>.*environment"):
        extract(["metric"], cells)
    # a secret in a statement the program does not need stays in the notebook and is no concern
    extract(
        ["metric"],
        [("cell 1", "import os\nkey = 'sk-live-0123456789abcdef'\ndef metric(g, p, trace=None):\n    return 1.0\n")],
    )


def test_a_name_the_notebook_never_defines_at_top_level_is_named() -> None:
    with pytest.raises(SourceError, match="Missing is not defined at the top level"):
        extract(["Missing"], CELLS)
    assert extract(
        ["compute_overall_score"], [("cell 1", "def compute_overall_score(g, p, trace=None):\n    return helper(p)\n")]
    ).undefined == ("helper",)


def test_a_class_defined_inside_a_function_cannot_be_shipped(tmp_path: Path) -> None:
    def make() -> type:
        class Local:
            pass

        return Local

    with pytest.raises(BundleError, match="defined inside a function"):
        make_bundle({"program": make(), "metric": len}, tmp_path / "code")


def test_a_users_package_is_copied_with_the_local_modules_it_imports_and_installed_ones_are_named(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "team_tasks").mkdir(parents=True)
    (project / "team_tasks" / "__init__.py").write_text("")
    (project / "team_tasks" / "programs.py").write_text(
        "import dspy\nimport team_helpers\n\nclass Classify(dspy.Module):\n    def __init__(self):\n"
        "        self.predict = dspy.Predict('text -> label')\n\n    def forward(self, text):\n"
        "        return self.predict(text=team_helpers.clean(text))\n"
    )
    (project / "team_helpers.py").write_text(
        "def clean(text):\n    return text.strip()\n\ndef score(g, p, trace=None):\n    return 1.0\n"
    )
    (project / "team_tasks" / "weights.bin").write_bytes(b"\0" * (600 * 1024))  # data, not code
    sys.path.insert(0, str(project))
    try:
        from team_helpers import score  # type: ignore[import-not-found]
        from team_tasks.programs import Classify  # type: ignore[import-not-found]

        paths, bundle = make_bundle({"program": Classify, "metric": score}, tmp_path / "code")
    finally:
        sys.path.remove(str(project))
        for name in ("team_tasks", "team_tasks.programs", "team_helpers"):
            sys.modules.pop(name, None)
    assert paths == {"program": "team_tasks.programs:Classify", "metric": "team_helpers:score"}
    assert sorted(bundle.modules) == ["team_helpers", "team_tasks"]
    assert (bundle.root / "team_tasks" / "programs.py").is_file() and (bundle.root / "team_helpers.py").is_file()
    assert not (bundle.root / "team_tasks" / "weights.bin").exists()
    assert bundle.installed["dspy"].startswith("dspy==")
    # the copy imports by itself, in a fresh interpreter with only the bundle on the path
    env = checkout_env()
    env["PYTHONPATH"] = f"{bundle.root}:{env['PYTHONPATH']}"
    code = "from team_tasks.programs import Classify; print(type(Classify()).__name__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "Classify", out.stderr[-2000:]

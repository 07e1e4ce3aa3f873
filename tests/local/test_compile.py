"""The tutorial's notebook with this project's optimizer: ``GRPO(...).compile()`` on the local backend.

``examples/papillon_compile.py`` is the tutorial's own code (the program and its signatures defined in
the script, its arguments, its compile() call) on the embedded default, with rollouts overlapped
with training (one step off-policy, the default on GPUs). It runs as a user runs it: the program is
shipped as source, grpo-local trains it with real vLLM (CPU build) and the real trainer, and the
optimized program it returns answers through a vLLM server on the best adapter. Then the validation
score must have risen beyond noise (tests/support/learning.py; the sequential mode, as the default runs
on a CPU, is held to the same margin by tests/local/test_local_e2e.py), and ``load()`` in a later
session serves the finished job again: what it serves under the job's name is the adapter on disk.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.checkout import ROOT
from support.learning import assert_learned_and_served, proof_steps
from support.served_result import assert_serves_result

from .conftest import cli_env

EXAMPLE = ROOT / "examples" / "papillon_compile.py"

# 6-10 min on a quiet 2-core machine; the limit leaves room for a loaded one
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]


def test_the_tutorials_notebook_compiles_learns_and_answers_through_the_served_best_adapter(
    tmp_path: Path, marker: str, survivors: Callable[[], list[str]]
) -> None:
    workdir = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), str(workdir), "--steps", str(proof_steps())],
        cwd=tmp_path,
        env=cli_env(marker),
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    job = re.fullmatch(r"(papillon-[0-9a-f]{8}) validation score", lines["job"].rsplit(": ", 1)[0])
    assert job, out.stdout
    assert lines["query"] and lines["response"].strip(), out.stdout  # the optimized program answered
    assert 0.0 <= float(lines["score"]) <= 1.0
    assert survivors() == []  # the server on the result stopped with the notebook's process
    run_dir = workdir / job.group(1)
    assert_learned_and_served(run_dir)
    # the job carries its program: the notebook's classes as source, the student's state, no key
    shipped = (workdir / f"{job.group(1)}.yaml").read_text()
    assert "importPath: grpo_student:student" in shipped and "papillon_offline" in shipped

    # a later session: load() the finished job, and what it serves under the job's name is result/adapter
    from grpo_operator.client import LocalBackend, load

    program = load(job.group(1), backend=LocalBackend(workdir=workdir))
    try:
        served = program.grpo_result
        assert served.job == job.group(1) and served.model == job.group(1)
        assert_serves_result(program.respond_to_query.lm, run_dir)
        # as in training, the base model stands in for the untrusted model: the same server's
        assert program.untrusted_model.model == f"openai/{served.base_model}"
        assert program.untrusted_model.kwargs["api_base"] == served.url
        assert program(user_query=lines["query"]).response.strip()
    finally:
        program.grpo_result.close()

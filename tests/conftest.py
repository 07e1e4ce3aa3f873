"""Fixtures shared by all test layers (helpers live in tests/support/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.checkout import pythonpath
from support.vllm import mark_vllm_tests, qwen2_vllm_server, tiny_model_dir, vllm_server  # noqa: F401  (fixtures)

# Every child process (operator, trainer, vLLM, pods of the process node) imports this
# checkout, also when pytest is run without scripts/test.sh.
os.environ["PYTHONPATH"] = pythonpath(os.environ.get("PYTHONPATH"))

# Importing trl sets VLLM_LOGGING_LEVEL=ERROR where unset; the trainer undoes it (grpo_trainer.grpo.policy), and
# so does every test here for the tests that import trl themselves: the vLLM servers a test starts log at vLLM's
# own level (the pool test reads their adapter loads from vllm.log).
VLLM_LOG_LEVEL_GIVEN = os.environ.get("VLLM_LOGGING_LEVEL")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if VLLM_LOG_LEVEL_GIVEN is None:
        os.environ.pop("VLLM_LOGGING_LEVEL", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_vllm_tests(items)
    deselect_on_demand(config, items)


def deselect_on_demand(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``ondemand`` (too long for CI's budget) run only when asked for: their file named on the
    command line, or ``-m`` naming the marker. A whole-suite run, CI's, leaves them out and says so."""
    if "ondemand" in (config.option.markexpr or ""):
        return
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args if Path(arg.split("::")[0]).is_file()}
    left = [i for i in items if i.get_closest_marker("ondemand") and Path(str(i.path)).resolve() not in named]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [i for i in items if i not in left]

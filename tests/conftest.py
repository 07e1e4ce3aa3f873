"""Fixtures shared by all test layers (helpers live in tests/support/)."""

from __future__ import annotations

import os

import pytest

from support.checkout import pythonpath
from support.vllm import mark_vllm_tests, qwen2_vllm_server, tiny_model_dir, vllm_server  # noqa: F401  (fixtures)

# Every child process (operator, trainer, vLLM, pods of the process node) imports this
# checkout, also when pytest is run without scripts/test.sh.
os.environ["PYTHONPATH"] = pythonpath(os.environ.get("PYTHONPATH"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_vllm_tests(items)

"""Fixtures shared by all test layers (helpers live in tests/support/)."""

from __future__ import annotations

import pytest
from support.vllm import mark_vllm_tests, tiny_model_dir, vllm_server  # noqa: F401  (fixtures)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_vllm_tests(items)

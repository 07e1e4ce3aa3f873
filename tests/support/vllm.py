"""A real vLLM (CPU build) server on the tiny generated model, shared by a test session.

Fixtures (registered in tests/conftest.py):

* ``tiny_model_dir`` (session): the cached tiny model (:func:`grpo_trainer.embedded.tinymodel.ensure_tiny_model`).
* ``vllm_server`` (session): one vLLM server on that model with runtime LoRA
  loading enabled, as a :class:`VLLMServer` (URLs, served name, model dir, log).
* ``qwen2_vllm_server`` (session): the same on a tiny Qwen2 (the seed's architecture:
  q/k/v biases, tied embeddings), for the tests that must hold for it too.

Tests that use either server get the ``vllm`` marker. If vLLM cannot start the
fixture fails with the tail of its log; ``GRPO_SKIP_VLLM=1`` skips such tests
instead. Start-up is ~25-45 s on 2 cores, once per session.

Other sessions may build their own server with :func:`start_vllm_server`.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

SERVED_NAME = "base"


@dataclass(frozen=True)
class VLLMServer:
    url: str  # http://127.0.0.1:PORT
    openai_url: str  # http://127.0.0.1:PORT/v1
    served_name: str
    model_dir: Path
    log_path: Path
    max_loras: int
    lora_rank: int


def write_guard(directory: Path) -> str:
    """vLLM's key guard as a pod or a local run gets it (a folder with the module, for ``guard_dir``)."""
    from grpo_trainer.contract.vllm_command import GUARD_FILE, guard_source

    directory.mkdir(parents=True, exist_ok=True)
    (directory / GUARD_FILE).write_text(guard_source())
    return str(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_vllm_server(
    model_dir: Path,
    log_dir: Path,
    *,
    served_name: str = SERVED_NAME,
    lora_rank: int = 8,
    max_loras: int = 4,
    start_timeout: float = 300.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[VLLMServer]:
    """Generator: yields a running server, stops it on close (use with ``yield from`` in a fixture)."""
    from grpo_trainer.contract.vllm_command import VLLMServerSpec
    from grpo_trainer.vllm.process import VLLMProcess

    spec = VLLMServerSpec(
        model=str(model_dir),
        served_model_name=served_name,
        host="127.0.0.1",
        port=free_port(),
        device="cpu",
        dtype="float32",
        max_model_len=4096,
        lora_rank=lora_rank,
        max_loras=max_loras,
        python=sys.executable,
        extra_args=extra_args,
    )
    log_path = log_dir / "vllm.log"
    process = VLLMProcess(spec, log_path, start_timeout=start_timeout, cwd=log_dir)
    process.start()
    try:
        yield VLLMServer(
            url=process.base_url,
            openai_url=process.openai_base_url,
            served_name=served_name,
            model_dir=Path(model_dir),
            log_path=log_path,
            max_loras=max_loras,
            lora_rank=lora_rank,
        )
    finally:
        process.stop()


def trainer_config_for(server: VLLMServer, run_dir: Path, job_name: str, grpo: Any, train: Any) -> Any:
    """A CPU TrainerConfig against ``server`` on the bundled data (2 validation examples), adapters under ``run_dir``."""
    from grpo_trainer.contract.config import DataSpec, TrainerConfig, VLLMEndpoint
    from grpo_trainer.embedded.bundled import PII_DELEGATION

    return TrainerConfig(
        job_name=job_name,
        run_dir=str(run_dir),
        program="papillon",
        metric="papillon_offline",
        model=str(server.model_dir),
        vllm=VLLMEndpoint(
            base_url=server.openai_url,
            served_model_name=server.served_name,
            adapter_dir=str(run_dir / "adapters"),
            max_loras=server.max_loras,
            wait_timeout_seconds=120,
        ),
        train_data=DataSpec(source="file", path=str(PII_DELEGATION / "train.jsonl")),
        val_data=DataSpec(source="file", path=str(PII_DELEGATION / "val.jsonl"), limit=2),
        grpo=grpo,
        train=train,
        port=0,
        device="cpu",
    )


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from grpo_trainer.embedded.tinymodel import ensure_tiny_model

    return ensure_tiny_model()


def _skip_without_vllm() -> None:
    if os.environ.get("GRPO_SKIP_VLLM") == "1":
        pytest.skip("GRPO_SKIP_VLLM=1: tests that need a vLLM server are skipped")


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    _skip_without_vllm()
    yield from start_vllm_server(tiny_model_dir, tmp_path_factory.mktemp("vllm-server"))


@pytest.fixture(scope="session")
def qwen2_vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    from grpo_trainer.embedded.tinymodel import ensure_tiny_model

    _skip_without_vllm()
    model_dir = ensure_tiny_model(architecture="qwen2")
    yield from start_vllm_server(model_dir, tmp_path_factory.mktemp("vllm-qwen2"), served_name="qwen2-base")


VLLM_FIXTURES = ("vllm_server", "qwen2_vllm_server")


def mark_vllm_tests(items: list[pytest.Item]) -> None:
    """Add the ``vllm`` marker to every test that uses a vLLM server fixture."""
    for item in items:
        if set(VLLM_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vllm)

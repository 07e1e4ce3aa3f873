"""GRPO updates on a tiny random Llama with a real PEFT LoRA adapter, on CPU.

What a user would notice: the policy moves toward completions with positive
advantage and away from negative ones; the learning-rate schedule is the one
configured; gradient clipping bounds the step; how the batch is cut into
micro-batches (or whether activations are recomputed) does not change the update.
"""

from __future__ import annotations

import pytest
import torch

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.optim import build_optimizer, build_scheduler
from grpo_trainer.grpo.policy import Policy, collate, load_policy, policy_logprobs, wrap_policy
from grpo_trainer.grpo.samples import TrainSample
from grpo_trainer.grpo.update import train_on_samples
from grpo_trainer.run.distributed import DistContext
from support.tinyllama import tiny_llama

CPU = torch.device("cpu")
SINGLE = DistContext()
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


def make_policy(train: TrainKwargs, seed: int = 0) -> Policy:
    base = tiny_llama(seed)
    torch.manual_seed(seed + 1)  # LoRA A init
    return wrap_policy(base, train, CPU)


def with_sampler_logprobs(policy: Policy, samples: list[TrainSample]) -> list[TrainSample]:
    """Stamp the policy's own logprobs as the sampler's (an on-policy sampler)."""
    with torch.no_grad():
        logps = policy_logprobs(policy, collate(samples, CPU))
    return [
        TrainSample(s.prompt_ids, s.completion_ids, logps[i, : len(s.completion_ids)].tolist(), s.advantage,
                    s.truncated)
        for i, s in enumerate(samples)
    ]


def completion_logprob(policy: Policy, sample: TrainSample) -> float:
    with torch.no_grad():
        return float(policy_logprobs(policy, collate([sample], CPU)).sum())


def lora_state(policy: Policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_trainable_parameters()}


GOOD = TrainSample([1, 5, 6, 7], [10, 11, 12, 13], [0.0] * 4, advantage=1.0)
BAD = TrainSample([1, 5, 6, 7], [20, 21, 22], [0.0] * 3, advantage=-1.0)
OTHER = [
    TrainSample([1, 8, 9], [30, 31], [0.0] * 2, advantage=0.5),
    TrainSample([1, 8, 9], [40, 41, 42, 43, 44], [0.0] * 5, advantage=-0.5),
    TrainSample([1, 3, 4, 5, 6, 7, 8], [50], [0.0], advantage=0.2),
    TrainSample([1, 3], [60, 61, 62], [0.0] * 3, advantage=-0.2, truncated=True),
]


# A constant rate after a warm-up of two optimizer steps: a skipped step shows in the rate.
WARMUP = TrainKwargs(
    learning_rate=1e-3,
    lr_scheduler_type="constant_with_warmup",
    warmup_steps=2,
    max_steps=100,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    lora_config=LORA,
)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_positive_advantage_goes_up_negative_goes_down(loss_type: str) -> None:
    train = TrainKwargs(
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        loss_type=loss_type,
        max_completion_length=8,
        lora_config=LORA,
    )
    policy = make_policy(train)
    optimizer = build_optimizer(policy.trainable_parameters(), train)
    scheduler = build_scheduler(optimizer, train)
    samples = with_sampler_logprobs(policy, [GOOD, BAD])
    good0, bad0 = completion_logprob(policy, GOOD), completion_logprob(policy, BAD)
    for _ in range(4):
        stats = train_on_samples(policy, optimizer, scheduler, samples, train, SINGLE)
        assert stats.optimizer_steps == 1 and stats.sequences == 2 and stats.tokens == 7
    good1, bad1 = completion_logprob(policy, GOOD), completion_logprob(policy, BAD)
    assert good1 > good0 + 0.5, (good0, good1)
    assert bad1 < bad0 - 0.5, (bad0, bad1)
    assert stats.mean_is_weight > 1.0  # the policy moved away from the (stale) sampler logprobs


def test_constant_with_warmup_gives_the_expected_learning_rates() -> None:
    train = WARMUP
    policy = make_policy(train)
    optimizer = build_optimizer(policy.trainable_parameters(), train)
    scheduler = build_scheduler(optimizer, train)
    samples = with_sampler_logprobs(policy, [GOOD, BAD])
    lrs = [train_on_samples(policy, optimizer, scheduler, samples, train, SINGLE).lr for _ in range(4)]
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])


def test_warmup_ratio_and_ragged_final_batch() -> None:
    """Six samples at 4 per optimizer step: two steps (4 + 2); warmup_ratio 0.1 of 20 steps = 2 steps."""
    train = TrainKwargs(
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_ratio=0.1,
        max_steps=20,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        lora_config=LORA,
    )
    policy = make_policy(train)
    optimizer = build_optimizer(policy.trainable_parameters(), train)
    scheduler = build_scheduler(optimizer, train)
    samples = with_sampler_logprobs(policy, [GOOD, BAD, *OTHER])
    stats = train_on_samples(policy, optimizer, scheduler, samples, train, SINGLE)
    assert stats.optimizer_steps == 2 and stats.sequences == 6
    assert stats.tokens == sum(len(s.completion_ids) for s in samples)
    assert stats.lr == pytest.approx(5e-4)  # the second step's rate
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3)


def test_gradient_clipping_bounds_the_step() -> None:
    """With SGD at lr 1 the parameter change is the clipped gradient: its norm is max_grad_norm."""
    train = TrainKwargs(
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=1e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        lora_config=LORA,
    )
    policy = make_policy(train)
    # Make LoRA B non-zero first, so that every adapter weight gets gradient.
    with torch.no_grad():
        for name, p in policy.named_trainable_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    before = lora_state(policy)
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=train.learning_rate)
    scheduler = build_scheduler(optimizer, train)
    samples = with_sampler_logprobs(policy, [GOOD, BAD, *OTHER[:2]])
    stats = train_on_samples(policy, optimizer, scheduler, samples, train, SINGLE)
    after = lora_state(policy)
    step = torch.sqrt(sum(((after[n] - before[n]) ** 2).sum() for n in before))
    assert stats.grad_norm > 100 * train.max_grad_norm  # clipping was needed
    assert float(step) == pytest.approx(train.max_grad_norm, rel=1e-4)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_micro_batching_and_checkpointing_do_not_change_the_update(loss_type: str) -> None:
    """One micro-batch of 6, or 3 accumulated micro-batches of 2 with activation recomputation:
    the same global batch gives the same weights (global normalisation of the loss)."""
    common = dict(
        learning_rate=1e-2, lr_scheduler_type="constant", loss_type=loss_type, max_completion_length=8,
        mask_truncated_completions=True, beta=0.05, lora_config=LORA,
    )
    whole = TrainKwargs(per_device_train_batch_size=6, gradient_accumulation_steps=1, **common)
    split = TrainKwargs(
        per_device_train_batch_size=2, gradient_accumulation_steps=3, gradient_checkpointing=True, **common
    )
    results = []
    for train in (whole, split):
        policy = make_policy(train)
        with torch.no_grad():
            for name, p in policy.named_trainable_parameters():
                if "lora_B" in name:
                    p.copy_(torch.full_like(p, 0.01))
        start = lora_state(policy)
        optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=train.learning_rate)
        scheduler = build_scheduler(optimizer, train)
        samples = with_sampler_logprobs(make_policy(whole), [GOOD, BAD, *OTHER])
        stats = train_on_samples(policy, optimizer, scheduler, samples, train, SINGLE)
        assert stats.optimizer_steps == 1
        after = lora_state(policy)
        assert any(not torch.equal(after[n], start[n]) for n in start)
        results.append((after, stats))
    (w_state, w_stats), (s_state, s_stats) = results
    assert w_stats.loss == pytest.approx(s_stats.loss, rel=1e-5, abs=1e-7)
    assert w_stats.tokens == s_stats.tokens == 15  # 18 tokens, of which the truncated 3 are masked
    for name in w_state:
        torch.testing.assert_close(w_state[name], s_state[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_load_policy_from_a_directory(tmp_path, precision: str, caplog: pytest.LogCaptureFixture) -> None:
    """A saved model loads with the configured LoRA targets; bf16 and fp16 are ignored on CPU (fp32, no autocast,
    no gradient scaler), and the log says so."""
    tiny_llama().save_pretrained(tmp_path / "model")
    train = TrainKwargs(
        gradient_checkpointing=True, lora_config={"r": 4, "target_modules": ["q_proj", "v_proj"]}, **{precision: True}
    )
    with caplog.at_level("INFO", logger="grpo_trainer.grpo.policy"):
        policy = load_policy(str(tmp_path / "model"), train, "cpu")
    assert "bf16/fp16 ignored on cpu" in caplog.text
    names = [n for n, _ in policy.named_trainable_parameters()]
    assert names and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)
    assert len(names) == 2 * 2 * 2  # 2 layers x 2 modules x (A, B)
    assert policy.device.type == "cpu" and policy.autocast_dtype is None and policy.grad_scaler is None
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    assert policy.model.get_base_model().is_gradient_checkpointing
    logps = policy_logprobs(policy, collate([GOOD], CPU))
    logps.sum().backward()  # gradients reach the adapter through recomputed activations
    lora_b = [p for n, p in policy.named_trainable_parameters() if "lora_B" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_fp16_loss_scaling_leaves_the_update_unchanged_and_an_overflowing_step_is_skipped() -> None:
    """fp16's gradient scaler, the part a CPU runs (float16 autocast needs the GPU): scaling the loss by a power of
    two and unscaling before clipping changes no weight; a step whose gradients are not finite (what an fp16
    overflow gives) is not applied, the scale halves and the learning-rate schedule waits for the next real step."""
    train = WARMUP.model_copy(update={"warmup_steps": 3})  # lr 0, 1/3, 2/3, then 1 x 1e-3
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        policy = make_policy(train)
        policy.grad_scaler = scaler
        optimizer = build_optimizer(policy.trainable_parameters(), train)
        scheduler = build_scheduler(optimizer, train)
        samples = with_sampler_logprobs(policy, [GOOD, BAD])
        start = lora_state(policy)
        stats = [train_on_samples(policy, optimizer, scheduler, samples, train, SINGLE) for _ in range(2)]
        assert any(not torch.equal(w, start[n]) for n, w in lora_state(policy).items())  # the second step moved them
        runs.append((policy, optimizer, scheduler, stats))
    (plain, _, _, plain_stats), (scaled, optimizer, scheduler, scaled_stats) = runs
    for name, weight in lora_state(plain).items():
        torch.testing.assert_close(lora_state(scaled)[name], weight, rtol=1e-6, atol=1e-9, msg=name)
    assert [s.grad_norm for s in scaled_stats] == pytest.approx([s.grad_norm for s in plain_stats], rel=1e-6)
    assert all(s.skipped_steps == 0 for s in scaled_stats)

    scaler = scaled.grad_scaler
    assert scaler is not None
    before, scale = lora_state(scaled), scaler.get_scale()
    assert scheduler.get_last_lr() == pytest.approx([2e-3 / 3])
    overflowing = TrainSample(GOOD.prompt_ids, GOOD.completion_ids, GOOD.sampler_logprobs, advantage=float("inf"))
    stats = train_on_samples(scaled, optimizer, scheduler, [overflowing, BAD], train, SINGLE)
    assert (stats.optimizer_steps, stats.skipped_steps, stats.grad_norm) == (1, 1, 0.0)
    assert all(torch.equal(w, before[n]) for n, w in lora_state(scaled).items())
    assert scaler.get_scale() == scale / 2 and scheduler.get_last_lr() == pytest.approx([2e-3 / 3])  # warm-up held
    stats = train_on_samples(scaled, optimizer, scheduler, with_sampler_logprobs(scaled, [GOOD, BAD]), train, SINGLE)
    assert stats.skipped_steps == 0 and scheduler.get_last_lr() == pytest.approx([1e-3])  # training goes on
    assert any(not torch.equal(w, before[n]) for n, w in lora_state(scaled).items())


def test_max_prompt_length_keeps_the_end_of_the_prompt() -> None:
    policy = make_policy(TrainKwargs(lora_config=LORA))
    long = TrainSample([1, 90, 91, 92, 5, 6, 7], GOOD.completion_ids, GOOD.sampler_logprobs, 1.0)
    cut = TrainSample([5, 6, 7], GOOD.completion_ids, GOOD.sampler_logprobs, 1.0)
    with torch.no_grad():
        truncated = policy_logprobs(policy, collate([long, BAD], CPU, max_prompt_length=3))
        expected = policy_logprobs(policy, collate([cut], CPU))
        untruncated = policy_logprobs(policy, collate([long], CPU))
    torch.testing.assert_close(truncated[0], expected[0])
    assert not torch.allclose(untruncated[0], expected[0])


def test_lora_on_the_output_head_is_refused() -> None:
    """The fused head would ignore an adapter on lm_head: refuse instead of training nothing there."""
    with pytest.raises(ValueError, match="output head"):
        make_policy(TrainKwargs(lora_config={"target_modules": ["q_proj", "lm_head"]}))

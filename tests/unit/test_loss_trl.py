"""Our GRPO loss against TRL's own ``GRPOTrainer._compute_loss`` on identical inputs.

How TRL is called: a real ``GRPOTrainer`` is built per configuration on a tiny
random Llama with the same PEFT LoRA adapter as ours (a generated word-level
tokenizer, a constant reward), so TRL itself parses loss_type/beta/epsilon/
epsilon_high from ``GRPOConfig``. Both adapters get the same random weights (LoRA
B is zero at init, which would hide the adapter path). Two
instance attributes are set by hand, because in TRL they only exist inside its
training loop or with a live vLLM: ``current_gradient_accumulation_steps`` (set
by ``Trainer`` per accumulation window) and ``use_vllm=True`` (which, in
``_compute_loss``, only switches on the multiplication by the importance ratio we
pass in ``inputs``; the ratio itself TRL computes during vLLM generation, so its
formula is checked separately against hand-computed values).

TRL scores left-padded prompts with its own log-prob code; we score right-padded
sequences with ours; the logprobs, the loss and the gradients must agree.

Bookkeeping mapping (one rank, G accumulation micro-batches of B sequences):
TRL divides each micro-batch's loss by G (grpo/bnpo/dr_grpo) or by the tokens of
the generation batch (dapo); ours divides by LossScale(sequences=B·G, tokens=N,
micro_batches=G). The two must give the same number.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.loss import LossOptions, LossScale, grpo_loss, importance_weights
from grpo_trainer.grpo.policy import (
    Policy,
    collate,
    peft_lora_config,
    policy_logprobs,
    reference_logprobs,
    wrap_policy,
)
from grpo_trainer.grpo.samples import TrainSample, advantages
from support.trl_reference import grpo_trainer, trl_layout, word_tokenizer

VOCAB = 64
PAD, EOS, BOS = 0, 2, 3
TEMPERATURE = 0.8
MAX_COMPLETION = 6
ACCUM = 2  # micro-batches per optimizer step (TRL: gradient_accumulation_steps == steps_per_generation)


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
    )
    return LlamaForCausalLM(cfg)


TRAIN = TrainKwargs(
    temperature=TEMPERATURE,
    lora_config={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]},
)


def _trl_trainer(model: LlamaForCausalLM, out: Path, **config: object) -> GRPOTrainer:
    return grpo_trainer(
        model,
        out,
        word_tokenizer(VOCAB, pad=PAD, eos=EOS, bos=BOS),
        peft_lora_config(TRAIN),
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=ACCUM,
        max_completion_length=MAX_COMPLETION,
        temperature=TEMPERATURE,
        **config,
    )


# Two micro-batches of four; prompts of different lengths; one truncated completion per micro-batch.
SAMPLES = [
    [
        TrainSample([3, 7, 8], [9, 10, 11, 2], [-4.0, -4.5, -3.9, -4.2], 1.2),
        TrainSample([3, 7, 8, 12, 13], [14, 15, 16, 17, 18, 19], [-4.1] * 6, -0.7, truncated=True),
        TrainSample([3, 20], [21, 2], [-3.5, float("nan")], 0.4),
        TrainSample([3, 22, 23, 24], [25, 26, 27], [-5.0, -2.0, -4.4], -0.9),
    ],
    [
        TrainSample([3, 30, 31], [32, 33, 34, 35, 36, 37], [-4.0] * 6, 0.8, truncated=True),
        TrainSample([3, 38], [39, 2], [-4.3, -4.0], -1.1),
        TrainSample([3, 40, 41, 42, 43], [44, 45, 2], [-3.0, -6.0, -4.1], 0.3),
        TrainSample([3, 46, 47], [48], [-4.2], 0.0),
    ],
]


@dataclass
class TrlInputs:
    inputs: dict[str, torch.Tensor]
    old: torch.Tensor
    ref: torch.Tensor
    sampler: torch.Tensor


def _trl_inputs(samples: list[TrainSample], mask_truncated: bool, n_items: int, seed: int) -> TrlInputs:
    """TRL's batch layout (support.trl_reference), with truncated completions already masked."""
    layout = trl_layout(samples, PAD)
    for i, s in enumerate(samples):
        if mask_truncated and s.truncated:
            layout["completion_mask"][i] = 0
    b, t_width = layout["completion_ids"].shape
    gen = torch.Generator().manual_seed(seed)
    # Old and reference logprobs away from the current ones, so that both clip sides and the KL are exercised.
    old = -4.0 + 0.4 * torch.randn((b, t_width), generator=gen)
    ref = -4.0 + 0.4 * torch.randn((b, t_width), generator=gen)
    sampler = layout.pop("sampling_per_token_logps")
    inputs = {
        **layout,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(n_items),
    }
    return TrlInputs(inputs=inputs, old=old, ref=ref, sampler=sampler)


def _pair(out: Path, **config: object) -> tuple[Policy, GRPOTrainer]:
    """Our policy and TRL's trainer on the same base weights and the same (random, non-zero) LoRA weights."""
    base = _tiny_model()
    ours = wrap_policy(copy.deepcopy(base), TRAIN, torch.device("cpu"))
    trainer = _trl_trainer(base, out, **config)
    theirs = dict(trainer.model.named_parameters())
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in ours.model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
                theirs[name].copy_(p)
    return ours, trainer


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [
    pytest.param(dict(loss_type="grpo", beta=0.0), id="grpo"),
    pytest.param(dict(loss_type="bnpo", beta=0.0), id="bnpo"),
    pytest.param(dict(loss_type="dr_grpo", beta=0.0), id="dr_grpo"),
    pytest.param(dict(loss_type="dapo", beta=0.0), id="dapo"),
    pytest.param(dict(loss_type="dapo", beta=0.05, epsilon=0.1, epsilon_high=0.28), id="dapo-kl-asym"),
    pytest.param(dict(loss_type="grpo", beta=0.1, epsilon=0.15, epsilon_high=0.3), id="grpo-kl-asym"),
    pytest.param(dict(loss_type="bnpo", beta=0.04, use_bias_correction_kl=False), id="bnpo-kl-plain"),
    pytest.param(
        dict(loss_type="dr_grpo", beta=0.02, epsilon_high=0.25, mask_truncated_completions=True),
        id="dr_grpo-kl-masked",
    ),
    pytest.param(dict(loss_type="dapo", mask_truncated_completions=True, is_cap=2.0), id="dapo-masked-is"),
    pytest.param(dict(loss_type="grpo", beta=0.05, is_cap=1.5), id="grpo-kl-is"),
]


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_match_trl(case: dict, tmp_path: Path) -> None:
    case = dict(case)
    is_cap = case.pop("is_cap", None)
    mask_truncated = bool(case.get("mask_truncated_completions", False))
    ours, trainer = _pair(tmp_path, **case)
    trainer.use_vllm = is_cap is not None
    options = LossOptions(
        loss_type=case["loss_type"],
        epsilon=float(case.get("epsilon", 0.2)),
        epsilon_high=case.get("epsilon_high"),
        beta=float(case.get("beta", 0.0)),
        kl_ratio_weighting=bool(case.get("use_bias_correction_kl", True)),
        max_completion_length=MAX_COMPLETION,
        mask_truncated_completions=mask_truncated,
        importance_sampling_cap=is_cap,
    )
    all_samples = [s for micro in SAMPLES for s in micro]
    n_items = sum(0 if options.excludes(s.truncated) else len(s.completion_ids) for s in all_samples)
    scale = LossScale(sequences=len(all_samples), tokens=n_items, micro_batches=len(SAMPLES))

    for seed, micro in enumerate(SAMPLES):
        trl_in = _trl_inputs(micro, mask_truncated, n_items, seed)
        batch = collate(micro, torch.device("cpu"))
        is_ratio = None
        if is_cap is not None:
            trl_mask = trl_in.inputs["completion_mask"].float()
            is_ratio = importance_weights(trl_in.old, trl_in.sampler, trl_mask, is_cap)
            trl_in.inputs["importance_sampling_ratio"] = is_ratio

        trainer.model.zero_grad(set_to_none=True)
        trl_loss = trainer._compute_loss(trainer.model, trl_in.inputs)
        trl_loss.backward()
        trl_grads = _grads(trainer.model)

        ours.model.zero_grad(set_to_none=True)
        logps = policy_logprobs(ours, batch)
        result = grpo_loss(
            logps,
            trl_in.old,
            batch.advantages,
            batch.completion_mask,
            options,
            scale,
            truncated=batch.truncated,
            ref_logps=trl_in.ref,
            sampler_logps=batch.sampler_logps,
        )
        result.loss.backward()
        our_grads = _grads(ours.model)

        assert result.loss.item() == pytest.approx(trl_loss.item(), abs=1e-5, rel=1e-5)
        assert set(our_grads) == set(trl_grads) and our_grads
        for name, grad in trl_grads.items():
            torch.testing.assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
        # The clip statistics agree with TRL's logged metric (masked token mean).
        trl_region = trainer._metrics["train"]["clip_ratio/region_mean"][-1]
        assert result.stats.clip_fraction == pytest.approx(trl_region, abs=1e-6)
        if options.beta:
            assert result.stats.mean_kl == pytest.approx(trainer._metrics["train"]["kl"][-1], rel=1e-5)
        if is_ratio is not None:
            assert result.stats.mean_is_weight > 0


def test_clipping_is_exercised_by_the_conformance_inputs(tmp_path: Path) -> None:
    """Guard: the inputs above clip on both sides, so the agreement covers the clipped branch."""
    ours, _ = _pair(tmp_path, loss_type="dapo")
    micro = SAMPLES[0]
    trl_in = _trl_inputs(micro, False, 16, 0)
    batch = collate(micro, torch.device("cpu"))
    logps = policy_logprobs(ours, batch).detach()
    ratio = torch.exp(logps - trl_in.old)[batch.completion_mask.bool()]
    assert (ratio > 1.2).any() and (ratio < 0.8).any()


def test_token_logprobs_match_trl_and_a_plain_forward(tmp_path: Path) -> None:
    """Our right-padded scoring equals TRL's scoring of each row alone (and a plain forward), with
    the adapter on and off (the reference logprobs TRL takes with the adapter disabled)."""
    ours, trainer = _pair(tmp_path, loss_type="dapo")
    batch = collate(SAMPLES[0], torch.device("cpu"))
    ours_policy = policy_logprobs(ours, batch).detach()
    ours_ref = reference_logprobs(ours, batch)
    assert not torch.allclose(ours_policy, ours_ref)  # the adapter changes the distribution
    base = ours.model.get_base_model()
    for i, s in enumerate(SAMPLES[0]):
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        n, t = len(s.prompt_ids), len(s.completion_ids)
        with torch.no_grad():
            trl_policy, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), t)
            with trainer.model.disable_adapter():
                trl_ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), t)
            logits = base.lm_head(base.model(ids).last_hidden_state)[0] / TEMPERATURE
        plain = logits.log_softmax(-1)[torch.arange(n - 1, n + t - 1), torch.tensor(s.completion_ids)]
        torch.testing.assert_close(ours_policy[i, :t], trl_policy[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_policy[i, :t], plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_ref[i, :t], trl_ref[0], atol=1e-5, rtol=1e-5)
    assert (ours_policy * (1 - batch.completion_mask)).abs().sum() == 0  # padding scores nothing


def test_importance_weights_truncate_at_the_cap() -> None:
    """min(exp(old - sampler), cap); a token vLLM did not score (NaN) or a pad gets weight 1."""
    old = torch.tensor([[-1.0, -1.0, -1.0, -2.0, 0.0]])
    sampler = torch.tensor([[-1.0 - math.log(1.5), -1.0 + math.log(4.0), -1.0 - math.log(5.0), float("nan"), -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    weights = importance_weights(old, sampler, mask, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.5, 0.25, 2.0, 1.0, 1.0]]))


@pytest.mark.parametrize("scale", [True, False])
def test_advantages_match_trl_group_normalisation(scale: bool) -> None:
    rewards = [0.1, 0.9, 0.4, 0.4, -1.0, 0.0]
    r = torch.tensor(rewards, dtype=torch.float64)
    expected = r - r.mean()
    if scale:
        expected = expected / (nanstd(r) + 1e-4)
    # TRL's nanstd applies Bessel's correction in float32, hence the tolerance.
    assert advantages(rewards, scale_rewards=scale) == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-9)
    assert advantages([0.5, 0.5, 0.5], scale_rewards=True) == [0.0, 0.0, 0.0]

"""The hyperparameter vocabulary: ``ArborGRPO(...)`` arguments and ``train_kwargs``.

Names and meanings are those of the DSPy tutorial (rl_papillon), so a notebook's
configuration pastes into a GRPOJob unchanged. Current DSPy and Arbor names are accepted
too (``num_rollouts_per_grpo_step``, ``checkpoint``, ``fp16``, ...), with their meaning there.
Where a default differs from Arbor's, the field's description says "Arbor: X". The trainer
owns these models (as TRL pairs GRPOConfig with GRPOTrainer); the GRPOJob API embeds them,
and the CRD schema is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field

from grpo_trainer.contract.rules import FieldAlias, Rule, RuledModel, nested, without_schema_default

# vLLM accepts only these values for --max-lora-rank; an adapter's rank must not
# exceed the flag, so the largest is the bound on the LoRA rank we accept.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LibraryKwargs(RuledModel):
    """Keys kept in the library's own snake_case, still schema-checked (like KubeRay's rayStartParams)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_default=True)


GroupingMode = Literal["truncate", "fill", "ragged"]
FillStrategy = Literal["randint", "max"]
CheckpointMode = Literal["single-best", "improvements", "none"]
AdapterFormat = Literal["chat", "json", "xml"]


class GRPOArgs(LibraryKwargs):
    """The arguments of the tutorial's ``ArborGRPO(...)`` call (and of current DSPy/Arbor), with their meaning there."""

    multitask: bool = Field(True, description="Pool the groups of all predictors into one training step.")
    num_dspy_examples_per_grpo_step: int = Field(
        4, ge=1, le=4096, description="Training examples sampled per step (Arbor: 1)."
    )
    num_samples_per_input: int = Field(
        8,
        ge=2,
        le=1024,
        description=(
            "Rollouts of the whole program per example (the group size); GRPO needs >= 2. Default 8 (Arbor: 4). "
            "Current DSPy and Arbor name it num_rollouts_per_grpo_step: set either name, not both."
        ),
        json_schema_extra=without_schema_default,
    )
    num_rollouts_per_grpo_step: Optional[int] = Field(
        None,
        ge=2,
        le=1024,
        exclude=True,
        description=(
            "num_samples_per_input under its current DSPy/Arbor name (the group size); the job keeps it as "
            "num_samples_per_input. Set either name, not both."
        ),
    )
    exclude_demos: bool = Field(True, description="Drop few-shot demos from prompts. Must be true, as in ArborGRPO.")
    num_train_steps: int = Field(500, ge=1, le=10_000_000, description="GRPO steps to run.")
    num_threads: int = Field(
        24, ge=1, le=1024, description="Program executions run concurrently during rollouts (Arbor: 6)."
    )
    use_train_as_val: bool = Field(False, description="Validate on the training set (requires report_train_scores).")
    num_steps_for_val: int = Field(10, ge=1, description="Validate every N steps (and at start and end) (Arbor: 5).")
    report_train_scores: bool = Field(False, description="Score the training set along with validation.")
    failure_score: float = Field(0.0, description="Reward of a rollout whose metric or external call failed.")
    format_failure_score: float = Field(-1.0, description="Reward of a rollout whose output could not be parsed.")
    variably_invoked_predictor_grouping_mode: GroupingMode = Field(
        "truncate",
        description=(
            "Groups of a predictor that rollouts call a varying number of times (group n holds the n-th calls): "
            "truncate, every rollout cut to the fewest calls; fill, every rollout brought to the most calls by "
            "repeating its own (variably_invoked_predictor_fill_strategy); ragged, as called (group n: the "
            "rollouts with an n-th call). A rollout that never called the predictor sits out its groups (DSPy "
            "drops that example's groups of the predictor instead)."
        ),
    )
    variably_invoked_predictor_fill_strategy: Optional[FillStrategy] = Field(
        None,
        description=(
            "Grouping mode fill: which of a rollout's own calls fills its missing ones: randint, one at random "
            "(seeded); max, its last one. Required with fill, unused otherwise."
        ),
    )
    adapter: AdapterFormat = Field(
        "chat",
        description=(
            "The DSPy adapter of the policy's prompts and outputs: chat (ChatAdapter, [[ ## field ## ]] markers), "
            "json (JSONAdapter), xml (XMLAdapter). No fallback to another format: an output that does not parse is "
            "a format failure (format_failure_score). The untrusted model and the judge keep DSPy's ChatAdapter."
        ),
    )
    # vLLM seeds NumPy with it (--seed), which takes 32 bits.
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the per-epoch example shuffle and of sampling.")
    checkpoint: CheckpointMode = Field(
        "single-best",
        description=(
            "Which adapters the run keeps as its result, as Arbor's checkpoint: single-best, the best by validation "
            "score (result/adapter; adapters/best.json); improvements, that and every adapter that improved on the "
            "best before it (kept in adapters/, listed in result/result.json); none, no best adapter: result/ holds "
            "the last step's. Resume checkpoints (checkpoint_every_steps) are kept in every mode."
        ),
    )
    checkpoint_every_steps: int = Field(
        1, ge=1, description="Full checkpoint (adapter, optimizer, scheduler, RNG, sampler) every N steps."
    )
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Full checkpoints kept on the volume.")
    constrain_output_format: bool = Field(
        False,
        description=(
            "Hold the local model's output to the adapter's format with vLLM structured outputs (a regex of the "
            "field markers, tags or JSON object; a JSON schema for json with list or object fields), for small or "
            "untrained models that cannot yet produce it."
        ),
    )
    # On by default: bench/trainer_step.py measured the overlapped step at 0.84x the sequential one even with
    # vLLM and the update sharing 2 CPU cores (bench/RESULTS.md, section trainer_step).
    overlap_rollouts: bool = Field(
        True,
        description=(
            "Generate step k+1's rollouts on the previous adapter while step k trains (one step off-policy, "
            "corrected by the importance weight against the sampler's logprobs). False: strictly on-policy steps."
        ),
    )
    aliases = (FieldAlias("num_rollouts_per_grpo_step", "num_samples_per_input"),)
    rules = (
        Rule(
            cel="self.exclude_demos",
            message="must be true: ArborGRPO trains on prompts without demos (set exclude_demos: true)",
            check=lambda g: g.exclude_demos,
            field="exclude_demos",
        ),
        Rule(
            cel="!self.use_train_as_val || self.report_train_scores",
            message="use_train_as_val requires report_train_scores: true",
            check=lambda g: not g.use_train_as_val or g.report_train_scores,
            field="use_train_as_val",
        ),
        Rule(
            cel="self.failure_score > self.format_failure_score",
            message="failure_score must exceed format_failure_score (a parse failure is the worst outcome)",
            check=lambda g: g.failure_score > g.format_failure_score,
            field="failure_score",
        ),
        Rule(
            cel=(
                "self.variably_invoked_predictor_grouping_mode != 'fill' "
                "|| has(self.variably_invoked_predictor_fill_strategy)"
            ),
            message=(
                "variably_invoked_predictor_grouping_mode fill needs variably_invoked_predictor_fill_strategy: "
                "randint or max"
            ),
            check=lambda g: g.variably_invoked_predictor_grouping_mode != "fill"
            or g.variably_invoked_predictor_fill_strategy is not None,
            field="variably_invoked_predictor_fill_strategy",
        ),
    )


class LoraConfig(LibraryKwargs):
    """PEFT LoraConfig keys (``train_kwargs['lora_config']``)."""

    r: int = Field(8, ge=1, le=max(VLLM_LORA_RANKS), description="LoRA rank (vLLM serves ranks up to 512).")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        min_length=1,
        max_length=64,
        description="Module names that get adapters.",
    )
    bias: Literal["none"] = Field("none", description="Only 'none': vLLM does not serve LoRA biases.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    use_dora: bool = Field(False, description="Must be false: vLLM cannot serve DoRA adapters.")
    modules_to_save: Optional[list[str]] = Field(
        None, max_length=64, description="Must be empty: vLLM cannot serve adapters with modules_to_save."
    )
    rules = (
        Rule(
            cel="!has(self.modules_to_save) || size(self.modules_to_save) == 0",
            message="vLLM cannot serve adapters with modules_to_save; remove it",
            check=lambda c: not c.modules_to_save,
            field="modules_to_save",
        ),
        Rule(
            cel="!self.use_dora",
            message="vLLM cannot serve DoRA adapters; set use_dora: false",
            check=lambda c: not c.use_dora,
            field="use_dora",
        ),
    )


LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


class TrainKwargs(LibraryKwargs):
    """The tutorial's ``train_kwargs``: TRL GRPOConfig keys plus Arbor's LoRA and GPU keys."""

    per_device_train_batch_size: int = Field(8, ge=1, le=4096, description="Sequences per device per micro-batch.")
    gradient_accumulation_steps: int = Field(
        4, ge=1, le=4096, description="Micro-batches per optimizer step (Arbor: 1)."
    )
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature of the local model (> 0: GRPO needs diverse samples).")
    top_k: int = Field(-1, ge=-1, description="Top-k sampling; -1 disables.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    min_p: float = Field(0.0, ge=0, le=1, description="Min-p sampling; 0 disables.")
    repetition_penalty: float = Field(1.0, gt=0, description="vLLM repetition penalty; 1 disables.")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 needs no reference model.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip range of the importance ratio.")
    epsilon_high: Optional[float] = Field(
        None, gt=0, description="Upper clip range; default: epsilon (Arbor: 0.28, DAPO's value)."
    )
    learning_rate: float = Field(1e-6, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lr_scheduler_type: SchedulerType = Field("constant_with_warmup", description="Learning-rate schedule (transformers names).")
    warmup_steps: int = Field(0, ge=0, description="Warm-up optimizer steps (Arbor: 10).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warm-up as a fraction of max_steps (used when warmup_steps is 0).")
    max_steps: int = Field(
        1000, ge=1, description="Horizon of the learning-rate schedule in optimizer steps (Arbor: 500)."
    )
    loss_type: LossType = Field("dapo", description="Normalisation of the GRPO loss: grpo, bnpo, dr_grpo or dapo.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's reward std.")
    mask_truncated_completions: bool = Field(
        False, description="Exclude completions that hit the token limit from the loss (Arbor: true)."
    )
    importance_sampling_cap: float = Field(
        2.0, gt=0, description="Truncate the trainer/sampler importance ratio at this value (off-policy correction)."
    )
    max_prompt_length: Optional[int] = Field(None, ge=1, description="Truncate prompts to N tokens (left); null: no limit.")
    max_completion_length: Optional[int] = Field(
        None, ge=1, description="Sampling limit of the local model in tokens; null: up to the model's context."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory (Arbor: true)."
    )
    bf16: bool = Field(False, description="bfloat16 mixed precision on GPU (ignored on CPU); not with fp16.")
    fp16: bool = Field(
        False,
        description=(
            "float16 mixed precision on GPU with a gradient scaler (an overflowing step is skipped and the scale "
            "lowered); ignored on CPU; not with bf16."
        ),
    )
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="Experiment tracker; wandb runs offline when there is no network."
    )
    log_completions: bool = Field(
        False, description="Write every completion and reward as JSONL on the volume (Arbor: true)."
    )
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps (Arbor: 10).")
    lora_config: LoraConfig = nested(LoraConfig, "PEFT LoRA configuration of the trained adapter.")
    ddp_timeout: int = Field(
        1800,
        ge=10,
        le=86400,
        description="Seconds a collective between the training processes may take (transformers' ddp_timeout). "
        "The processes' wait for the main one (vLLM start, validation, rollouts) has no such limit.",
    )
    num_training_gpus: int = Field(
        1, ge=0, le=64, description="GPUs of the trainer pod; one data-parallel process each (0: CPU)."
    )
    num_inference_gpus: int = Field(1, ge=0, le=64, description="GPUs of the vLLM pod (tensor parallel; 0: CPU build).")
    rules = (
        Rule(
            cel="!has(self.epsilon_high) || self.epsilon_high >= self.epsilon",
            message="epsilon_high must be >= epsilon (it widens the upper clip range)",
            check=lambda k: k.epsilon_high is None or k.epsilon_high >= k.epsilon,
            field="epsilon_high",
        ),
        Rule(
            cel="self.loss_type != 'dr_grpo' || has(self.max_completion_length)",
            message="loss_type dr_grpo normalises by max_completion_length; set it",
            check=lambda k: k.loss_type != "dr_grpo" or k.max_completion_length is not None,
            field="max_completion_length",
        ),
        Rule(
            cel="self.top_k != 0",
            message="top_k 0 is ambiguous; use -1 to disable top-k or a positive k",
            check=lambda k: k.top_k != 0,
            field="top_k",
        ),
        Rule(
            cel="!(self.fp16 && self.bf16)",
            message="set fp16 or bf16, not both (one mixed-precision type)",
            check=lambda k: not (k.fp16 and k.bf16),
            field="fp16",
        ),
        Rule(
            cel="self.warmup_steps < self.max_steps",
            message="warmup_steps must be smaller than max_steps",
            check=lambda k: k.warmup_steps < k.max_steps,
            field="warmup_steps",
        ),
    )

"""The embedded default job: what ``grpo-local`` runs with no job file.

PAPILLON on a tiny generated model with the bundled PII-delegation data and the
deterministic ``papillon_offline`` metric, so a new user sees a whole run
(rollouts, LoRA updates, adapter hot-swap, a reward curve) on a laptop CPU with
no API key and no download. The base model stands in for the untrusted model.

``grpo-local --print-default`` prints it as YAML, to copy and edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from grpo_operator.api import API_VERSION, KIND
from grpo_trainer.embedded.bundled import PII_DELEGATION
from grpo_trainer.embedded.tinymodel import DEFAULT_WARM_START_STEPS, ensure_tiny_model

JOB_NAME = "papillon-local"

# ---- Tuning knobs of the default run (CPU-sized; tuned so the tiny model measurably learns) ----
# Measured (bench/RESULTS.md, "learning"). At lr 3e-3 the overlapped run peaked at step 6 and fell
# below its baseline by step 10 (0.911 -> 0.976 -> 0.876); at 2e-3 both modes rose steadily
# (0.911 -> 0.98). With 4 samples per input and 160 completion tokens it learnt nothing in 10 steps.
NUM_TRAIN_STEPS = 10
EXAMPLES_PER_STEP = 4  # grpo.num_dspy_examples_per_grpo_step (the seed's)
SAMPLES_PER_INPUT = 8  # grpo.num_samples_per_input, the GRPO group size (the seed's)
NUM_THREADS = 8  # concurrent program executions (vLLM batches them)
NUM_STEPS_FOR_VAL = 5
LEARNING_RATE = 2e-3
# The field format's bound per field is what fits this (policy_adapters.field_chars_for): 384 leaves the
# redaction ~150 characters, room for a whole query; at 160 it was cut after ~45.
MAX_COMPLETION_LENGTH = 384
PER_DEVICE_TRAIN_BATCH_SIZE = 8
GRADIENT_ACCUMULATION_STEPS = 4
LORA_R = 8
LORA_ALPHA = 16
TEMPERATURE = 1.0
SEED = 0
# The tiny model is warm-started (grpo_trainer.embedded.warmstart, DEFAULT_WARM_START_STEPS), so it
# writes the program's fields, answers, and forwards or redacts the query about half the time each --
# the choice GRPO has to learn. A random model gives GRPO nothing to sharpen. It ships with the package.
# ------------------------------------------------------------------------------------------------

HEADER = """\
# The embedded default GRPOJob of grpo-local: PAPILLON on a tiny generated model
# (CPU), the bundled PII-delegation data and a deterministic metric; the base model
# stands in for the untrusted model. Edit and run:  grpo-local this-file.yaml
"""


def default_model_dir() -> Path:
    """The default's tiny model in the cache: copied from the package (or, after a recipe change, built)."""
    return ensure_tiny_model(warm_start_steps=DEFAULT_WARM_START_STEPS)


def default_job(model_dir: Path | None = None) -> dict[str, Any]:
    """The default GRPOJob document (as a manifest: camelCase keys).

    ``model_dir``: the model to use; by default :func:`default_model_dir`.
    """
    if model_dir is None:
        model_dir = default_model_dir()
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": JOB_NAME},
        "spec": {
            "program": {"builtin": "papillon"},
            "metric": {"builtin": "papillon_offline"},
            "model": {"path": str(Path(model_dir).resolve())},
            "data": {
                "train": {"file": {"path": str(PII_DELEGATION / "train.jsonl"), "format": "jsonl"}},
                "validation": {"file": {"path": str(PII_DELEGATION / "val.jsonl"), "format": "jsonl"}},
            },
            "grpo": {
                "multitask": True,
                "num_dspy_examples_per_grpo_step": EXAMPLES_PER_STEP,
                "num_samples_per_input": SAMPLES_PER_INPUT,
                "exclude_demos": True,
                "num_train_steps": NUM_TRAIN_STEPS,
                "num_threads": NUM_THREADS,
                "num_steps_for_val": NUM_STEPS_FOR_VAL,
                "seed": SEED,
                # The tiny model does not always write DSPy's field markers by itself.
                "constrain_output_format": True,
                # Sequential on a CPU: overlapped, vLLM and the trainer fight for the same cores and
                # a 10-step run took 5.5-6 min instead of 3.5 (bench/RESULTS.md, "learning").
                # On GPUs, where each side has its own device, leave the default (true).
                "overlap_rollouts": False,
            },
            "trainKwargs": {
                "learning_rate": LEARNING_RATE,
                "temperature": TEMPERATURE,
                "max_completion_length": MAX_COMPLETION_LENGTH,
                "per_device_train_batch_size": PER_DEVICE_TRAIN_BATCH_SIZE,
                "gradient_accumulation_steps": GRADIENT_ACCUMULATION_STEPS,
                "loss_type": "dapo",
                "beta": 0.0,
                "lr_scheduler_type": "constant",
                "lora_config": {"r": LORA_R, "lora_alpha": LORA_ALPHA},
                "num_training_gpus": 0,
                "num_inference_gpus": 0,
            },
        },
    }


def default_job_yaml(model_dir: Path | None = None) -> str:
    return HEADER + yaml.safe_dump(default_job(model_dir), sort_keys=False)

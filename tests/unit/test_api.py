"""The GRPOJob API's pydantic layer: the seed round-trips, bad input is named."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.resolve import ClusterTarget, resolve
from support.jobdocs import INVALID_CASES, ROOT, load_example, mutated
from support.seed import seed_call


def _seed_call() -> tuple[dict, dict]:
    return seed_call()


def test_seed_train_kwargs_arrive_unchanged():
    job = parse_job(load_example())
    seed_kwargs, _ = _seed_call()
    model = job.spec.train_kwargs
    for key, value in seed_kwargs.items():
        if key == "lora_config":
            for lkey, lvalue in value.items():
                assert getattr(model.lora_config, lkey) == lvalue, lkey
        else:
            assert getattr(model, key) == value, key


def test_seed_arbor_arguments_arrive_unchanged():
    job = parse_job(load_example())
    _, arbor = _seed_call()
    for key, node in arbor.items():
        if key in ("metric", "train_kwargs"):
            continue
        assert getattr(job.spec.grpo, key) == ast.literal_eval(node), key
    assert ast.unparse(arbor["metric"]) == job.spec.metric.builtin == "compute_overall_score"
    assert job.spec.model.name == "Qwen/Qwen2.5-1.5B-Instruct"
    assert job.spec.untrusted_model.model == job.spec.judge.model == "gpt-4.1-mini"
    assert job.spec.data.train.hub.split == "train[:225]"
    assert job.spec.data.validation.hub.split == "train[225:450]"


def test_seed_translates_to_trainer_config():
    job = parse_job(load_example())
    cfg = resolve("papillon", job.spec, ClusterTarget("papillon-inference", 8000, 9400, "papillon-vllm-key")).config
    assert cfg.train.num_training_gpus == 3 and cfg.train.lora_config.r == 8
    assert cfg.untrusted.api_key_env == "GRPO_UNTRUSTED_API_KEY"
    assert cfg.vllm.base_url == "http://papillon-inference:8000/v1"
    assert cfg.vllm.adapter_dir == "/mnt/grpo/adapters" and cfg.device == "cuda"
    assert cfg.train_data.source == "hub" and cfg.train_data.config == "pupa_new"
    # no secret value anywhere in the contract, only variable names
    assert "sk-" not in cfg.to_json()


def test_a_current_notebooks_arguments_paste_in_under_their_current_names():
    """ArborGRPO/GRPO as current DSPy and Arbor spell them: the group size under its new name, checkpoint,
    the grouping of variably invoked predictors, the adapter, fp16. One name for the group size inside."""
    doc = load_example()
    grpo = doc["spec"]["grpo"]
    grpo["num_rollouts_per_grpo_step"] = grpo.pop("num_samples_per_input") * 2
    grpo.update(
        checkpoint="improvements",
        variably_invoked_predictor_grouping_mode="fill",
        variably_invoked_predictor_fill_strategy="randint",
        adapter="json",
    )
    doc["spec"]["trainKwargs"].update(fp16=True, bf16=False)
    job = parse_job(doc)
    g = job.spec.grpo
    assert g.num_samples_per_input == 16
    assert (g.checkpoint, g.variably_invoked_predictor_grouping_mode, g.adapter) == ("improvements", "fill", "json")
    assert job.spec.train_kwargs.fp16
    cfg = resolve("papillon", job.spec, ClusterTarget("papillon-inference", 8000, 9400, "papillon-vllm-key")).config
    assert cfg.grpo.num_samples_per_input == 16 and "num_rollouts_per_grpo_step" not in cfg.to_json()
    assert type(cfg).model_validate_json(cfg.to_json()).grpo == cfg.grpo  # the trainer reads the same arguments


def test_enough_invalid_cases():
    assert len(INVALID_CASES) >= 30
    assert len({c["name"] for c in INVALID_CASES}) == len(INVALID_CASES)


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c["name"] for c in INVALID_CASES])
def test_invalid_job_rejected_naming_field(case):
    with pytest.raises(InvalidJob) as err:
        parse_job(mutated(case))
    text = str(err.value)
    assert case["field"] in text, text
    # every problem line starts with the path of the offending object
    assert all(re.match(r"^[A-Za-z_.\[\]0-9]+: ", line) for line in err.value.problems), err.value.problems


def test_inline_key_message_says_how_to_fix():
    case = next(c for c in INVALID_CASES if c["name"] == "inline-api-key")
    with pytest.raises(InvalidJob, match="apiKeySecretRef"):
        parse_job(mutated(case))


def test_minimal_job_gets_defaults():
    job = parse_job(
        {
            "apiVersion": "grpo.dev/v1alpha1",
            "kind": "GRPOJob",
            "metadata": {"name": "tiny"},
            "spec": {
                "program": {"builtin": "papillon"},
                "metric": {"builtin": "papillon_offline"},
                "model": {"path": "/models/tiny"},
                "data": {
                    "train": {"file": {"path": "/data/train.jsonl"}},
                    "validation": {"file": {"path": "/data/val.jsonl"}},
                },
            },
        }
    )
    assert job.spec.grpo.num_samples_per_input == 8
    assert job.spec.train_kwargs.lora_config.r == 8
    assert job.spec.storage.access_mode == "ReadWriteOnce"
    assert job.spec.run_policy.backoff_limit == 3


def test_examples_all_valid():
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        parse_job(yaml.safe_load(path.read_text()))

"""The DSPy tutorial "RL for Privacy-Conscious Delegation" (PAPILLON) with ``ArborGRPO`` replaced by this
project's ``GRPO``: the tutorial's program, its arguments and train_kwargs, and ``compile()`` returns the
optimized program, ready to call.

As written it runs the embedded local default on this machine (grpo-local, CPU, about 6 minutes on
2 cores): the tiny model shipped with the package stands in for Qwen2.5-1.5B and for the untrusted
gpt-4.1-mini, the bundled PII-delegation data for PUPA, and ``papillon_offline`` (the same score
shape, no judge calls) for ``compute_overall_score``. The lines marked ``tutorial:`` are the
tutorial's own, for the real run on a cluster.

    python examples/papillon_compile.py [WORKDIR] [--steps N]
"""

import argparse
import json

import dspy

from grpo_operator.client import GRPO, LocalBackend
from grpo_operator.local.default import default_model_dir
from grpo_trainer.dspy.rewards.offline import papillon_offline
from grpo_trainer.embedded.bundled import PII_DELEGATION

# tutorial: local_lm = dspy.LM(model="openai/arbor:Qwen/Qwen2.5-1.5B-Instruct", provider=ArborProvider(), ...)
# tutorial: openai_lm = dspy.LM(model="openai/gpt-4.1-mini", max_tokens=4000)
local_lm = dspy.LM(f"openai/{default_model_dir()}", temperature=1.0)
openai_lm = local_lm  # the base model stands in for the untrusted model: no API key needed

cli = argparse.ArgumentParser(description="PAPILLON optimized with GRPO.compile() on the embedded local default")
cli.add_argument("workdir", nargs="?", default="runs", help="where grpo-local keeps its runs")
cli.add_argument("--steps", type=int, default=10, help="training steps (tutorial: 500)")
args = cli.parse_args()


class CraftRedactedRequest(dspy.Signature):
    """
    Given a private user query, create a privacy-preserving request for a powerful external LLM.
    The LLM may assist without learning private information about the user.
    """

    user_query = dspy.InputField()
    llm_request = dspy.OutputField()


class RespondToQuery(dspy.Signature):
    """
    Respond to a user query.
    For inspiration, we found a potentially related request to a powerful external LLM and its response.
    """

    related_llm_request = dspy.InputField()
    related_llm_response = dspy.InputField(desc="information from a powerful LLM responding to a related request")
    user_query = dspy.InputField(desc="the user's request you need to fulfill")
    response = dspy.OutputField(desc="your final response to the user's request")


class PAPILLON(dspy.Module):
    def __init__(self, untrusted_model):
        self.craft_redacted_request = dspy.ChainOfThought(CraftRedactedRequest)
        self.respond_to_query = dspy.Predict(RespondToQuery)
        self.untrusted_model = untrusted_model

    def forward(self, user_query):
        try:
            llm_request = self.craft_redacted_request(user_query=user_query).llm_request
            llm_response = self.untrusted_model(llm_request)[0]
            response = self.respond_to_query(
                related_llm_request=llm_request, related_llm_response=llm_response, user_query=user_query
            ).response
        except Exception:
            return dspy.Prediction(llm_request="", llm_response="", response="")

        return dspy.Prediction(llm_request=llm_request, llm_response=llm_response, response=response)


# tutorial: pupa_new = load_dataset("Columbia-NLP/PUPA", "pupa_new")
#           trainset, devset = examples[:225], examples[225:450]
def examples(split):
    lines = (PII_DELEGATION / f"{split}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [
        dspy.Example(user_query=r["user_query"], target_response=r["target_response"], pii_str=r["pii_units"])
        .with_inputs("user_query")
        for r in rows
    ]


trainset, devset = examples("train"), examples("val")

papillon = PAPILLON(untrusted_model=openai_lm)
papillon.set_lm(local_lm)

# The tutorial's train_kwargs, sized for a CPU (the embedded default's values); tutorial: 3 + 1 GPUs, lr 1e-6.
train_kwargs = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 4,
    "temperature": 1.0,
    "beta": 0.0,
    "learning_rate": 2e-3,
    "lr_scheduler_type": "constant",
    "loss_type": "dapo",
    "max_completion_length": 384,
    "lora_config": {"r": 8, "lora_alpha": 16},
    "num_training_gpus": 0,
    "num_inference_gpus": 0,
}

compiler = GRPO(
    metric=papillon_offline,  # tutorial: compute_overall_score
    multitask=True,
    num_dspy_examples_per_grpo_step=4,
    num_samples_per_input=8,
    exclude_demos=True,
    num_train_steps=args.steps,  # tutorial: 500
    num_threads=8,  # tutorial: 24
    use_train_as_val=False,
    num_steps_for_val=args.steps,  # a validation at the start and at the end
    train_kwargs=train_kwargs,
    report_train_scores=False,
    constrain_output_format=True,  # the tiny model does not always write DSPy's field markers by itself
    overlap_rollouts=True,  # the next step's rollouts run while this one trains, as on GPUs
    backend=LocalBackend(workdir=args.workdir),
    # tutorial on a cluster: backend=ClusterBackend(namespace="team-a"), model="Qwen/Qwen2.5-1.5B-Instruct"
)

optimized_papillon = compiler.compile(
    student=papillon,
    trainset=trainset,
    valset=devset,
)

example = devset[0]
prediction = optimized_papillon(user_query=example.user_query)
print("job:", compiler.result.job, "validation score:", compiler.result.val_score)
print("query:", example.user_query)
print("request to the untrusted model:", prediction.llm_request)
print("response:", prediction.response)
print("score:", papillon_offline(example, prediction))

"""Rollouts of PAPILLON through a real vLLM (CPU) server, the example sampler, and their GRPO groups.

The untrusted model and the judge are the same server's base model, called through
the OpenAI-compatible client path (litellm -> OpenAI API) that real endpoints use.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import dspy
import httpx
import pytest
from transformers import AutoTokenizer

from grpo_trainer.contract.config import DataSpec, LMEndpoint, VLLMEndpoint
from grpo_trainer.dspy.data import load_examples
from grpo_trainer.dspy.lms import ExternalLM, PolicyLM, external_lm
from grpo_trainer.dspy.policy_adapters import PolicyChatAdapter, PolicyJSONAdapter
from grpo_trainer.dspy.programs.papillon import CRAFT, RESPOND
from grpo_trainer.dspy.registry import data_defaults, resolve_metric, resolve_program
from grpo_trainer.dspy.rewards.offline import papillon_offline
from grpo_trainer.embedded.bundled import PII_DELEGATION
from grpo_trainer.grpo.groups import build_groups
from grpo_trainer.grpo.rollout import ExampleSampler, PolicyCallError, Rollout, run_rollouts
from support.vllm import VLLMServer

# --------------------------------------------------------------------------- sampler


def test_sampler_visits_every_example_once_per_epoch_in_a_new_order() -> None:
    sampler = ExampleSampler(6, seed=3)
    epochs = [sampler.next_batch(3) + sampler.next_batch(3) for _ in range(3)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    assert ExampleSampler(6, seed=4).next_batch(6) != epochs[0]


def test_sampler_resumes_the_same_stream_from_its_state() -> None:
    straight = ExampleSampler(7, seed=11)
    expected = [straight.next_batch(3) for _ in range(8)]
    first = ExampleSampler(7, seed=11)
    head = [first.next_batch(3) for _ in range(3)]
    resumed = ExampleSampler.from_state(7, dict(first.state_dict()))
    assert head + [resumed.next_batch(3) for _ in range(5)] == expected


def test_sampler_batches_are_distinct_across_an_epoch_boundary() -> None:
    sampler = ExampleSampler(5, seed=0)
    for _ in range(20):
        batch = sampler.next_batch(4)
        assert len(set(batch)) == 4


# --------------------------------------------------------------------------- real rollouts


@dataclass
class Batch:
    rollouts: list[Rollout]
    examples: list[dspy.Example]
    policy: PolicyLM
    untrusted: ExternalLM


def papillon_examples(limit: int) -> list[dspy.Example]:
    defaults = data_defaults("papillon")
    spec = DataSpec(source="file", path=str(PII_DELEGATION / "train.jsonl"), limit=limit)
    return load_examples(spec, default_fields=defaults.fields, default_inputs=defaults.inputs)


def endpoint(server: VLLMServer) -> VLLMEndpoint:
    return VLLMEndpoint(base_url=server.openai_url, served_model_name=server.served_name, adapter_dir="/unused")


CONSTRAINED = PolicyChatAdapter(constrain_format=True, max_field_chars=100)


def run(
    server: VLLMServer,
    examples: list[dspy.Example],
    samples: int,
    *,
    untrusted: ExternalLM,
    metric: Any = papillon_offline,
    seed: int | None = 7,
    adapter: PolicyChatAdapter = CONSTRAINED,
    max_tokens: int = 160,
    **kw: Any,
) -> tuple[list[Rollout], PolicyLM]:
    policy = PolicyLM(server.openai_url, server.served_name, max_tokens=max_tokens)
    program = resolve_program("papillon", untrusted_lm=untrusted)
    rollouts = run_rollouts(program, metric, examples, samples, 4, lm=policy, seed=seed, adapter=adapter, **kw)
    return rollouts, policy


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def server(request: pytest.FixtureRequest) -> VLLMServer:
    """The rollout path on the tiny Llama and on the seed's architecture (a tiny Qwen2)."""
    return request.getfixturevalue("vllm_server" if request.param == "llama" else "qwen2_vllm_server")


@pytest.fixture(scope="module")
def batch(server: VLLMServer) -> Batch:
    examples = papillon_examples(2)
    untrusted = external_lm(None, role="untrusted", vllm=endpoint(server), default_max_tokens=32)
    rollouts, policy = run(server, examples, 4, untrusted=untrusted, failure_score=0.0, format_failure_score=-1.0)
    return Batch(rollouts=rollouts, examples=examples, policy=policy, untrusted=untrusted)


@pytest.fixture(scope="module")
def tokenizer(server: VLLMServer) -> Any:
    return AutoTokenizer.from_pretrained(server.model_dir)


@pytest.mark.vllm
def test_every_rollout_runs_both_predictors_once_and_is_scored_by_the_metric(batch: Batch, server: VLLMServer) -> None:
    assert [(r.example_index, r.sample_index) for r in batch.rollouts] == [(e, s) for e in range(2) for s in range(4)]
    for r in batch.rollouts:
        assert r.failure is None, r.error
        assert [(c.predictor, c.invocation) for c in r.calls] == [(CRAFT, 0), (RESPOND, 0)]
        assert r.reward == papillon_offline(batch.examples[r.example_index], dspy.Prediction(**r.prediction))
        assert all(c.model == server.served_name and c.finish_reason == "stop" for c in r.calls)
    assert len({r.reward for r in batch.rollouts}) > 1, "the metric must tell samples apart"


@pytest.mark.vllm
def test_recorded_ids_and_logprobs_are_exactly_what_vllm_returned(batch: Batch, server: VLLMServer) -> None:
    calls = [c for r in batch.rollouts for c in r.calls]
    by_completion = {tuple(c.completion_ids): c for c in calls}
    raw = [entry["response"] for entry in batch.policy.history]
    assert len(raw) == len(calls) == len(by_completion)
    for response in raw:
        choice = response.choices[0]
        recorded = by_completion[tuple(choice.token_ids)]
        assert recorded.prompt_ids == list(response.prompt_token_ids)
        assert recorded.logprobs == [t.logprob for t in choice.logprobs.content]
        assert len(recorded.completion_ids) == len(recorded.logprobs) > 0
    # The prompt ids are the chat prompt of the recorded messages (vLLM's own tokenizer endpoint).
    for c in calls[:4]:
        body = {"model": server.served_name, "messages": c.messages, "add_generation_prompt": True}
        tokens = httpx.post(f"{server.url}/tokenize", json=body, timeout=30).json()["tokens"]
        assert c.prompt_ids == tokens


@pytest.mark.vllm
def test_completion_ids_are_the_sampled_tokens_not_a_retokenisation(batch: Batch, tokenizer: Any) -> None:
    calls = [c for r in batch.rollouts for c in r.calls]
    for c in calls:
        assert c.completion_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(c.completion_ids, skip_special_tokens=True) == c.text
    retokenised_differs = [
        c for c in calls if tokenizer(c.text, add_special_tokens=False)["input_ids"] != c.completion_ids[:-1]
    ]
    assert retokenised_differs, "a random model's samples are rarely canonical BPE: re-tokenising would change them"


@pytest.mark.vllm
def test_samples_differ_and_each_rollout_keeps_its_own_calls_across_threads(batch: Batch, tokenizer: Any) -> None:
    for e in range(2):
        crafted = [tuple(r.calls[0].completion_ids) for r in batch.rollouts if r.example_index == e]
        assert len(set(crafted)) == 4
    for r in batch.rollouts:
        respond_prompt = tokenizer.decode(r.calls[1].prompt_ids)
        assert r.prediction["llm_request"] and r.prediction["llm_request"] in respond_prompt
        assert r.prediction["llm_response"].strip() in respond_prompt
        assert batch.examples[r.example_index].user_query in tokenizer.decode(r.calls[0].prompt_ids)


@pytest.mark.vllm
def test_the_same_seed_samples_the_same_tokens(batch: Batch, server: VLLMServer) -> None:
    untrusted = external_lm(None, role="untrusted", vllm=endpoint(server), default_max_tokens=32)
    again, _ = run(server, batch.examples[:1], 2, untrusted=untrusted, seed=7)
    other, _ = run(server, batch.examples[:1], 2, untrusted=untrusted, seed=8)
    first = [r.calls[0].completion_ids for r in batch.rollouts[:2]]
    assert [r.calls[0].completion_ids for r in again] == first  # the untrusted reply is unseeded: compare craft
    assert [r.calls[0].completion_ids for r in other] != first


@pytest.mark.vllm
def test_real_rollouts_become_train_samples_with_the_sampled_tokens(batch: Batch) -> None:
    grouped = build_groups(batch.rollouts, multitask=True, scale_rewards=False)
    assert len(grouped.batches) == 1 and grouped.total_groups == 4  # 2 examples x 2 predictors
    assert len(grouped.samples) == 4 * len(grouped.groups)
    calls = {tuple(c.completion_ids): c for r in batch.rollouts for c in r.calls}
    for s in grouped.samples:
        c = calls[tuple(s.completion_ids)]
        assert (s.prompt_ids, s.sampler_logprobs, s.truncated) == (c.prompt_ids, c.logprobs, c.truncated)
    for g in grouped.groups:
        assert sum(s.advantage for s in g.samples) == pytest.approx(0.0, abs=1e-9)
    per_predictor = build_groups(batch.rollouts, multitask=False, scale_rewards=False)
    assert [name for name, _ in per_predictor.batches] == [CRAFT, RESPOND]


def test_unparseable_output_is_a_format_failure_with_no_json_retry(vllm_server: VLLMServer) -> None:
    """Unconstrained, a random model never writes DSPy's field markers."""
    untrusted = external_lm(None, role="untrusted", vllm=endpoint(vllm_server), default_max_tokens=16)
    rollouts, policy = run(
        vllm_server,
        papillon_examples(1),
        2,
        untrusted=untrusted,
        adapter=PolicyChatAdapter(),
        max_tokens=24,
        format_failure_score=-1.0,
    )
    for r in rollouts:
        assert (r.failure, r.reward) == ("format", -1.0)
        assert [(c.predictor, c.parse_failed) for c in r.calls] == [(CRAFT, True)]  # one call: no JSONAdapter retry
    assert len(policy.history) == 2
    assert not untrusted.history, "the program stopped at the parse failure"
    grouped = build_groups(rollouts, multitask=True, scale_rewards=True)
    assert (grouped.zero_variance_groups, grouped.samples) == (1, [])


class Reviewed(dspy.Module):
    """The policy answers; a predictor with an LM of its own (chosen by the program) reviews the answer."""

    def __init__(self, reviewer: dspy.LM) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")
        self.review = dspy.Predict("question, answer -> verdict")
        self.review.lm = reviewer

    def forward(self, question: str) -> dspy.Prediction:
        answer = self.answer(question=question).answer
        try:
            verdict = self.review(question=question, answer=answer).verdict
        except Exception:  # a random reviewer cannot write DSPy's format: not the policy's failure
            verdict = ""
        return dspy.Prediction(answer=answer, verdict=verdict)


def test_a_json_rollout_records_what_vllm_sampled_and_only_the_policys_predictors(vllm_server: VLLMServer) -> None:
    """grpo.adapter json (constrained): the prompt vLLM saw is the JSONAdapter's, and the recorded prompt and
    completion ids are vLLM's own; the reviewer keeps the LM the program gave it and none of its calls is trained."""
    reviewer = dspy.LM(
        f"openai/{vllm_server.served_name}", api_base=vllm_server.openai_url, api_key="EMPTY", max_tokens=8, cache=False
    )
    program = Reviewed(reviewer)
    policy = PolicyLM(vllm_server.openai_url, vllm_server.served_name, max_tokens=64)
    examples = [dspy.Example(question="What is the capital of France?").with_inputs("question")]
    rollouts = run_rollouts(
        program, lambda example, pred, trace=None: float(len(pred.answer)), examples, 3, 3, lm=policy, seed=5,
        adapter=PolicyJSONAdapter(constrain_format=True),
    )  # fmt: skip
    assert program.answer.lm is policy and program.review.lm is reviewer
    assert reviewer.history, "the reviewer ran, on its own LM"
    calls = [c for r in rollouts for c in r.calls]
    assert [(c.predictor, c.parse_failed) for c in calls] == [("answer", False)] * 3
    for r, c in zip(rollouts, calls, strict=True):
        assert r.failure is None and r.reward == len(r.prediction["answer"]) > 0
        assert json.loads(c.text) == {"answer": r.prediction["answer"]}
    assert "Respond with a JSON object" in calls[0].messages[-1]["content"]  # JSONAdapter's prompt, not ChatAdapter's
    by_completion = {tuple(c.completion_ids): c for c in calls}
    for entry in policy.history:
        response = entry["response"]
        recorded = by_completion[tuple(response.choices[0].token_ids)]
        assert recorded.prompt_ids == list(response.prompt_token_ids)
        assert recorded.logprobs == [t.logprob for t in response.choices[0].logprobs.content]
    tokenizer = AutoTokenizer.from_pretrained(vllm_server.model_dir)
    for c in calls:
        body = {"model": vllm_server.served_name, "messages": c.messages, "add_generation_prompt": True}
        assert c.prompt_ids == httpx.post(f"{vllm_server.url}/tokenize", json=body, timeout=30).json()["tokens"]
        assert tokenizer.decode(c.completion_ids, skip_special_tokens=True) == c.text


def test_untrusted_model_and_judge_reach_vllm_through_the_openai_client(vllm_server: VLLMServer) -> None:
    untrusted = external_lm(
        LMEndpoint(model=vllm_server.served_name, base_url=vllm_server.openai_url, max_tokens=24),
        role="untrusted",
        vllm=endpoint(vllm_server),
    )
    judge = external_lm(
        LMEndpoint(model=vllm_server.served_name, base_url=vllm_server.openai_url, max_tokens=48),
        role="judge",
        vllm=endpoint(vllm_server),
    )
    metric = resolve_metric("compute_overall_score", judge_lm=judge)
    rollouts, _ = run(vllm_server, papillon_examples(1), 2, untrusted=untrusted, metric=metric, failure_score=0.25)
    assert [h["response_model"] for h in untrusted.history] == [vllm_server.served_name] * 2
    assert len(judge.history) >= 2 and {h["response_model"] for h in judge.history} == {vllm_server.served_name}
    for r in rollouts:
        # A random tiny judge cannot answer in DSPy's format: the metric fails, the step goes on.
        assert (r.failure, r.reward) == ("metric", 0.25)
        assert "AdapterParseError" in (r.error or "")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on exit: nothing listens there


def test_a_failing_external_endpoint_scores_failure_score_and_the_batch_completes(vllm_server: VLLMServer) -> None:
    dead = LMEndpoint(
        model="gpt-4.1-mini", base_url=f"http://127.0.0.1:{closed_port()}/v1", timeout_seconds=5, max_retries=1
    )
    untrusted = external_lm(dead, role="untrusted", vllm=endpoint(vllm_server))
    rollouts, _ = run(vllm_server, papillon_examples(1), 2, untrusted=untrusted, failure_score=0.25)
    for r in rollouts:
        assert (r.failure, r.reward) == ("external", 0.25)
        assert "untrusted" in (r.error or "") and "Connection" in (r.error or "")
        assert [c.predictor for c in r.calls] == [CRAFT]  # the policy call before it is still recorded

    live_untrusted = external_lm(None, role="untrusted", vllm=endpoint(vllm_server), default_max_tokens=16)
    judge_metric = resolve_metric(
        "compute_overall_score", judge_lm=external_lm(dead, role="judge", vllm=endpoint(vllm_server))
    )
    rollouts, _ = run(
        vllm_server, papillon_examples(1), 2, untrusted=live_untrusted, metric=judge_metric, failure_score=0.25
    )
    assert [(r.failure, r.reward) for r in rollouts] == [("external", 0.25)] * 2
    assert all("judge" in (r.error or "") for r in rollouts)


def test_an_adapter_vllm_does_not_serve_stops_the_batch(vllm_server: VLLMServer) -> None:
    policy = PolicyLM(vllm_server.openai_url, "policy-v404", max_tokens=16)
    untrusted = external_lm(None, role="untrusted", vllm=endpoint(vllm_server), default_max_tokens=16)
    program = resolve_program("papillon", untrusted_lm=untrusted)
    with pytest.raises(PolicyCallError, match="policy-v404") as info:
        run_rollouts(program, papillon_offline, papillon_examples(1), 2, 2, lm=policy, seed=1)
    assert info.value.failed_rollouts == 2
    policy.set_adapter(vllm_server.served_name)
    assert (
        len(run_rollouts(program, papillon_offline, papillon_examples(1), 2, 2, lm=policy, seed=1, adapter=CONSTRAINED))
        == 2
    )

"""The GRPO loop: rollouts → rewards → groups → LoRA update → adapter on the volume → vLLM.

Only the main rank talks to vLLM, runs the DSPy program and reports progress; every
rank holds the policy and takes part in the data-parallel update. Each step ends
with the adapter saved and served, so a crash loses at most the step in progress
(checkpoints every ``grpo.checkpoint_every_steps`` make the resume exact). With
``grpo.overlap_rollouts`` the next step's rollouts run in a background thread
while this step trains (:mod:`grpo_trainer.grpo.prefetch`).

A checkpoint that cannot be written (a full or failing volume) is reported, in the log
and in /progress, and the run goes on from the previous one; after
``MAX_CHECKPOINT_FAILURES`` in a row the attempt fails, so a volume that never recovers
cannot let unsaved work pile up. A new best adapter is published (``adapters/best.json``,
``result/``) once a checkpoint holds its step: a crash before that resumes from an
earlier checkpoint, retrains that step, and must not find a best that no longer exists.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import dspy
import torch
import torch.distributed as torch_dist
from transformers import set_seed

from grpo_trainer.contract.config import TrainerConfig
from grpo_trainer.contract.progress import (
    CODE_SUMMARY_CHARS,
    Progress,
    RunResult,
    StepDiagnostics,
    result_model_name,
)
from grpo_trainer.dspy.lms import PolicyLM, derive_seed
from grpo_trainer.dspy.policy_adapters import PolicyAdapter, PolicyChatAdapter, policy_adapter
from grpo_trainer.dspy.policy_binding import bind_policy
from grpo_trainer.dspy.task import Task, checked_task
from grpo_trainer.grpo.groups import Grouping, build_groups
from grpo_trainer.grpo.optim import build_optimizer, build_scheduler
from grpo_trainer.grpo.policy import Policy, load_policy
from grpo_trainer.grpo.prefetch import Drawn, Prefetcher, publish_unloads, resume_versions, sampling_version
from grpo_trainer.grpo.rollout import ExampleSampler, PolicyCallError, Rollout, run_rollouts
from grpo_trainer.grpo.samples import TrainSample
from grpo_trainer.grpo.update import UpdateStats, train_on_samples
from grpo_trainer.run.atomic import remove_leftovers, write_text_atomic
from grpo_trainer.run.checkpoint import CheckpointManager, TrainingState, capture_rng
from grpo_trainer.run.distributed import DistContext, broadcast_object, wait_for_main
from grpo_trainer.run.ownership import claim_run_dir
from grpo_trainer.run.progress_board import ProgressBoard
from grpo_trainer.run.progress_server import ProgressServer, TrainerMetrics
from grpo_trainer.run.result import keep_best, result_adapter, write_result
from grpo_trainer.run.stopflag import StopFlag
from grpo_trainer.run.tracking import CompletionLog, make_tracker
from grpo_trainer.usercode.install import CODE_IDENTITY_FILE, code_summary, identity_json
from grpo_trainer.vllm.adapters import AdapterStore, PublishResult, VLLMAdapterSync, version_name
from grpo_trainer.vllm.served_check import check_served_adapter

log = logging.getLogger(__name__)

STOP = "stop"  # broadcast instead of samples when the main rank decides to stop
# Checkpoints that may fail in a row before the attempt fails (a full disk that never frees): the
# run then restarts from the last one that was written, as after any failure.
MAX_CHECKPOINT_FAILURES = 3


@dataclass
class StepPlan:
    """What the main rank hands every rank for one step."""

    samples: list[TrainSample]
    predictor: str


@dataclass
class SampledStep:
    """A step's rollouts turned into training input, with what the progress report needs."""

    plan: StepPlan
    info: dict[str, Any]


class TimedMetric:
    """The metric, summing the seconds its calls take (they run concurrently inside the rollouts)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.seconds = 0.0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.metric(*args, **kwargs)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - started


@dataclass
class Sampling:
    """The main rank's side of a run: program, data, LMs and the served adapter."""

    program: dspy.Module
    metric: Any
    lm: PolicyLM
    train: list[dspy.Example]
    val: list[dspy.Example]
    sampler: ExampleSampler
    sync: VLLMAdapterSync
    store: AdapterStore
    board: ProgressBoard
    adapter: PolicyAdapter = field(default_factory=PolicyChatAdapter)
    completions: Optional[CompletionLog] = None
    tracker: Any = None
    server: Optional[ProgressServer] = None
    current: str = ""  # vLLM name of the newest served adapter (the base model's before step 1)
    # Held by whoever changes vLLM's adapters: the main thread publishing, or a
    # prefetch thread re-serving them after a vLLM restart.
    sync_lock: threading.Lock = field(default_factory=threading.Lock)


class GRPORun:
    """One trainer process's part of a run."""

    def __init__(
        self, cfg: TrainerConfig, dist: DistContext, stop: Optional[StopFlag] = None, task: Optional[Task] = None
    ) -> None:
        """``task``: the main rank's checked task (grpo_trainer.dspy.task.checked_task; made here when None)."""
        self.cfg = cfg
        self.task = task
        self.dist = dist
        self.stop = stop or StopFlag()
        self.run_dir = cfg.run_path
        self.max_steps = cfg.grpo.num_train_steps
        # the main rank alone writes checkpoints, and repairs what a killed writer left
        self.ckpt = CheckpointManager(self.run_dir, keep=cfg.grpo.keep_checkpoints, writer=dist.is_main)
        self.policy: Policy
        self.sampling: Optional[Sampling] = None
        self._pending_best: Optional[tuple[int, float]] = None  # a new best whose step no checkpoint holds yet
        self._checkpoint_failures = 0  # in a row
        self._probe: Optional[TrainSample] = None  # a sequence the end-of-run served-adapter check scores
        self.overlap = cfg.grpo.overlap_rollouts
        self.prefetch: Prefetcher[SampledStep] = Prefetcher()

    # -- set-up -----------------------------------------------------------------------

    def _setup_policy(self) -> Optional[TrainingState]:
        # The LoRA A matrices are drawn at random: the seed makes two runs of one config
        # start from the same adapter (a resume then restores the RNG it saved).
        set_seed(self.cfg.grpo.seed)
        self.policy = load_policy(self.cfg.model, self.cfg.train, self.cfg.device)
        self.optimizer = build_optimizer(self.policy.trainable_parameters(), self.cfg.train)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train)
        # The main rank picks the checkpoint (the newest verified one) and every rank restores that one.
        path = self.ckpt.latest() if self.dist.is_main else None
        wait_for_main(self.dist, "resume-from")
        path = broadcast_object(path, self.dist)
        if path is None:
            return None
        state = self.ckpt.restore(
            self.policy.model,
            self.optimizer,
            self.scheduler,
            path=path,
            rank=self.dist.rank,
            grad_scaler=self.policy.grad_scaler,
        )
        if state is not None and self.dist.is_main:  # every rank restored it; one line says so
            log.info("resumed from checkpoint", extra={"step": state.step, "ranks": self.dist.world_size})
        return state

    def _setup_sampling(self, state: Optional[TrainingState], task: Task) -> Sampling:
        cfg = self.cfg
        for sub in ("adapters", "checkpoints", "logs"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        initial = None
        if state is not None and "progress" in state.history:
            initial = Progress.model_validate(state.history["progress"])
        board = ProgressBoard(self.run_dir, cfg.job_name, self.max_steps, initial=initial)
        server = None
        if cfg.port:
            server = ProgressServer(board, cfg.port, cfg.listen_host, metrics=TrainerMetrics()).start()
        program, train = task.program, task.train
        write_text_atomic(self.run_dir / CODE_IDENTITY_FILE, identity_json(task.code))  # which code trained it
        board.code(code_summary(task.code, CODE_SUMMARY_CHARS))
        board.trained_predictors(task.trained_predictors)
        if state is not None and state.sampler:
            sampler = ExampleSampler.from_state(len(train), state.sampler)
        else:
            sampler = ExampleSampler(len(train), seed=cfg.grpo.seed)
        sync = VLLMAdapterSync.from_endpoint(cfg.vllm)
        store = AdapterStore(self.run_dir, cfg.vllm.served_model_name)
        lm = PolicyLM.from_config(cfg.vllm, cfg.vllm.served_model_name, cfg.train)
        bind_policy(program, lm)  # the predictors the task check found without an LM of their own
        return Sampling(
            program=program,
            metric=task.metric,
            lm=lm,
            train=train,
            val=task.val,
            sampler=sampler,
            sync=sync,
            store=store,
            board=board,
            adapter=policy_adapter(cfg.grpo.adapter, constrain_format=cfg.grpo.constrain_output_format),
            completions=CompletionLog(self.run_dir) if cfg.train.log_completions else None,
            tracker=make_tracker(cfg.train.report_to, self.run_dir, cfg.job_name, cfg.model_dump(mode="json")),
            server=server,
        )

    # -- the main rank's phases ----------------------------------------------------------

    def _adapter_name(self, version: int) -> str:
        return version_name(version, self.cfg.vllm.adapter_prefix) if version else self.cfg.vllm.served_model_name

    def _serve(self, s: Sampling, step: int, *, replaced: bool = False) -> None:
        """Make vLLM serve the adapter of ``step`` (the base model at step 0) as the current one.

        It does not switch the LM of a running batch: each batch names its adapter
        when it starts (a prefetched batch keeps sampling the one it started on).
        """
        with s.sync_lock:
            if step == 0:
                s.sync.wait_ready()
                s.current = self._adapter_name(0)
                return
            result = s.sync.publish(step, reload=replaced)
            self._warn_foreign(s, [result])
            s.board.loaded_adapters(s.sync.loaded)
        s.current = result.name
        s.board.record_timings(load=result.load_seconds, first_request=result.first_request_seconds)
        s.board.adapter(step, result.name)

    def _sample_until_served(self, s: Sampling, adapter: str, sample: Callable[[], list[Rollout]]) -> list[Rollout]:
        """Run ``sample`` on ``adapter``; if vLLM went away mid-batch, wait for it, re-serve the adapters and redo the batch.

        Seeded sampling makes the redone batch the one that was lost, so a vLLM
        restart changes nothing but the wall time. Gives up after the endpoint's
        wait timeout (the sync's own backoff raises VLLMUnavailableError). A batch
        that ends with vLLM serving ``adapter`` from a path not the run's (a foreign
        adapter under the run's name) is dropped and sampled again on the run's own.
        """
        deadline = time.monotonic() + self.cfg.vllm.wait_timeout_seconds
        s.lm.set_adapter(adapter)  # one batch at a time: nothing else samples while this one runs
        while True:
            try:
                rollouts = sample()
            except PolicyCallError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("policy sampling failed; waiting for vLLM", extra={"error": str(exc)[:300]})
                with s.sync_lock:
                    s.sync.wait_ready()
                    self._ensure_served(s)
                continue
            with s.sync_lock:
                replaced = self._ensure_served(s)
            if adapter not in replaced:
                return rollouts
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM kept serving an adapter not the run's under {adapter}; not training on it")
            log.warning("dropping the batch sampled on %s: vLLM served another adapter under that name", adapter)

    def _ensure_served(self, s: Sampling) -> set[str]:
        """vLLM serves every wanted version again, each from the run's own path (call under ``sync_lock``).
        Returns the names it served from another path."""
        replaced = self._warn_foreign(s, s.sync.ensure_current())
        s.board.loaded_adapters(s.sync.loaded)
        return replaced

    @staticmethod
    def _warn_foreign(s: Sampling, results: list[PublishResult]) -> set[str]:
        """A warning (log, /progress) for each version vLLM served from a path not the run's; their names."""
        foreign = [r for r in results if r.foreign is not None]
        for r in foreign:
            s.board.warn(
                f"vLLM served {r.name} from {r.foreign}, not from the run's {s.sync.lora_path(r.step)}: someone "
                "loaded an adapter under the run's name, or the server is stale; replaced by the run's own "
                "(a batch sampled on it is sampled again)"
            )
        return {r.name for r in foreign}

    def _evaluate(self, s: Sampling, examples: list[dspy.Example], tag: str) -> float:
        """Mean metric score, one seeded sample per example (failures score failure_score)."""
        g = self.cfg.grpo
        rollouts = self._sample_until_served(
            s,
            s.current,
            lambda: run_rollouts(
                s.program,
                s.metric,
                examples,
                1,
                g.num_threads,
                s.lm,
                g.failure_score,
                g.format_failure_score,
                seed=derive_seed(g.seed, tag),
                adapter=s.adapter,
            ),
        )
        scores = [r.score if r.score is not None else g.failure_score for r in rollouts]
        return statistics.fmean(scores) if scores else math.nan

    def _validate(self, s: Sampling, step: int) -> None:
        self.prefetch.wait()  # one rollout batch at a time: the program and the LM are shared
        s.board.set_phase("validate" if step else "baseline")
        with s.board.timed("validate"):
            score = self._evaluate(s, s.val, "val")
            train_score = self._evaluate(s, s.train, "train") if self.cfg.grpo.report_train_scores else None
        is_best = s.board.validation(step, score, baseline=step == 0, train_score=train_score)
        mode = self.cfg.grpo.checkpoint
        if is_best and mode != "none":  # none keeps no best adapter: the result is the last step's
            s.sync.set_best(step or None)  # vLLM keeps it loaded; the pruning spares it
            if step > 0:
                s.board.best_adapter(s.sync.version_name(step))
                self._pending_best = (step, score)  # kept (best.json, result/) with the checkpoint of this step
            else:
                s.board.best_adapter(None)
                self._write_result(s, finished=False)  # the base model: no adapter to wait for
        if s.tracker is not None:
            metrics = {"val/score": score}
            if train_score is not None:
                metrics["train/score"] = train_score
            s.tracker.log(metrics, step)
        log.info("validation", extra={"step": step, "score": score, "best": is_best})

    def _draw(self, s: Sampling, step: int) -> Drawn:
        """Step ``step``'s examples and the adapter that samples them (main thread: it owns the sampler)."""
        before = s.sampler.state_dict()
        indices = s.sampler.next_batch(self.cfg.grpo.num_dspy_examples_per_grpo_step)
        version = sampling_version(step, self.overlap)
        if version and not s.store.path(version).is_dir():
            # Only after a resume whose volume lost that adapter: sample on the current one (not exact).
            log.warning("adapter of step %d is gone; step %d samples on %s", version, step, s.current)
            version = step - 1
        with s.sync_lock:
            self._ensure_served(s)
        return Drawn(
            step=step, indices=indices, sampler_before=before, version=version, adapter=self._adapter_name(version)
        )

    def _rollouts(self, s: Sampling, drawn: Drawn, *, background: bool = False) -> SampledStep:
        """Sample, score and group one step's rollouts; thread-safe against the main thread's update."""
        g, t = self.cfg.grpo, self.cfg.train
        examples = [s.train[i] for i in drawn.indices]
        metric = TimedMetric(s.metric)
        with s.board.timed("rollout", show=not background):
            rollouts = self._sample_until_served(
                s,
                drawn.adapter,
                lambda: run_rollouts(
                    s.program,
                    metric,
                    examples,
                    g.num_samples_per_input,
                    g.num_threads,
                    s.lm,
                    g.failure_score,
                    g.format_failure_score,
                    example_indices=drawn.indices,
                    seed=derive_seed(g.seed, "step", drawn.step),
                    adapter=s.adapter,
                ),
            )
        s.board.record_timings(reward=metric.seconds)
        if rollouts and not any(r.calls for r in rollouts):
            raise RuntimeError(
                "no rollout of this step called the local model: the program fails before sampling "
                f"(first error: {next((r.error for r in rollouts if r.error), 'none reported; the program swallowed it')})"
            )
        grouping = Grouping(
            mode=g.variably_invoked_predictor_grouping_mode,
            fill_strategy=g.variably_invoked_predictor_fill_strategy,
            seed=derive_seed(g.seed, "fill", drawn.step),
        )
        grouped = build_groups(rollouts, multitask=g.multitask, scale_rewards=t.scale_rewards, grouping=grouping)
        if g.multitask or not grouped.batches:
            predictor, samples = grouped.batches[0] if grouped.batches else ("all", [])
        else:
            predictor, samples = grouped.batches[(drawn.step - 1) % len(grouped.batches)]
        if s.completions is not None:
            for r in rollouts:
                for call in r.calls:
                    s.completions.write(
                        drawn.step,
                        r.example_index,
                        call.predictor,
                        call.text,
                        r.reward,
                        failure=r.failure,
                        adapter=call.model,
                    )
        rewards = [r.reward for r in rollouts]
        failures: dict[str, int] = {}
        for r in rollouts:
            if r.failure:
                failures[r.failure] = failures.get(r.failure, 0) + 1
        lengths = [len(c.completion_ids) for r in rollouts for c in r.calls]
        info = {
            "reward_mean": statistics.fmean(rewards) if rewards else 0.0,
            "reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
            "tokens_generated": sum(lengths),
            "rollout_failures": failures,
            "skipped_groups": grouped.zero_variance_groups,
            "zero_variance_group_share": grouped.zero_variance_groups / grouped.total_groups
            if grouped.total_groups
            else 0.0,
            "completion_length_mean": statistics.fmean(lengths) if lengths else 0.0,
            "completion_length_max": max(lengths, default=0),
            "sampled_by": drawn.adapter,
        }
        return SampledStep(StepPlan(samples=samples, predictor=predictor), info)

    def _next_step(self, s: Sampling, step: int) -> SampledStep:
        """Step ``step``'s training input: the prefetched batch, or sampled now; then prefetch the next one."""
        s.board.set_phase("rollout")
        started = time.monotonic()
        if self.prefetch.pending is not None:
            sampled, _ = self.prefetch.take(step)
        else:
            sampled = self._rollouts(s, self._draw(s, step))
        s.board.record_timings(rollout_wait=time.monotonic() - started)
        if self.overlap and step < self.max_steps and not self.stop.requested:
            drawn = self._draw(s, step + 1)
            self.prefetch.start(drawn, lambda: self._rollouts(s, drawn, background=True))
        return sampled

    def _drop_prefetch(self, s: Sampling) -> None:
        """Forget a batch drawn but never trained: the sampler goes back to before its draw."""
        drawn = self.prefetch.discard()
        if drawn is not None:
            s.sampler = ExampleSampler.from_state(len(s.train), drawn.sampler_before)

    # -- checkpoints --------------------------------------------------------------------------

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = capture_rng()
        if not self.dist.is_distributed:
            return [mine]
        gathered: list[Any] = [None] * self.dist.world_size
        torch_dist.all_gather_object(gathered, mine)
        return gathered

    def _checkpoint(self, step: int) -> None:
        # The main rank publishes the adapter (waiting out a vLLM restart) and validates
        # before it gets here; the others wait on the store, not in the gather.
        wait_for_main(self.dist, f"checkpoint-{step}")
        rngs = self._gather_rng()  # every rank takes part
        if not self.dist.is_main:
            return
        s = self.sampling
        assert s is not None
        snapshot = s.board.snapshot()
        pending = self.prefetch.pending  # drawn for the next step, not trained: resume samples it again
        state = TrainingState(
            step=step,
            sampler=pending.sampler_before if pending is not None else s.sampler.state_dict(),
            best_score=snapshot.best_val_score,
            best_step=snapshot.best_step,
            history={"progress": snapshot.model_dump(mode="json")},
        )
        owner = self.cfg.owner
        try:
            self.ckpt.save(
                state,
                self.policy.model,
                self.optimizer,
                self.scheduler,
                rng_states=rngs,
                base_model_name=self.cfg.vllm.served_model_name,
                grad_scaler=self.policy.grad_scaler,
                job=owner.job.model_dump(mode="json") if owner is not None else None,
            )
        except OSError as exc:
            self._checkpoint_failed(s, step, exc)
            return
        self._checkpoint_failures = 0
        s.board.checkpoint_saved(step)
        self._publish_best(s)
        s.store.prune(self.cfg.grpo.keep_checkpoints + 1, protect=s.sync.wanted())

    def _checkpoint_failed(self, s: Sampling, step: int, exc: OSError) -> None:
        """Go on from the previous checkpoint, which the failed write left as it was; fail the attempt after
        MAX_CHECKPOINT_FAILURES in a row (it restarts from that checkpoint)."""
        self._checkpoint_failures += 1
        previous = s.board.snapshot().checkpoint_step
        error = f"{type(exc).__name__}: {exc}"
        s.board.checkpoint_failed(step, error)
        log.warning(
            "checkpoint failed; going on from the previous one",
            extra={
                "step": step, "error": error, "previous_checkpoint": previous, "in_a_row": self._checkpoint_failures,
            },  # fmt: skip
        )
        if self._checkpoint_failures >= MAX_CHECKPOINT_FAILURES:
            resume = f"the checkpoint of step {previous}" if previous else "the start (no checkpoint was written)"
            raise RuntimeError(
                f"{self._checkpoint_failures} checkpoints in a row could not be written (the last, of step {step}: "
                f"{error}); ending this attempt: the next one resumes from {resume}"
            ) from exc

    def _publish_best(self, s: Sampling) -> None:
        """Keep the new best adapter (best.json; improvements.json with grpo.checkpoint improvements) and replace
        result/ with it, now that a checkpoint holds its step."""
        if self._pending_best is None:
            return
        step, score = self._pending_best
        keep_best(s.store, self.cfg.grpo.checkpoint, step, score)
        self._write_result(s, finished=False)
        self._pending_best = None

    def _restore_best(self, s: Sampling, state: TrainingState) -> None:
        """After a resume: best.json (and improvements.json) and result/ as the checkpoint has them. A crash
        between a checkpoint and their update left them behind it; none leaves them ahead (they follow it)."""
        mode = self.cfg.grpo.checkpoint
        if mode == "none":  # no best kept; result/ is the last step's, written at the end
            return
        best_step, on_disk = state.best_step or 0, s.store.best()
        if best_step and not s.store.path(best_step).is_dir():
            log.warning("the best adapter of the checkpoint is gone from the volume", extra={"step": best_step})
        elif best_step and state.best_score is not None and (on_disk is None or on_disk.step != best_step):
            keep_best(s.store, mode, best_step, state.best_score)
        elif not best_step and on_disk is not None:
            s.store.clear_best()
        written = s.board.snapshot().result
        if written is None or written.step != best_step:
            self._write_result(s, finished=False)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> str:
        """Train to the end (or until stopped); returns the final phase: done or stopped.

        Raises TaskError (main rank) when the job's program, metric or data is wrong, and ForeignRunError
        when the run directory holds another job's run, before any model loads.
        """
        if self.dist.is_main:
            if self.task is None:
                self.task = checked_task(self.cfg)
            if self.cfg.owner is not None:
                claim_run_dir(self.run_dir, self.cfg.owner)
            remove_leftovers(self.run_dir)  # a result/ a crash left between its two renames
        state = self._setup_policy()
        step = state.step if state is not None else 0
        if self.dist.is_main:
            assert self.task is not None
            self.sampling = s = self._setup_sampling(state, self.task)
            if state is not None:
                s.board.checkpoint_saved(state.step)  # the newest checkpoint written, as far as this run knows
                if state.best_step and self.cfg.grpo.checkpoint != "none":
                    s.sync.set_best(state.best_step)
                self._restore_best(s, state)
            for version in resume_versions(step, self.overlap):
                if version in (0, step) or s.store.path(version).is_dir():
                    self._serve(s, version)
            if step == 0 and s.board.snapshot().baseline_val_score is None:
                self._validate(s, 0)
        last_checkpoint = step
        try:
            while step < self.max_steps:
                plan: StepPlan | str | None = None
                info: dict[str, Any] = {}
                if self.dist.is_main:
                    assert self.sampling is not None
                    if self.stop.requested:
                        plan = STOP
                        self._drop_prefetch(self.sampling)
                    else:
                        sampled = self._next_step(self.sampling, step + 1)
                        plan, info = sampled.plan, sampled.info
                if self.dist.is_distributed:
                    wait_for_main(self.dist, f"plan-{step + 1}")
                    plan = broadcast_object(plan, self.dist)
                if isinstance(plan, str) or plan is None:
                    break
                step += 1
                self._train_step(step, plan, info)
                if step % self.cfg.grpo.checkpoint_every_steps == 0 or step == self.max_steps:
                    self._checkpoint(step)
                    last_checkpoint = step
            if step != last_checkpoint:
                self._checkpoint(step)
        except BaseException as exc:
            if self.dist.is_main and self.sampling is not None:
                self.sampling.board.fail(f"{type(exc).__name__}: {exc}")
            raise
        phase = "done" if step >= self.max_steps else "stopped"
        if self.dist.is_main and self.sampling is not None:
            s = self.sampling
            if phase == "done":
                self._check_served_adapter(s, step)
                if self._pending_best is not None:  # its checkpoint failed, but no step will be retrained now
                    keep_best(s.store, self.cfg.grpo.checkpoint, *self._pending_best)
                self._serve_result(s, self._write_result(s, finished=True))
                if self.cfg.vllm.adapter_prefix:
                    self._release_versions(s)
                s.board.finish()
            else:
                s.board.set_phase("stopped")
            if s.tracker is not None:
                s.tracker.close()
            if s.completions is not None:
                s.completions.close()
        return phase

    def _write_result(self, s: Sampling, *, finished: bool) -> RunResult:
        """Replace result/ on the volume with the best adapter so far, or with grpo.checkpoint none the
        last step's (see grpo_trainer.run.result)."""
        assert self.task is not None
        snapshot = s.board.snapshot()
        mode = self.cfg.grpo.checkpoint
        adapter, base_score = result_adapter(mode, s.store, snapshot)
        result = write_result(
            self.run_dir,
            job=self.cfg.job_name,
            base_model=self.cfg.model,
            adapter=adapter,
            base_score=base_score,
            program=self.task.program,
            progress=snapshot,
            finished=finished,
            checkpoint=mode,
            improvements=s.store.improvements(),
        )
        s.board.record_result(result)
        return result

    def _serve_result(self, s: Sampling, result: RunResult) -> None:
        """The result adapter into vLLM under the job's name: what a succeeded job with serve.enabled
        goes on serving (the operator keeps the pod). A report if it fails, not a failed run."""
        if result.adapter is None:
            return
        try:
            s.sync.serve_named(result_model_name(self.cfg.job_name), result.adapter)
        except Exception as exc:
            log.warning("could not serve the result", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _release_versions(self, s: Sampling) -> None:
        """A finished job on an inference pool unloads its versions, so that the pool's other jobs get the
        slots and its status stops counting them (its result, served under its name, is not a version).
        A report if it fails, not a failed run: a restarted server drops them anyway."""
        try:
            unloaded = s.sync.release()
        except Exception as exc:
            log.warning("could not unload the run's versions", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        s.board.loaded_adapters(s.sync.loaded)
        log.info("unloaded the run's versions from the shared server", extra={"adapters": unloaded})

    def _check_served_adapter(self, s: Sampling, step: int) -> None:
        """Record whether vLLM serves exactly the final adapter on the volume (scored on the last trained sample)."""
        probe = self._probe
        if probe is None or step == 0:
            return
        try:
            check = check_served_adapter(
                self.policy.model,
                self.policy.device,
                self.cfg.vllm.base_url,
                s.sync.version_name(step),
                s.store.path(step),
                probe.prompt_ids + probe.completion_ids,
                api_key=self.cfg.vllm.api_key(),
            ).as_dict()
        except Exception as exc:  # a report, not a reason to fail a finished run
            log.warning("served adapter check failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            check = {"adapter": s.sync.version_name(step), "error": f"{type(exc).__name__}: {exc}"}
        s.board.record_served_check(check)

    def _train_step(self, step: int, plan: StepPlan, info: dict[str, Any]) -> None:
        s = self.sampling
        if plan.samples:
            self._probe = plan.samples[0]
        if s is not None:
            s.board.set_phase("train")
        started = time.monotonic()
        stats = train_on_samples(self.policy, self.optimizer, self.scheduler, plan.samples, self.cfg.train, self.dist)
        train_seconds = time.monotonic() - started
        if s is None:
            return
        s.board.record_timings(
            train=train_seconds, forward_backward=stats.forward_backward_seconds, optimizer=stats.optimizer_seconds
        )
        s.board.set_phase("sync")
        saved = s.store.save(self.policy.model, step)
        s.board.record_timings(save=saved.seconds)
        pending = self.prefetch.pending
        if pending is not None and publish_unloads(pending.version, s.sync.max_loras, s.sync.keep_previous):
            self.prefetch.wait()  # vLLM has no room to keep the prefetch's adapter beside the new one
        self._serve(s, step, replaced=saved.replaced)
        diagnostics = step_diagnostics(stats, info)
        s.board.step_done(
            step,
            reward_mean=info.get("reward_mean", 0.0),
            reward_std=info.get("reward_std", 0.0),
            tokens_generated=info.get("tokens_generated", 0),
            tokens_trained=stats.tokens,
            rollout_failures=info.get("rollout_failures", {}),
            skipped_groups=info.get("skipped_groups", 0),
            diagnostics=diagnostics,
        )
        if s.tracker is not None:
            s.tracker.log(tracker_metrics(diagnostics, info), step)
        g = self.cfg.grpo
        if step % g.num_steps_for_val == 0 or step == self.max_steps:
            self._validate(s, step)
        log.info(
            "step done",
            extra={
                "step": step,
                "reward_mean": info.get("reward_mean"),
                "samples": len(plan.samples),
                "loss": stats.loss,
                "sampled_by": info.get("sampled_by"),
            },
        )

    def final_progress(self) -> Optional[Progress]:
        """The progress document as the run left it (main rank only; None before it was set up)."""
        return self.sampling.board.snapshot() if self.sampling is not None else None

    def close(self) -> None:
        self.prefetch.close()
        s = self.sampling
        if s is not None:
            if s.server is not None:
                s.server.stop()
            s.sync.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def step_diagnostics(stats: UpdateStats, info: Mapping[str, Any]) -> StepDiagnostics:
    """The step's update statistics and rollout shape, for the progress document and /metrics."""
    return StepDiagnostics(
        loss=stats.loss,
        grad_norm=stats.grad_norm,
        learning_rate=stats.lr,
        clip_fraction=stats.clip_fraction,
        clip_fraction_low=stats.clip_fraction_low,
        clip_fraction_high=stats.clip_fraction_high,
        mean_kl=stats.mean_kl,
        mean_ratio=stats.mean_ratio,
        mean_importance_weight=stats.mean_is_weight,
        zero_variance_group_share=info.get("zero_variance_group_share", 0.0),
        completion_length_mean=info.get("completion_length_mean", 0.0),
        completion_length_max=info.get("completion_length_max", 0),
    )


def tracker_metrics(d: StepDiagnostics, info: Mapping[str, Any]) -> dict[str, float]:
    """The step's scalars under the keys TRL's GRPOTrainer logs, so existing dashboards read them."""
    return {
        "train/reward": info.get("reward_mean", 0.0),
        "train/reward_std": info.get("reward_std", 0.0),
        "train/loss": d.loss,
        "train/grad_norm": d.grad_norm,
        "train/learning_rate": d.learning_rate,
        "train/clip_ratio/low_mean": d.clip_fraction_low,
        "train/clip_ratio/high_mean": d.clip_fraction_high,
        "train/clip_ratio/region_mean": d.clip_fraction,
        "train/kl": d.mean_kl,
        "train/importance_weight_mean": d.mean_importance_weight,
        "train/frac_reward_zero_std": d.zero_variance_group_share,
        "train/completions/mean_length": d.completion_length_mean,
        "train/completions/max_length": float(d.completion_length_max),
    }

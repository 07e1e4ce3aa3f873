"""The overlap mode's pure rules and its single-batch background runner (no vLLM)."""

from __future__ import annotations

import threading

import pytest

from grpo_trainer.grpo.prefetch import Drawn, Prefetcher, publish_unloads, resume_versions, sampling_version
from grpo_trainer.run.progress_board import ProgressBoard


def test_sampling_version_is_one_step_further_behind_when_overlapped() -> None:
    assert [sampling_version(s, overlap=False) for s in range(1, 6)] == [0, 1, 2, 3, 4]
    assert [sampling_version(s, overlap=True) for s in range(1, 6)] == [0, 0, 1, 2, 3]


def test_resume_serves_the_adapter_the_next_rollouts_need_before_the_current_one() -> None:
    assert resume_versions(0, overlap=True) == [0]
    assert resume_versions(1, overlap=True) == [1]  # step 2 samples the base model, always served
    assert resume_versions(4, overlap=True) == [3, 4]
    assert resume_versions(4, overlap=False) == [4]
    assert resume_versions(0, overlap=False) == [0]


def test_publish_keeps_the_in_flight_adapter_only_with_room_for_the_previous_one() -> None:
    assert not publish_unloads(3, max_loras=2, keep_previous=True)
    assert publish_unloads(3, max_loras=1, keep_previous=True)
    assert publish_unloads(3, max_loras=4, keep_previous=False)
    assert not publish_unloads(0, max_loras=1, keep_previous=False)  # the base model is never unloaded


def _drawn(step: int) -> Drawn:
    return Drawn(step=step, indices=[0, 1], sampler_before={"seed": 0, "epoch": 0, "position": 2 * step}, version=0, adapter="base")


def test_prefetcher_runs_one_batch_in_the_background_and_hands_it_over_once() -> None:
    release = threading.Event()
    main = threading.current_thread()
    ran_on: list[threading.Thread] = []
    prefetch: Prefetcher[str] = Prefetcher()
    try:
        def work() -> str:
            ran_on.append(threading.current_thread())
            release.wait(10)
            return "batch-3"

        prefetch.start(_drawn(3), work)
        assert prefetch.pending == _drawn(3)
        with pytest.raises(RuntimeError, match="still pending"):
            prefetch.start(_drawn(4), lambda: "x")
        with pytest.raises(RuntimeError, match="no pending rollouts for step 4"):
            prefetch.take(4)
        threading.Timer(0.2, release.set).start()
        result, waited = prefetch.take(3)
        assert result == "batch-3" and waited > 0.1
        assert ran_on and ran_on[0] is not main
        assert prefetch.pending is None and prefetch.wait() == 0.0
    finally:
        prefetch.close()


def test_prefetcher_raises_the_batch_error_on_take_and_swallows_it_on_discard() -> None:
    prefetch: Prefetcher[str] = Prefetcher()
    try:
        def fail() -> str:
            raise ValueError("vLLM gone")

        prefetch.start(_drawn(2), fail)
        with pytest.raises(ValueError, match="vLLM gone"):
            prefetch.take(2)
        prefetch.start(_drawn(5), fail)
        assert prefetch.discard() == _drawn(5)  # the loop restores the sampler from it
        assert prefetch.pending is None and prefetch.discard() is None
    finally:
        prefetch.close()


def test_background_timing_does_not_replace_the_shown_phase(tmp_path) -> None:
    board = ProgressBoard(tmp_path, "job", 3)
    board.set_phase("train")
    with board.timed("rollout", show=False):
        pass
    board.record_timings(rollout_wait=0.0, forward_backward=0.5, optimizer=0.1)
    doc = board.snapshot()
    assert doc.phase == "train" and doc.timings.rollout is not None
    assert doc.timings.rollout_wait == 0.0 and doc.timings.forward_backward == 0.5

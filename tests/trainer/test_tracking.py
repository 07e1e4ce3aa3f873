"""report_to trackers and the completions JSONL log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grpo_trainer.contract.config import UNTRUSTED_API_KEY_ENV
from grpo_trainer.run.tracking import CompletionLog, NullTracker, make_tracker
from support.checkout import checkout_env


def test_tensorboard_tracker_writes_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = make_tracker("tensorboard", tmp_path, job="demo")
    tracker.log({"reward/mean": 0.25, "val/score": 0.5}, step=1)
    tracker.log({"reward/mean": 0.75}, step=2)
    tracker.close()

    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    assert [e.value for e in events.Scalars("val/score")] == [0.5]


def test_none_tracker_writes_nothing(tmp_path: Path) -> None:
    tracker = make_tracker("none", tmp_path, job="demo")
    assert isinstance(tracker, NullTracker)
    tracker.log({"x": 1.0}, step=1)
    assert not (tmp_path / "logs").exists()


# A trainer image without wandb: its import fails as for a package that is not installed
# (ModuleNotFoundError from the import system), in a process of its own.
WITHOUT_WANDB = """
import importlib.abc, sys
from pathlib import Path

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "wandb":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from grpo_trainer.run.tracking import TrackingError, make_tracker
try:
    make_tracker("wandb", Path(sys.argv[1]), job="demo")
except TrackingError as exc:
    print(exc)
    sys.exit(3)
"""


def test_missing_wandb_fails_at_start_with_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_WANDB, str(tmp_path)], capture_output=True, text=True,
                          env=checkout_env(), timeout=120)  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "'wandb' package is not installed" in proc.stdout and "report_to" in proc.stdout
    assert not (tmp_path / "logs" / "wandb").exists()


def test_wandb_without_key_runs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = make_tracker("wandb", tmp_path, job="demo")
    tracker.log({"reward/mean": 0.5}, step=1)
    tracker.close()
    assert any((tmp_path / "logs" / "wandb").rglob("offline-run-*"))


def test_completion_log_is_jsonl_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv(UNTRUSTED_API_KEY_ENV, secret)
    with CompletionLog(tmp_path) as completions:

        def writer(worker: int) -> None:
            for i in range(50):
                completions.write(
                    step=3,
                    example=f"ex-{worker}",
                    predictor="craft_redacted_request",
                    completion=f"line {i}\nwith a newline and the key {secret}",
                    reward=0.5,
                    sample=i,
                )

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    text = (tmp_path / "logs" / "completions.jsonl").read_text()
    assert secret not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 200
    first = records[0]
    assert {"step", "example", "predictor", "completion", "reward", "sample"} <= set(first)
    assert first["step"] == 3 and first["reward"] == 0.5 and first["predictor"] == "craft_redacted_request"
    assert first["completion"].endswith("the key [REDACTED]")

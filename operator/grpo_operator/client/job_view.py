"""A GRPOJob as its user sees it: state, progress, the deciding condition's words, the result and endpoint.

One reading of a job's status for the ``grpo`` CLI's tables, ``compile()``'s progress
bar and its errors; the state is the first True condition in the operator's order,
as ``kubectl get grpojobs`` shows it (api/status.py CONDITION_ORDER).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from grpo_operator.api.status import CONDITION_ORDER
from grpo_trainer.contract.progress import Phase, Progress

FINISHED = ("Succeeded", "Failed")
# The trainer's phase as the bar names it, by the job's state.
_PHASES: dict[str, Phase] = {"Training": "train", "Succeeded": "done", "Failed": "failed", "Suspended": "stopped"}


@dataclass(frozen=True)
class JobView:
    name: str
    namespace: Optional[str]
    state: str  # Pending before the operator's first status
    reason: str
    message: str
    step: int
    max_steps: Optional[int]
    train_reward: Optional[float]
    val_score: Optional[float]
    best_val_score: Optional[float]
    baseline_val_score: Optional[float]
    result: Optional[Mapping[str, Any]]
    endpoint: Optional[Mapping[str, Any]]
    trainer_pod: Optional[str]
    inference_pod: Optional[str]
    conditions: list[Mapping[str, Any]] = field(default_factory=list)
    generation: Optional[int] = None
    observed_generation: Optional[int] = None
    suspended: bool = False

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> JobView:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        conditions = list(status.get("conditions") or [])
        by_type = {c.get("type"): c for c in conditions}
        deciding = next((by_type[t] for t in CONDITION_ORDER if by_type.get(t, {}).get("status") == "True"), None)
        if deciding is None:  # nothing True yet: the first condition that says why not
            deciding = next((by_type[t] for t in reversed(CONDITION_ORDER) if t in by_type), None)
            state = "Pending"
        else:
            state = str(deciding["type"])
        return cls(
            name=str(meta.get("name")),
            namespace=meta.get("namespace"),
            state=state,
            reason=str((deciding or {}).get("reason") or ""),
            message=str((deciding or {}).get("message") or ""),
            step=int(status.get("step") or 0),
            max_steps=status.get("maxSteps") or (obj.get("spec") or {}).get("grpo", {}).get("num_train_steps"),
            train_reward=status.get("trainReward"),
            val_score=status.get("valScore"),
            best_val_score=status.get("bestValScore"),
            baseline_val_score=status.get("baselineValScore"),
            result=status.get("result"),
            endpoint=status.get("endpoint"),
            trainer_pod=status.get("trainerPod"),
            inference_pod=status.get("inferencePod"),
            conditions=conditions,
            generation=meta.get("generation"),
            observed_generation=status.get("observedGeneration"),
            suspended=bool((obj.get("spec") or {}).get("suspend")),
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def serving(self) -> bool:
        ready = next((c for c in self.conditions if c.get("type") == "InferenceReady"), {})
        return self.endpoint is not None and ready.get("status") == "True" and ready.get("reason") == "Serving"

    def progress(self) -> Progress:
        """The view as a progress document, for the same display grpo-local uses."""
        return Progress(
            job=self.name,
            phase=_PHASES.get(self.state, "starting"),
            step=self.step,
            max_steps=int(self.max_steps or 0),
            reward_mean=self.train_reward,
            val_score=self.val_score,
            best_val_score=self.best_val_score,
        )

    def row(self) -> dict[str, Any]:
        """The fields of ``grpo status``'s table (and of its JSON)."""
        return {
            "name": self.name,
            "state": self.state,
            "step": self.step,
            "max": self.max_steps,
            "reward": self.train_reward,
            "val": self.val_score,
            "best": self.best_val_score,
            "message": self.message,
        }


def poll_view(
    view: Callable[[], JobView],
    until: Callable[[JobView], bool],
    *,
    on_view: Optional[Callable[[JobView], None]],
    timeout: Optional[float],
    poll: float,
    what: str,
) -> JobView:
    """Read ``view()`` every ``poll`` seconds until ``until`` holds; TimeoutError naming ``what`` and its state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = view()
        if on_view is not None:
            on_view(current)
        if until(current):
            return current
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{what} is {current.state} ({current.reason}: {current.message}) after {timeout:g} s")
        time.sleep(poll)

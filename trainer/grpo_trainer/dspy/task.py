"""The user's task -- program, metric and data -- resolved and checked before any model loads.

A wrong ``importPath``, a missing column or a metric that raises is a mistake in
the job, not a fault: a rerun fails the same way. So the trainer resolves the task
first (seconds: imports and a data read), checks that the data feeds the program's
``forward`` and that the metric scores one example, and raises :class:`TaskError`
with the reason the operator puts on the job (``InvalidProgram``, ``InvalidMetric``,
``InvalidData``, ``InvalidCode`` for a missing code source). The trainer then
exits with ``exit_codes.INVALID_JOB`` and no retry is spent on it.
"""

from __future__ import annotations

import inspect
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import dspy

from grpo_trainer.contract.config import DataSpec, TrainerConfig
from grpo_trainer.contract.progress import ErrorReason
from grpo_trainer.dspy.data import DataUnavailable, describe, load_examples
from grpo_trainer.dspy.lms import external_lm
from grpo_trainer.dspy.policy_binding import policy_predictors
from grpo_trainer.dspy.registry import (
    BUILTIN_METRICS,
    BUILTIN_PROGRAMS,
    Metric,
    data_defaults,
    resolve_metric,
    resolve_program,
)
from grpo_trainer.usercode.install import CodeError, CodeIdentity, install_code

log = logging.getLogger(__name__)

# Built-in metrics that call a judge LM: scored on the first rollouts, not in the pre-flight check.
JUDGED_METRICS = frozenset({"compute_overall_score"})
ERROR_CHARS = 1500  # of a user's exception text in the error


class TaskError(Exception):
    """The job's program, metric or data is wrong; ``reason`` is the condition reason the job fails with."""

    def __init__(self, reason: ErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: ErrorReason = reason


@dataclass
class Task:
    """What the main rank trains on."""

    program: dspy.Module
    metric: Metric
    train: list[dspy.Example]
    val: list[dspy.Example]
    code: list[CodeIdentity] = field(default_factory=list)  # the job's code sources as used
    # the predictors the policy drives and trains (the others have an LM of their own)
    trained_predictors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the check found, as ``--check`` prints it."""
        return {
            "program": type(self.program).__name__,
            "predictors": [name for name, _ in self.program.named_predictors()],
            "trained_predictors": list(self.trained_predictors),
            "inputs": sorted(self.train[0].inputs().keys()),
            "train_examples": len(self.train),
            "val_examples": len(self.val),
            "code": [asdict(c) for c in self.code],
        }


def _ref(kind: str, name: str, builtins: tuple[str, ...]) -> str:
    """How the job file names it: ``program.builtin: papillon`` or ``program.importPath: 'm:attr'``."""
    return f"{kind}.builtin {name!r}" if name in builtins else f"{kind}.importPath {name!r}"


def _text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def code_work_dir() -> Path:
    """Where packed code is unpacked: the temp dir (a pod's writable emptyDir under its read-only root)."""
    return Path(tempfile.gettempdir()) / "grpo-code"


def checked_task(cfg: TrainerConfig) -> Task:
    """The job's task with its untrusted and judge LMs (built, not called): what the trainer checks first."""
    untrusted = external_lm(
        cfg.untrusted, role="untrusted", vllm=cfg.vllm, default_max_tokens=cfg.train.max_completion_length
    )
    judge = external_lm(
        cfg.judge or cfg.untrusted, role="judge", vllm=cfg.vllm, default_max_tokens=cfg.train.max_completion_length
    )
    return load_task(cfg, untrusted_lm=untrusted, judge_lm=judge)


def load_task(
    cfg: TrainerConfig, *, untrusted_lm: Optional[dspy.BaseLM], judge_lm: Optional[dspy.BaseLM]
) -> Task:
    """Put the job's code on the import path, resolve the program, metric and data sets and check
    that they fit together; raises TaskError."""
    try:
        code = install_code(cfg.code, code_work_dir())
    except CodeError as exc:
        raise TaskError("InvalidCode", str(exc)) from exc
    program_ref = _ref("program", cfg.program, BUILTIN_PROGRAMS)
    try:
        program = resolve_program(cfg.program, untrusted_lm=untrusted_lm, exclude_demos=cfg.grpo.exclude_demos)
    except Exception as exc:  # user code: an import may raise anything
        raise TaskError("InvalidProgram", f"{program_ref}: {_text(exc)}") from exc
    trained = policy_predictors(program)
    if not trained:
        names = ", ".join(name for name, _ in program.named_predictors())
        raise TaskError(
            "InvalidProgram",
            f"{program_ref}: every predictor has an LM of its own ({names}), so none is left for the local model "
            "to drive and train; leave the LM of the predictors to train unset (the trainer binds the local model "
            "to those)",
        )
    metric_ref = _ref("metric", cfg.metric, BUILTIN_METRICS)
    try:
        metric = resolve_metric(cfg.metric, judge_lm=judge_lm)
    except Exception as exc:
        raise TaskError("InvalidMetric", f"{metric_ref}: {_text(exc)}") from exc

    defaults = data_defaults(cfg.program, program)
    train = _load("data.train", cfg.train_data, defaults.fields, defaults.inputs)
    if cfg.grpo.use_train_as_val or cfg.val_data is None:
        val = train
    else:
        val = _load("data.validation", cfg.val_data, defaults.fields, defaults.inputs)
    for where, examples in (("data.train", train), ("data.validation", val)):
        _check_inputs(where, examples[0], program, program_ref)
    if cfg.metric not in JUDGED_METRICS:
        _check_metric(metric, metric_ref, train[0], program)
    log.info(
        "task checked",
        extra={
            "program": cfg.program,
            "metric": cfg.metric,
            "train_examples": len(train),
            "val_examples": len(val),
            "trained_predictors": trained,
        },
    )
    return Task(program=program, metric=metric, train=train, val=val, code=code, trained_predictors=trained)


def _load(where: str, spec: DataSpec, fields: Any, inputs: tuple[str, ...]) -> list[dspy.Example]:
    """The examples; a data set that cannot be fetched *for now* is a failure to retry, not an invalid job."""
    try:
        return load_examples(spec, default_fields=fields, default_inputs=inputs)
    except DataUnavailable:
        raise
    except Exception as exc:
        raise TaskError("InvalidData", f"{where} ({describe(spec)}): {_text(exc)}") from exc


def required_inputs(program: dspy.Module) -> list[str]:
    """The parameters of ``program.forward`` a call must pass (no default, not ``*args``/``**kwargs``)."""
    # the class's function: DSPy warns on every read of an instance's ``forward``
    params = inspect.signature(type(program).forward).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and p.name != "self"
    ]


def _check_inputs(where: str, example: dspy.Example, program: dspy.Module, program_ref: str) -> None:
    """Every argument ``forward`` requires is an input of the examples (rollouts call ``program(**inputs)``)."""
    given = set(example.inputs().keys())
    missing = [name for name in required_inputs(program) if name not in given]
    if missing:
        raise TaskError(
            "InvalidData",
            f"{where}: {program_ref} needs input(s) {', '.join(missing)} but the examples give "
            f"{', '.join(sorted(given)) or 'none'} (fields: {', '.join(example.keys())}). Map columns to the "
            f"program's fields with {where}.fields, or name the inputs with {where}.inputFields.",
        )


def _stand_in_prediction(example: dspy.Example, program: dspy.Module) -> dspy.Prediction:
    """A prediction with every output field of the program's predictors: the example's gold value where it has one."""
    outputs: dict[str, Any] = {}
    for _, predictor in program.named_predictors():
        for name in predictor.signature.output_fields:
            outputs[name] = example.get(name, "")
    for name in example.labels().keys():
        outputs.setdefault(name, example[name])
    return dspy.Prediction(**outputs)


def _check_metric(metric: Metric, metric_ref: str, example: dspy.Example, program: dspy.Module) -> None:
    """The metric scores one example (its gold values as the prediction) with a finite number, without raising."""
    try:
        score = metric(example, _stand_in_prediction(example, program), None)
    except Exception as exc:
        raise TaskError(
            "InvalidMetric",
            f"{metric_ref} raised on the first training example (its gold fields as the prediction): {_text(exc)}",
        ) from exc
    try:
        value = float(score)  # as the rollouts read it (a feedback metric's Prediction(score=...) too)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise TaskError(
            "InvalidMetric",
            f"{metric_ref} returned {score!r} ({type(score).__name__}) for the first training example; "
            "a metric returns a finite number, a bool or a Prediction with a score",
        )

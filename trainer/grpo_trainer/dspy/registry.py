"""Programs and metrics by name: a built-in name or a ``module:attr`` import path.

A custom program is a ``dspy.Module`` instance, a class or a factory; a class or
factory that takes ``untrusted_model`` gets the untrusted LM (as PAPILLON does).
A custom metric is a callable ``(example, pred, trace=None)``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import dspy

from grpo_trainer.dspy.data import PUPA_FIELDS

Metric = Callable[..., Any]


@dataclass(frozen=True)
class DataDefaults:
    """How a program's examples look: field mapping (program field -> column) and input fields."""

    fields: Optional[Mapping[str, str]]
    inputs: tuple[str, ...]


BUILTIN_PROGRAMS = ("papillon",)
BUILTIN_METRICS = ("compute_overall_score", "papillon_offline")


def load_object(path: str) -> Any:
    """``package.module:attr`` (attr may be dotted) -> the object."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r} is neither a built-in name nor a 'module:attr' import path")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} (from {path!r}): {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def strip_demos(program: dspy.Module) -> dspy.Module:
    """Drop few-shot demos from every predictor (ArborGRPO's exclude_demos)."""
    for _, predictor in program.named_predictors():
        predictor.demos = []
    return program


def resolve_program(
    name: str, *, untrusted_lm: Optional[dspy.BaseLM] = None, exclude_demos: bool = True
) -> dspy.Module:
    """A fresh program instance for a built-in name or import path."""
    if name == "papillon":
        from grpo_trainer.dspy.programs.papillon import PAPILLON

        if untrusted_lm is None:
            raise ValueError("the papillon program needs an untrusted model LM")
        program: Any = PAPILLON(untrusted_model=untrusted_lm)
    else:
        obj = load_object(name)
        if isinstance(obj, dspy.Module):
            program = obj.deepcopy()
        elif callable(obj):
            # A dspy.Module class's metaclass hides __init__'s parameters behind (*args, **kwargs).
            target = obj.__init__ if isinstance(obj, type) else obj
            try:
                params = inspect.signature(target).parameters
            except (TypeError, ValueError):
                params = {}  # type: ignore[assignment]
            program = obj(untrusted_model=untrusted_lm) if "untrusted_model" in params else obj()
        else:
            raise TypeError(f"{name!r} is a {type(obj).__name__}, not a dspy.Module, class or factory")
        if not isinstance(program, dspy.Module):
            raise TypeError(f"{name!r} produced a {type(program).__name__}, not a dspy.Module")
    if not program.named_predictors():
        raise ValueError(f"program {name!r} has no predictors to train")
    return strip_demos(program) if exclude_demos else program


def resolve_metric(name: str, *, judge_lm: Optional[dspy.BaseLM] = None) -> Metric:
    """A metric callable ``(example, pred, trace=None)`` for a built-in name or import path."""
    if name == "compute_overall_score":
        from grpo_trainer.dspy.rewards.papillon import make_compute_overall_score

        if judge_lm is None:
            raise ValueError("compute_overall_score needs a judge LM")
        return make_compute_overall_score(judge_lm)
    if name == "papillon_offline":
        from grpo_trainer.dspy.rewards.offline import papillon_offline

        return papillon_offline
    obj = load_object(name)
    if not callable(obj):
        raise TypeError(f"metric {name!r} is a {type(obj).__name__}, not a callable")
    return obj


def data_defaults(name: str, program: Optional[dspy.Module] = None) -> DataDefaults:
    """Default field mapping and input fields of a program's examples.

    Built-in PAPILLON: PUPA's columns, input ``user_query``. A custom program: no
    mapping (columns are fields), inputs from the parameters of its ``forward``.
    """
    if name == "papillon":
        from grpo_trainer.dspy.programs.papillon import INPUT_FIELDS

        return DataDefaults(fields=PUPA_FIELDS, inputs=INPUT_FIELDS)
    inputs: tuple[str, ...] = ()
    if program is not None:
        params = inspect.signature(type(program).forward).parameters.values()  # DSPy warns on instance.forward
        inputs = tuple(
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        )
    return DataDefaults(fields=None, inputs=inputs)

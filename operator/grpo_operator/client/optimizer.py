"""``GRPO``: the DSPy optimizer that trains a program's local model as a GRPOJob.

It takes ``ArborGRPO``'s arguments (the ``grpo:`` names of a GRPOJob) and
``train_kwargs``, so the tutorial's cell runs with one line changed::

    compiler = GRPO(metric=compute_overall_score, num_dspy_examples_per_grpo_step=4, ...,
                    train_kwargs=train_kwargs, backend=ClusterBackend(namespace="team-a"))
    optimized_papillon = compiler.compile(student=papillon, trainset=trainset, valset=devset)

``compile()`` ships the student's code (:mod:`.code_bundle`) and data with the job
(:mod:`.submission`), runs it on the backend -- grpo-local here, or a cluster --
with a progress bar, and returns a copy of the student whose trained predictors
call the served best adapter. Re-running the same cell with the same program,
configuration and data finds the same job: a running one is followed, a finished
one returns its result, an interrupted local one resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence

from pydantic import ValidationError

from grpo_operator.api.job import format_errors
from grpo_operator.client.code_bundle import make_bundle
from grpo_operator.client.errors import BundleError, JobRejected
from grpo_operator.client.served import ServedResult, bind_result
from grpo_operator.client.student import analyse
from grpo_operator.client.submission import Submission, build
from grpo_trainer.contract.hparams import GRPOArgs, TrainKwargs

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Where a compile()'s job runs: grpo-local (:class:`~grpo_operator.client.local_backend.LocalBackend`) or a
    cluster (:class:`~grpo_operator.client.cluster_backend.ClusterBackend`)."""

    def spec_overrides(self) -> Mapping[str, Any]: ...

    def run(self, submission: Submission) -> ServedResult: ...


def _validated(kind: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The arguments as the job will hold them; a misspelt or out-of-range one is refused here, by name."""
    try:
        kind.model_validate(dict(values))
    except ValidationError as exc:
        problems = [f"{what}.{line}" if not line.startswith(":") else f"{what}{line}" for line in format_errors(exc)]
        raise JobRejected(f"invalid {what}:\n  " + "\n  ".join(problems), problems) from None
    return dict(values) if values else {}  # as the user wrote them: the job shows them the same way


class GRPO:
    """GRPO with LoRA on the program's local model, as a GRPOJob (ArborGRPO's arguments).

    Args:
        metric: ``(example, prediction, trace=None) -> float``, defined at the top level of a module, notebook or
            script (it is shipped to the trainer as source).
        train_kwargs: the tutorial's ``train_kwargs`` (TRL GRPOConfig keys, ``lora_config``, ``num_training_gpus``,
            ``num_inference_gpus``).
        backend: where the job runs: ``LocalBackend()`` (default: grpo-local on this machine) or
            ``ClusterBackend(namespace=...)``.
        model: the base model to train when the student's LM does not name it: a hub id, a local directory, or a
            GRPOJob ``spec.model`` mapping (e.g. a path on a claim).
        name: the job's name (default: derived from the program, configuration and data, so a re-run finds it).
        **grpo: ``ArborGRPO``'s arguments (``num_dspy_examples_per_grpo_step``, ``num_samples_per_input``,
            ``num_train_steps``, ``num_threads``, ``num_steps_for_val``, ...; ``kubectl explain grpojob.spec.grpo``).
    """

    def __init__(
        self,
        metric: Any,
        *,
        train_kwargs: Optional[Mapping[str, Any]] = None,
        backend: Optional[Backend] = None,
        model: Any = None,
        name: Optional[str] = None,
        **grpo: Any,
    ) -> None:
        if not callable(metric):
            raise TypeError(f"metric must be a function (example, prediction, trace=None) -> float, not {metric!r}")
        self.metric = metric
        self.grpo = _validated(GRPOArgs, grpo, "grpo")
        self.train_kwargs = _validated(TrainKwargs, train_kwargs or {}, "train_kwargs")
        self.model = model
        self.name = name
        if backend is None:
            from grpo_operator.client.local_backend import LocalBackend

            backend = LocalBackend()
        self.backend = backend
        self.result: Optional[ServedResult] = None  # the last compile()'s job, result and endpoint

    def submission(self, student: Any, trainset: Sequence[Any], valset: Optional[Sequence[Any]] = None) -> Submission:
        """The job compile() would run, without running it (``.yaml()`` shows it as a manifest)."""
        analysed = analyse(student)
        workdir = Path(tempfile.mkdtemp(prefix="grpo-compile-"))
        paths, bundle = make_bundle({"program": analysed.program_class, "metric": self.metric}, workdir / "code")
        for module, dist in bundle.installed.items():
            log.info("the trainer image must provide %s (%s here)", module, dist)
        return build(
            student=analysed,
            bundle=bundle,
            paths=paths,
            trainset=trainset,
            valset=valset,
            grpo=self.grpo,
            train_kwargs=self.train_kwargs,
            model=self.model,
            name=self.name,
            spec_overrides=self.backend.spec_overrides(),
            main_ns=vars(sys.modules["__main__"]),
        )

    def compile(
        self,
        student: Any,
        *,
        trainset: Sequence[Any],
        valset: Optional[Sequence[Any]] = None,
        teacher: Any = None,
    ) -> Any:
        """Train the student's local model; returns a copy of the student whose trained predictors call the
        served best adapter. Raises JobRejected (invalid job), JobFailed (the job failed), BundleError."""
        if teacher is not None:
            raise BundleError(
                "teacher programs are not supported: the trainer trains on the exact tokens its own vLLM sampled "
                "(with their log-probabilities), which another LM's answers do not carry; compile without teacher="
            )
        if valset is None and not self.grpo.get("use_train_as_val"):
            raise BundleError(
                "GRPO keeps the adapter that scores best on the validation set: pass valset=, or "
                "use_train_as_val=True with report_train_scores=True"
            )
        submission = self.submission(student, trainset, valset)
        log.info("GRPOJob %s: training %s", submission.name, ", ".join(submission.student.trained))
        self.result = self.backend.run(submission)
        optimized = bind_result(student, self.result)
        optimized.grpo_result = self.result  # which job, its scores, where it is served; .close() stops a local server
        return optimized

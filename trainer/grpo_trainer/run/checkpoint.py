"""Full training checkpoints for exact resume after a crash, preemption or kill -9.

Layout of ``<run_dir>/checkpoints/step-N/`` (written under a staging name, flushed,
renamed into place: grpo_trainer.run.atomic.staged_dir; ``COMPLETE`` is written last,
so a directory without it -- e.g. from an interrupted copy of the volume -- is never
resumed from)::

    adapter/          PEFT adapter (also loadable by vLLM or ``PeftModel.from_pretrained``)
    optimizer.pt      optimizer.state_dict()
    scheduler.pt      lr scheduler state_dict() (absent without a scheduler)
    grad_scaler.pt    fp16's gradient scaler state_dict() (its scale; absent without fp16)
    rng-rank<R>.pt    python, numpy, torch CPU and CUDA generator states of rank R
    state.json        step, sampler state, best score/step, history (caller's JSON), the job it belongs to
    COMPLETE          {"step": N, "saved_at": ..., "files": {name: {size, sha256}}}

A save whose write or fsync fails raises and leaves the previous checkpoints as they
were. A resume takes the newest checkpoint that is complete and still matches its
manifest (grpo_trainer.run.checkpoint_manifest), and falls back to the one before it,
with a warning, when the newest does not.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from grpo_trainer.run.atomic import remove_leftovers, staged_dir
from grpo_trainer.run.checkpoint_manifest import (
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    STATE_FILE,
    complete_steps,
    problem,
    step_dirs,
    write_complete,
)
from grpo_trainer.vllm.adapters import save_peft_adapter, unwrap_model

log = logging.getLogger(__name__)

GRAD_SCALER_FILE = "grad_scaler.pt"
FORMAT_VERSION = 1


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


@dataclass
class TrainingState:
    """What the loop needs besides tensors to continue exactly where it stopped (all JSON-able)."""

    step: int
    sampler: dict[str, Any] = field(default_factory=dict)
    best_score: float | None = None
    best_step: int | None = None
    history: dict[str, Any] = field(default_factory=dict)


# -- random number generators ----------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's generator states (python, numpy global, torch CPU, every CUDA device)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": np.asarray(npst["key"], dtype=np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            log.warning(
                "checkpoint has CUDA RNG states of %d devices, this process sees %d; restoring the common ones",
                len(cuda_states),
                torch.cuda.device_count(),
            )
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


# -- the manager ------------------------------------------------------------------


class CheckpointManager:
    """Saves, finds, restores and prunes ``<run_dir>/checkpoints/step-N``. Only rank 0 saves."""

    def __init__(self, run_dir: str | Path, keep: int = 2, *, writer: bool = True) -> None:
        """``writer``: this process saves (the main rank); it alone repairs what a killed save left."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep = keep
        if writer:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.root)

    def path(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def save(
        self,
        state: TrainingState,
        model: Any,
        optimizer: Stateful,
        scheduler: Stateful | None = None,
        *,
        rng_states: list[dict[str, Any]] | None = None,
        base_model_name: str | None = None,
        grad_scaler: Stateful | None = None,
        job: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``state.step`` atomically and durably, then prune to ``keep``.

        ``rng_states``: one ``capture_rng()`` per rank (gathered by the caller under
        data parallelism); default: this process's only. ``job``: whose run it is
        (grpo_trainer.contract.identity.JobIdentity, as JSON), kept in state.json.
        Raises OSError when the checkpoint could not be written or flushed; the
        previous ones are untouched and nothing is pruned then.
        """
        start = time.perf_counter()
        final = self.path(state.step)
        rngs = rng_states if rng_states is not None else [capture_rng()]
        with staged_dir(final) as staging:
            save_peft_adapter(model, staging / "adapter", base_model_name)
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), staging / "scheduler.pt")
            if grad_scaler is not None:
                torch.save(grad_scaler.state_dict(), staging / GRAD_SCALER_FILE)
            for rank, rng in enumerate(rngs):
                torch.save(rng, staging / f"rng-rank{rank}.pt")
            doc = {"format": FORMAT_VERSION, "world_size": len(rngs), **asdict(state)}
            if job is not None:
                doc["job"] = job
            (staging / STATE_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
            write_complete(staging, state.step)
        log.info("checkpoint %s saved in %.3f s", final, time.perf_counter() - start)
        self.prune(saved=state.step)
        return final

    def complete_steps(self) -> list[int]:
        """Steps with a complete checkpoint (its COMPLETE marker written), oldest first."""
        return complete_steps(self.root)

    def latest(self) -> Path | None:
        """The newest checkpoint to resume from: complete and matching its manifest. Newer ones that are
        not are skipped with a warning (partial ones, without the marker, silently)."""
        for step in reversed(self.complete_steps()):
            path = self.path(step)
            why = problem(path)
            if why is None:
                return path
            log.warning(
                "checkpoint of step %d cannot be resumed from (%s); falling back to the one before it",
                step,
                why,
                extra={"checkpoint": str(path)},
            )
        return None

    def restore(
        self,
        model: Any,
        optimizer: Stateful,
        scheduler: Stateful | None = None,
        *,
        path: Path | None = None,
        rank: int = 0,
        grad_scaler: Stateful | None = None,
    ) -> TrainingState | None:
        """Load a checkpoint (default: :meth:`latest`, the newest verified) into the given objects; None when
        there is none.

        Optimizer state is read on the CPU and moved by ``load_state_dict`` to the
        device of each parameter, so a checkpoint written on cuda:1 resumes anywhere.
        Restores this rank's RNG state (rank 0's when the checkpoint has fewer ranks).
        """
        path = path if path is not None else self.latest()
        if path is None:
            return None
        why = problem(path)
        if why is not None:
            raise FileNotFoundError(f"{path} cannot be resumed from: {why}")
        doc = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {doc.get('format')} is not {FORMAT_VERSION}")
        _load_adapter_weights(model, path / "adapter" / "adapter_model.safetensors")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        scheduler_file = path / "scheduler.pt"
        if scheduler is not None:
            if not scheduler_file.is_file():
                raise FileNotFoundError(f"{path} has no scheduler state but a scheduler was given")
            scheduler.load_state_dict(torch.load(scheduler_file, map_location="cpu", weights_only=True))
        if grad_scaler is not None:
            if (path / GRAD_SCALER_FILE).is_file():
                grad_scaler.load_state_dict(torch.load(path / GRAD_SCALER_FILE, map_location="cpu", weights_only=True))
            else:  # a checkpoint written without fp16 (e.g. on a CPU): the scaler starts afresh
                log.warning("%s has no gradient scaler state; fp16 starts from the default scale", path)
        rng_file = path / f"rng-rank{rank}.pt"
        if not rng_file.is_file():
            log.warning("%s has no RNG state for rank %d; using rank 0's", path, rank)
            rng_file = path / "rng-rank0.pt"
        restore_rng(torch.load(rng_file, map_location="cpu", weights_only=True))
        state = TrainingState(
            step=int(doc["step"]),
            sampler=doc.get("sampler", {}),
            best_score=doc.get("best_score"),
            best_step=doc.get("best_step"),
            history=doc.get("history", {}),
        )
        log.info("resumed from %s (step %d)", path, state.step)
        return state

    def prune(self, saved: int | None = None) -> list[int]:
        """Keep the newest ``keep`` complete checkpoints; delete older ones and stale partial ones.

        ``saved``: the step just saved. Complete checkpoints after it are from before a resume that
        could not use them (they did not match their manifest): they go too, never the one just saved.
        """
        complete = [s for s in self.complete_steps() if saved is None or s <= saved]
        kept = set(complete[-self.keep :])
        newest = complete[-1] if complete else None
        removed: list[int] = []
        for step, entry in step_dirs(self.root).items():
            partial = not (entry / COMPLETE_MARKER).is_file()
            # a partial directory newer than every complete one may still be arriving (a copy); leave it
            if (partial and newest is not None and step < newest) or (not partial and step not in kept):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(step)
        if removed:
            log.info("pruned checkpoints %s", sorted(removed))
        return sorted(removed)


def _load_adapter_weights(model: Any, file: Path) -> None:
    peft_model = unwrap_model(model)
    adapter = getattr(peft_model, "active_adapter", "default")
    weights = load_file(str(file), device="cpu")
    expected = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint adapter does not match the model's LoRA layout: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (was lora_config changed between runs?)"
        )
    set_peft_model_state_dict(peft_model, weights, adapter_name=adapter)

"""A GRPOJob → everything a local run needs, checked before any process starts.

The job goes through the same validation (``parse_job``) and the same resolution
(grpo_operator.resolve, with a :class:`LocalTarget`) as in the cluster, so the
trainer and vLLM start with the commands a pod would run. What is local is
decided here only: volumes are directories (``--volume NAME=DIR``), model and
data paths are checked on disk, API keys come from the environment, ports are free.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from grpo_operator.api import GRPOJob, GRPOJobSpec, InvalidJob, parse_job
from grpo_operator.api.spec import DatasetSource
from grpo_operator.resolve import LOCAL_HOST, LocalTarget, UnplaceableJob, env_refs, resolve
from grpo_trainer.contract.config import DEFAULT_PORT, TrainerConfig
from grpo_trainer.contract.vllm_command import VLLMServerSpec

log = logging.getLogger(__name__)

DEFAULT_VLLM_PORT = 8000
VLLM_HOST = LOCAL_HOST
TRAINER_HOST = "0.0.0.0"  # where the trainer's /progress and /metrics server binds
CONFIG_FILE = "trainer-config.json"


class InvalidInput(Exception):
    """The job, the options or the machine cannot run this job; nothing was started (exit 2)."""


@dataclass(frozen=True)
class RunOptions:
    """The command line, parsed."""

    job_file: Optional[Path] = None
    run_dir: Optional[Path] = None
    port: int = DEFAULT_VLLM_PORT
    trainer_port: int = DEFAULT_PORT
    steps: Optional[int] = None
    volumes: Mapping[str, Path] = field(default_factory=dict)
    fresh: bool = False
    plot: bool = True


@dataclass(frozen=True)
class Plan:
    """Everything decided before a process starts."""

    name: str
    run_dir: Path
    config: TrainerConfig
    vllm: VLLMServerSpec
    trainer_argv: list[str]
    trainer_env: dict[str, str]


# --------------------------------------------------------------------------- the job


def load_document(job_file: Optional[Path]) -> dict[str, Any]:
    """The job manifest from a YAML file, or the embedded default."""
    if job_file is None:
        from grpo_operator.local.default import default_job

        log.info("running the embedded default job (grpo-local --print-default shows it)")
        return default_job()
    try:
        docs = [d for d in yaml.safe_load_all(job_file.read_text(encoding="utf-8")) if d is not None]
    except OSError as exc:
        raise InvalidInput(f"cannot read job file {job_file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{job_file} is not valid YAML: {exc}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise InvalidInput(f"{job_file} must hold exactly one GRPOJob document (a YAML mapping)")
    return docs[0]


def with_steps(doc: dict[str, Any], steps: Optional[int]) -> dict[str, Any]:
    """The document with ``spec.grpo.num_train_steps`` overridden (``--steps``)."""
    if steps is None:
        return doc
    spec = dict(doc.get("spec") or {})
    spec["grpo"] = {**(spec.get("grpo") or {}), "num_train_steps": steps}
    return {**doc, "spec": spec}


def job_name(job: GRPOJob, job_file: Optional[Path]) -> str:
    if job.metadata.name:
        return job.metadata.name
    stem = re.sub(r"[^a-z0-9-]+", "-", job_file.stem.lower()).strip("-") if job_file else ""
    return stem or "grpo-job"


# --------------------------------------------------------------------------- where things are


def _local(path: str, claim: Optional[str], volumes: Mapping[str, Path], sub_path: Optional[str], what: str) -> Path:
    """A job path as a path on this machine: volumes map to directories (``--volume NAME=DIR``)."""
    if claim is None:
        return Path(path).expanduser().resolve()
    if claim not in volumes:
        raise InvalidInput(
            f"{what}.volume.claimName: volume {claim!r} is not mapped to a directory; pass --volume {claim}=DIR"
        )
    root = volumes[claim].expanduser().resolve()
    if not root.is_dir():
        raise InvalidInput(f"--volume {claim}={volumes[claim]}: no such directory")
    if sub_path:
        root = root / sub_path.lstrip("/")
    return root / path.lstrip("/")


def _localize_data(src: Optional[DatasetSource], volumes: Mapping[str, Path], what: str) -> Optional[DatasetSource]:
    if src is None or src.file is None:
        return src
    f = src.file
    path = _local(
        f.path, f.volume.claim_name if f.volume else None, volumes, f.volume.sub_path if f.volume else None, what
    )
    if not path.is_file():
        raise InvalidInput(f"{what}.file.path: data file {path} does not exist")
    return src.model_copy(update={"file": f.model_copy(update={"path": str(path), "volume": None})})


def localize(spec: GRPOJobSpec, volumes: Mapping[str, Path]) -> GRPOJobSpec:
    """The spec with model and data files as absolute local paths; raises InvalidInput when one is missing."""
    model = spec.model
    if model.path is not None:
        volume = model.volume
        path = _local(
            model.path,
            volume.claim_name if volume else None,
            volumes,
            volume.sub_path if volume else None,
            "spec.model",
        )
        if not path.is_dir():
            raise InvalidInput(f"spec.model.path: model directory {path} does not exist")
        model = model.model_copy(update={"path": str(path), "volume": None})
    data = spec.data.model_copy(
        update={
            "train": _localize_data(spec.data.train, volumes, "spec.data.train"),
            "validation": _localize_data(spec.data.validation, volumes, "spec.data.validation"),
        }
    )
    return spec.model_copy(update={"model": model, "data": data})


def check_env_refs(spec: GRPOJobSpec) -> None:
    """A local run has no Secrets or ConfigMaps: the variables a pod would read from them (API keys, the
    hub token, the job's valueFrom entries; grpo_operator.resolve.env_refs) come from this environment,
    which both processes inherit."""
    trainer, inference = env_refs(spec)
    for ref in (*trainer, *inference):
        if not ref.optional and not os.environ.get(ref.name):
            raise InvalidInput(f"{ref.field}: local runs read this key from ${ref.name}; set it")
    for where, options in (("spec.trainer", spec.trainer), ("spec.inference", spec.inference)):
        if options.env_from:
            log.warning("%s.envFrom: a local run has no Secrets or ConfigMaps; set those variables here", where)


def port_in_use(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(options: RunOptions) -> None:
    if options.port == options.trainer_port:
        raise InvalidInput(f"--port and --trainer-port are both {options.port}; pick two ports")
    if port_in_use(options.port, VLLM_HOST):
        raise InvalidInput(f"port {options.port} is in use; pass --port")
    if options.trainer_port and port_in_use(options.trainer_port, TRAINER_HOST):
        raise InvalidInput(
            f"port {options.trainer_port} is in use; pass --trainer-port (0 turns the trainer's HTTP server off)"
        )


def local_gpus() -> int:
    """NVIDIA GPUs on this machine (0 without the driver)."""
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def make_plan(options: RunOptions) -> Plan:
    """Validate everything and decide every command; starts nothing. Raises InvalidInput."""
    try:
        job = parse_job(with_steps(load_document(options.job_file), options.steps))
    except InvalidJob as exc:
        source = options.job_file or "the default job"
        raise InvalidInput(f"invalid job {source}:\n  " + "\n  ".join(exc.problems)) from None
    name = job_name(job, options.job_file)
    spec = localize(job.spec, options.volumes)
    check_env_refs(spec)
    check_ports(options)
    run_dir = (options.run_dir or Path("runs") / name).expanduser().resolve()

    target = LocalTarget(
        run_dir=str(run_dir),
        config_path=str(run_dir / CONFIG_FILE),
        vllm_port=options.port,
        trainer_port=options.trainer_port,
        gpus=local_gpus(),
        python=sys.executable,
    )
    try:
        run = resolve(name, spec, target)
    except UnplaceableJob as exc:
        raise InvalidInput(str(exc)) from None
    return Plan(
        name=name,
        run_dir=run_dir,
        config=run.config,
        vllm=run.vllm,
        trainer_argv=run.trainer_argv,
        trainer_env=run.trainer_env,
    )

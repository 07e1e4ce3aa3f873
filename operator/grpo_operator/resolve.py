"""A GRPOJob → what runs: the trainer's config, its command and environment, the vLLM server.

The one place these are decided. The pod builders (grpo_operator.children) and the
local runner (grpo_operator.local) render a :class:`ResolvedJob`; they only say
*where* the job runs (:class:`ClusterTarget`, :class:`LocalTarget`): mount points
or local paths, hosts and ports, which interpreter, how many GPUs the machine has.
Pure: no I/O, nothing imported beyond the API models and the trainer's contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from grpo_operator.api.spec import DatasetSource, ExternalLM, GRPOJobSpec, VolumeSource
from grpo_trainer.contract.config import (
    CONFIG_ENV,
    JUDGE_API_KEY_ENV,
    UNTRUSTED_API_KEY_ENV,
    DataSpec,
    LMEndpoint,
    TrainerConfig,
    VLLMEndpoint,
)
from grpo_trainer.contract.vllm_command import VLLMServerSpec

log = logging.getLogger(__name__)

BASE_SERVED_NAME = "base"
LOCAL_HOST = "127.0.0.1"  # where a local run's vLLM listens
TRAINER_MODULE = "grpo_trainer.run.main"
LAUNCHER_MODULE = "grpo_trainer.run.launch"  # one rank per training GPU; forwards SIGTERM, keeps exit 75

# Where things are inside the job's pods (grpo_operator.children mounts them there).
RUN_MOUNT = "/mnt/grpo"
CONFIG_MOUNT = "/etc/grpo"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_KEY}"
MODEL_MOUNT = "/models"
DATA_MOUNT = "/datasets"

# Environment every trainer gets unless the job sets it: litellm's price-map download costs
# ~7 s of retries per process offline; tokenizers' threads fight DSPy's; logs must not lag.
TRAINER_ENV_DEFAULTS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


class UnplaceableJob(ValueError):
    """The job asks for more GPUs than where it runs has (local runs only: the scheduler decides in a cluster)."""


# --------------------------------------------------------------------------- where a job runs


@dataclass(frozen=True)
class ClusterTarget:
    """The job's pods: the shared volume, model and data at fixed mount points, vLLM behind its Service."""

    inference_host: str  # the vLLM Service's DNS name, as the trainer pod resolves it
    inference_port: int
    trainer_port: int

    run_dir: str = field(default=RUN_MOUNT, init=False)
    config_path: str = field(default=CONFIG_PATH, init=False)
    model_mount: str = field(default=MODEL_MOUNT, init=False)
    data_mount: str = field(default=DATA_MOUNT, init=False)
    vllm_bind_host: str = field(default="0.0.0.0", init=False)
    python: str = field(default="python", init=False)  # the trainer image's interpreter, on PATH
    vllm_python: str = field(default="python3", init=False)  # the vLLM image's (it has no `python`)


@dataclass(frozen=True)
class LocalTarget:
    """This machine: one run directory, both servers on localhost, paths already local (``mount`` "")."""

    run_dir: str
    config_path: str
    vllm_port: int
    trainer_port: int
    gpus: int  # NVIDIA GPUs on this machine
    python: str  # this interpreter (its venv has the trainer and vLLM)

    model_mount: str = field(default="", init=False)
    data_mount: str = field(default="", init=False)
    vllm_bind_host: str = field(default=LOCAL_HOST, init=False)

    @property
    def inference_host(self) -> str:
        return self.vllm_bind_host

    @property
    def inference_port(self) -> int:
        return self.vllm_port

    @property
    def vllm_python(self) -> str:
        return self.python


Target = Union[ClusterTarget, LocalTarget]


# --------------------------------------------------------------------------- the resolution


@dataclass(frozen=True)
class ResolvedJob:
    """Everything a runner starts for a job, decided once."""

    name: str
    config: TrainerConfig
    config_path: str  # where the trainer reads ``config`` (its --config)
    vllm: VLLMServerSpec
    trainer_argv: list[str]
    trainer_env: dict[str, str]
    training_gpus: int
    inference_gpus: int


def mounted(mount: str, volume: Optional[VolumeSource], path: str) -> str:
    """A path on a user volume, under the mount point the pod builders use for it."""
    if volume is None or not mount:
        return path
    return f"{mount}/{volume.claim_name}/{path.lstrip('/')}"


def served_model_name(spec: GRPOJobSpec) -> str:
    """The name vLLM serves the base model under; adapters are keyed to it."""
    return spec.model.served_name or spec.model.name or BASE_SERVED_NAME


def model_location(spec: GRPOJobSpec, mount: str) -> str:
    """Hub id, or the model directory under its volume's mount."""
    if spec.model.name is not None:
        return spec.model.name
    assert spec.model.path is not None  # exactly one of name/path (rule in LocalModel)
    return mounted(mount, spec.model.volume, spec.model.path)


def max_loras(spec: GRPOJobSpec) -> int:
    """Adapters vLLM keeps loaded: current + previous (overlap) + best + one in flight."""
    return spec.inference.max_loras or 4


def trainer_command(num_gpus: int, config_path: str = CONFIG_PATH, python: str = "python") -> list[str]:
    """The launcher with one process per GPU (not torchrun: see grpo_trainer.run.launch); one process otherwise."""
    if num_gpus <= 1:
        return [python, "-m", TRAINER_MODULE, "--config", config_path]
    return [python, "-m", LAUNCHER_MODULE, "--nproc", str(num_gpus), TRAINER_MODULE, "--config", config_path]


def gpu_split(spec: GRPOJobSpec, target: Target) -> tuple[int, int]:
    """(training, inference) GPUs. A cluster gets what the job asks for; a machine without GPUs runs on its CPU."""
    kwargs = spec.train_kwargs
    training, inference = kwargs.num_training_gpus, kwargs.num_inference_gpus
    if isinstance(target, ClusterTarget) or training + inference == 0:
        return training, inference
    if target.gpus == 0:
        log.warning("no GPU here: vLLM (CPU build) and the trainer run on the CPU")
        return 0, 0
    if training + inference > target.gpus:
        raise UnplaceableJob(
            f"trainKwargs: the job asks for {training} training + {inference} inference GPUs and this "
            f"machine has {target.gpus}; lower num_training_gpus/num_inference_gpus (0 and 0 runs on the CPU)"
        )
    return training, inference


def _visible_devices(first: int, count: int) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for ``count`` GPUs from ``first``: on one machine the processes split its GPUs
    (vLLM first); in a pod the device plugin shows each container only its own, so nothing is set there."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(first, first + count))} if count else {}


def _endpoint(lm: Optional[ExternalLM], key_env: str) -> Optional[LMEndpoint]:
    if lm is None:
        return None
    return LMEndpoint(
        model=lm.model,
        base_url=lm.base_url,
        api_key_env=key_env if lm.api_key_secret_ref else None,
        temperature=lm.temperature,
        max_tokens=lm.max_tokens,
        timeout_seconds=lm.timeout_seconds,
        max_retries=lm.max_retries,
    )


def _data(src: Optional[DatasetSource], data_mount: str) -> Optional[DataSpec]:
    if src is None:
        return None
    common = dict(fields=dict(src.fields), input_fields=src.input_fields, limit=src.limit)
    if src.hub is not None:
        h = src.hub
        return DataSpec(source="hub", id=h.id, config=h.config, split=h.split, revision=h.revision, **common)
    if src.file is not None:
        f = src.file
        return DataSpec(source="file", path=mounted(data_mount, f.volume, f.path), format=f.format, **common)
    assert src.url is not None  # exactly one source (rule in DatasetSource)
    return DataSpec(source="url", url=src.url.url, format=src.url.format, **common)


def trainer_config(name: str, spec: GRPOJobSpec, target: Target, training_gpus: int) -> TrainerConfig:
    """The trainer's config file for a job where it runs."""
    train_data = _data(spec.data.train, target.data_mount)
    assert train_data is not None
    device: Literal["cuda", "cpu"] = "cuda" if training_gpus > 0 else "cpu"
    return TrainerConfig(
        job_name=name,
        run_dir=target.run_dir,
        program=spec.program.builtin or spec.program.import_path or "",
        metric=spec.metric.builtin or spec.metric.import_path or "",
        model=model_location(spec, target.model_mount),
        vllm=VLLMEndpoint(
            base_url=f"http://{target.inference_host}:{target.inference_port}/v1",
            served_model_name=served_model_name(spec),
            adapter_dir=f"{target.run_dir}/adapters",  # vLLM sees the volume where the trainer does
            max_loras=max_loras(spec),
        ),
        untrusted=_endpoint(spec.untrusted_model, UNTRUSTED_API_KEY_ENV),
        judge=_endpoint(spec.judge, JUDGE_API_KEY_ENV),
        train_data=train_data,
        val_data=_data(spec.data.validation, target.data_mount),
        grpo=spec.grpo,
        train=spec.train_kwargs,
        port=target.trainer_port,
        device=device,
    )


def vllm_server(spec: GRPOJobSpec, target: Target, inference_gpus: int) -> VLLMServerSpec:
    """The job's vLLM server, for :func:`grpo_trainer.contract.vllm_command.vllm_command`."""
    return VLLMServerSpec(
        model=model_location(spec, target.model_mount),
        served_model_name=served_model_name(spec),
        port=target.inference_port,
        host=target.vllm_bind_host,
        lora_rank=spec.train_kwargs.lora_config.r,
        max_loras=max_loras(spec),
        dtype=spec.model.dtype,
        max_model_len=spec.model.max_model_len,
        device="gpu" if inference_gpus > 0 else "cpu",
        tensor_parallel_size=max(inference_gpus, 1),
        gpu_memory_utilization=spec.inference.gpu_memory_utilization,
        seed=spec.grpo.seed,
        python=target.vllm_python,
        extra_args=tuple(spec.inference.extra_args),
        extra_env={
            **spec.inference.env,
            **(_visible_devices(0, inference_gpus) if isinstance(target, LocalTarget) else {}),
        },
    )


def resolve(name: str, spec: GRPOJobSpec, target: Target) -> ResolvedJob:
    """What runs for job ``name`` at ``target``. Raises :class:`UnplaceableJob` (local runs only)."""
    training_gpus, inference_gpus = gpu_split(spec, target)
    trainer_env = {**TRAINER_ENV_DEFAULTS, CONFIG_ENV: target.config_path, **spec.trainer.env}
    if isinstance(target, LocalTarget):
        trainer_env.update(_visible_devices(inference_gpus, training_gpus))
    return ResolvedJob(
        name=name,
        config=trainer_config(name, spec, target, training_gpus),
        config_path=target.config_path,
        vllm=vllm_server(spec, target, inference_gpus),
        trainer_argv=trainer_command(training_gpus, target.config_path, target.python),
        trainer_env=trainer_env,
        training_gpus=training_gpus,
        inference_gpus=inference_gpus,
    )

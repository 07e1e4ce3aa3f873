"""GRPOJob spec → the trainer's config contract.

The operator and the local runner both call :func:`trainer_config`; they differ
only in the :class:`Layout` (where the shared volume, the model and the data
are, as each process sees them), so cluster and local runs cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from grpo_trainer.config import (
    JUDGE_API_KEY_ENV,
    UNTRUSTED_API_KEY_ENV,
    DataSpec,
    LMEndpoint,
    TrainerConfig,
    VLLMEndpoint,
)

from .spec import DatasetSource, ExternalLM, GRPOJobSpec, VolumeSource

BASE_SERVED_NAME = "base"


@dataclass(frozen=True)
class Layout:
    """Where things are, as the trainer and the vLLM processes see them."""

    run_dir: str
    vllm_run_dir: str
    vllm_base_url: str
    model_mount: str = "/models"
    data_mount: str = "/datasets"
    port: int = 9400
    device: str = "auto"


def mounted(mount: str, volume: Optional[VolumeSource], path: str) -> str:
    """A path on a user volume, under the mount point the pod builders use for it."""
    if volume is None:
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


def _data(src: Optional[DatasetSource], layout: Layout) -> Optional[DataSpec]:
    if src is None:
        return None
    common = dict(fields=dict(src.fields), input_fields=src.input_fields, limit=src.limit)
    if src.hub is not None:
        h = src.hub
        return DataSpec(source="hub", id=h.id, config=h.config, split=h.split, revision=h.revision, **common)
    if src.file is not None:
        f = src.file
        path = mounted(layout.data_mount, f.volume, f.path)
        return DataSpec(source="file", path=path, format=f.format, **common)
    assert src.url is not None  # exactly one source (rule in DatasetSource)
    return DataSpec(source="url", url=src.url.url, format=src.url.format, **common)


def trainer_config(name: str, spec: GRPOJobSpec, layout: Layout) -> TrainerConfig:
    """The trainer's config for a job under a layout."""
    train_data = _data(spec.data.train, layout)
    assert train_data is not None
    return TrainerConfig(
        job_name=name,
        run_dir=layout.run_dir,
        program=spec.program.builtin or spec.program.import_path or "",
        metric=spec.metric.builtin or spec.metric.import_path or "",
        model=model_location(spec, layout.model_mount),
        vllm=VLLMEndpoint(
            base_url=layout.vllm_base_url,
            served_model_name=served_model_name(spec),
            adapter_dir=f"{layout.vllm_run_dir}/adapters",
            max_loras=max_loras(spec),
        ),
        untrusted=_endpoint(spec.untrusted_model, UNTRUSTED_API_KEY_ENV),
        judge=_endpoint(spec.judge, JUDGE_API_KEY_ENV),
        train_data=train_data,
        val_data=_data(spec.data.validation, layout),
        grpo=spec.grpo,
        train=spec.train_kwargs,
        port=layout.port,
        device=layout.device,  # type: ignore[arg-type]
    )

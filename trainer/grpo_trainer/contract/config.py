"""The trainer's config contract.

The trainer never reads a GRPOJob: the operator (in a ConfigMap) and the local
runner (in a file) translate one into this document, with every path as the
trainer process sees it. API keys are never in it, only the names of the
environment variables that hold them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from grpo_trainer.contract.hparams import GRPOArgs, TrainKwargs
from grpo_trainer.contract.identity import RunOwner
from grpo_trainer.contract.vllm_guard import KEY_ENV

# Environment variables the operator fills from the job's Secret references.
UNTRUSTED_API_KEY_ENV = "GRPO_UNTRUSTED_API_KEY"
JUDGE_API_KEY_ENV = "GRPO_JUDGE_API_KEY"
# The key of the job's own vLLM, in both processes: generated per job (a Secret the operator owns;
# grpo-local's per run). vLLM reads it from this variable itself, and so does its guard.
VLLM_API_KEY_ENV = KEY_ENV
# The Hugging Face hub token (model.hub / data.*.hub tokenSecretRef): huggingface_hub,
# datasets, transformers and vLLM all read it from here, so no code passes it along.
HF_TOKEN_ENV = "HF_TOKEN"
# Where the trainer finds its config when no --config is given.
CONFIG_ENV = "GRPO_TRAINER_CONFIG"
# Where the trainer writes its final progress when it exits (the pod's terminationMessagePath).
TERMINATION_LOG_ENV = "GRPO_TERMINATION_LOG"
DEFAULT_PORT = 9400
# Overrides the config's device ("cpu"): set by a node that runs GPU pods on its CPUs (a
# test cluster's process node, which advertises GPUs it does not have), never by the operator.
DEVICE_ENV = "GRPO_TRAINER_DEVICE"
# Overrides the address /progress listens on (all of the pod's): set by a node whose pods share one
# network and each have an address of their own there (a test cluster's process node), never by the
# operator, so that several trainers' servers can use the one port the operator polls.
LISTEN_HOST_ENV = "GRPO_TRAINER_LISTEN_HOST"


# What the job's code fetch (grpo_trainer.usercode.fetch, an init container) reads its credentials from.
GIT_TOKEN_ENV = "GRPO_GIT_TOKEN"
GIT_SSH_KEY_ENV = "GRPO_GIT_SSH_KEY"
PIP_INDEX_URL_ENV = "PIP_INDEX_URL"
CODE_FETCH_MODULE = "grpo_trainer.usercode.fetch"


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LMEndpoint(_Contract):
    """An OpenAI-compatible chat endpoint outside the job (untrusted model, judge)."""

    model: str
    base_url: Optional[str] = None
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the API key.")
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    timeout_seconds: float = 60.0
    max_retries: int = 3


class VLLMEndpoint(_Contract):
    """The job's own vLLM server, which samples the policy."""

    base_url: str = Field(..., description="OpenAI base URL, e.g. http://job-inference:8000/v1.")
    served_model_name: str = Field(..., description="Name the base model is served under (adapters are based on it).")
    adapter_dir: str = Field(..., description="The run's adapters/ directory as the vLLM process sees it.")
    max_loras: int = Field(4, ge=1, description="Adapters vLLM holds at once; older versions are unloaded.")
    request_timeout_seconds: float = 600.0
    wait_timeout_seconds: float = Field(1800.0, description="How long to wait for an unavailable vLLM before failing.")
    api_key_env: Optional[str] = Field(
        None, description="Environment variable holding the server's key (None: it takes none)."
    )
    adapter_prefix: str = Field(
        "",
        description=(
            "Prepended to the job's adapter names (<prefix>policy-vN): '<job>-' on an inference pool, where "
            "many jobs' adapters share one server; only names with it are the job's to load and unload."
        ),
    )

    def api_key(self, environ: Mapping[str, str] = os.environ) -> Optional[str]:
        """The key every request to this server carries; raises when the variable named for it is unset."""
        if self.api_key_env is None:
            return None
        key = environ.get(self.api_key_env)
        if not key:
            raise RuntimeError(
                f"the job's vLLM takes a key, from the environment variable {self.api_key_env}, which is unset"
            )
        return key


class DataSpec(_Contract):
    """One dataset, already resolved to a place the trainer can read."""

    source: Literal["hub", "file", "url"]
    id: Optional[str] = None
    config: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    path: Optional[str] = None
    url: Optional[str] = None
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    fields: dict[str, str] = Field(default_factory=dict, description="program field -> column")
    input_fields: Optional[list[str]] = None
    limit: Optional[int] = None


class CodeSource(_Contract):
    """Code of the user's program and metric, put on the trainer's import path before they resolve."""

    kind: Literal["dir", "archive"] = Field(
        ..., description="dir: a directory to import from; archive: a .tar.gz of one (a packed ConfigMap), unpacked first."
    )
    path: str
    origin: str = Field(..., description="Where the job names it, for messages: spec.code[0].configMap 'my-code'.")
    fetched: Optional[str] = Field(
        None, description="The folder a fetch (git, pip) left its record in (.grpo-source.json): the code's identity."
    )


class TrainerConfig(_Contract):
    """Everything one trainer run needs; produced by grpo_operator.api.translate."""

    job_name: str
    run_dir: str = Field(..., description="The shared volume: adapters/, checkpoints/, logs/, progress.json.")
    owner: Optional[RunOwner] = Field(
        None,
        description=(
            "The job this run directory belongs to (recorded in it; another job's directory is refused). "
            "None: not checked (a config written before owners were)."
        ),
    )
    program: str = Field(..., description="Built-in program name or 'module:attr'.")
    metric: str = Field(..., description="Built-in metric name or 'module:attr'.")
    model: str = Field(..., description="Hub id or directory of the base model, as the trainer loads it.")
    vllm: VLLMEndpoint
    untrusted: Optional[LMEndpoint] = Field(None, description="None: the local base model via vLLM.")
    judge: Optional[LMEndpoint] = Field(None, description="None: same as untrusted.")
    train_data: DataSpec
    val_data: Optional[DataSpec] = None
    code: list[CodeSource] = Field(
        default_factory=list, description="Import path additions, first wins (the job's code sources)."
    )
    grpo: GRPOArgs = Field(default_factory=GRPOArgs)
    train: TrainKwargs = Field(default_factory=TrainKwargs)
    port: int = Field(DEFAULT_PORT, description="HTTP port for /progress, /metrics and /healthz (0: off).")
    listen_host: str = Field("0.0.0.0", description="Address that port is bound to (default: every address).")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] = os.environ) -> "TrainerConfig":
        """The config file, with ``$GRPO_TRAINER_DEVICE`` and ``$GRPO_TRAINER_LISTEN_HOST`` (when set) as its
        device and listening address."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        for env, key in ((DEVICE_ENV, "device"), (LISTEN_HOST_ENV, "listen_host")):
            if environ.get(env):
                doc[key] = environ[env]
        return cls.model_validate(doc)

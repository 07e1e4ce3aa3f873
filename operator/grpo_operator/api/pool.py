"""The ``GRPOInferencePool`` resource: one vLLM server for many GRPOJobs on the same base model.

vLLM serves many LoRA adapters of one base model from one engine; a pool is that
server, kept by the operator for the jobs of its namespace that name it in
``spec.inference.pool``. A pool is one namespace's (one tenant's): its jobs share its
key, so they trust each other not to unload each other's adapters (each job's trainer
checks the path of every adapter it samples, and loads its own again when another
replaced it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import ConfigDict, Field, ValidationError

from grpo_operator.api.base import ApiModel, Rule, nested
from grpo_operator.api.job import API_VERSION, GROUP, VERSION, InvalidJob, ObjectMeta, format_errors, name_rule
from grpo_operator.api.names import JOB_NAME_MAX
from grpo_operator.api.spec import LocalModel, ServerOptions, VolumeStorage
from grpo_operator.api.status import Condition, KeySecretRef
from grpo_trainer.contract.hparams import VLLM_LORA_RANKS
from grpo_trainer.contract.rules import RuledModel

KIND = "GRPOInferencePool"
PLURAL = "grpoinferencepools"
SINGULAR = "grpoinferencepool"
SHORT_NAMES = ("grpopool",)
# Servers of one pool: one in this version. More replicas would each need every adapter a job loads (vLLM
# loads adapters per process, and the Service spreads requests), which the trainer does not do yet.
MAX_REPLICAS = 1
# Versions a job keeps loaded: current, previous (rollouts overlap training) and best (VLLMAdapterSync.wanted),
# and its result once it has finished. What one attached job takes of the pool's slots.
SLOTS_PER_JOB = 4
# A succeeded job with spec.serve.enabled keeps one slot: its result, served under the job's name.
SLOTS_PER_RESULT = 1

POOL_IMMUTABLE = "is immutable once the pool exists; create a new GRPOInferencePool instead"
PoolConditionType = Literal["Ready", "Created", "SlotsAvailable"]
POOL_CONDITION_ORDER: tuple[PoolConditionType, ...] = ("Ready", "Created", "SlotsAvailable")


class PoolStorage(VolumeStorage):
    """The pool's volume: each attached job's run directory (runs/<job>) with the adapters its servers load."""


class GRPOInferencePoolSpec(ApiModel):
    """Desired state of an inference pool."""

    model: LocalModel = Field(
        ...,
        description="The base model the pool serves, as a job's spec.model; an attached job's must be the same.",
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": POOL_IMMUTABLE}]},
    )
    replicas: int = Field(
        1,
        ge=0,
        le=MAX_REPLICAS,
        description=(
            f"vLLM servers (at most {MAX_REPLICAS} in this version: adapters are loaded per server). 0 stops the "
            "server; attached jobs wait for it."
        ),
    )
    gpus_per_replica: int = Field(1, ge=0, le=16, description="GPUs of each server (tensor parallel); 0: vLLM on CPU.")
    max_loras: int = Field(
        4, ge=1, le=256, description="vLLM --max-loras: adapters one batch may mix (GPU memory per slot)."
    )
    max_cpu_loras: Optional[int] = Field(
        None,
        ge=1,
        le=1024,
        description=(
            f"vLLM --max-cpu-loras: adapters the server keeps loaded, the pool's slots (default: maxLoras). Each "
            f"attached job takes {SLOTS_PER_JOB} while it trains (its current, previous and best versions, and its "
            f"result), and {SLOTS_PER_RESULT} once it has succeeded and serves its result (spec.serve.enabled); a job "
            "that would not fit waits, with a condition saying so."
        ),
    )
    max_lora_rank: Literal[VLLM_LORA_RANKS] = Field(  # type: ignore[valid-type]
        16, description="vLLM --max-lora-rank: the largest trainKwargs.lora_config.r an attached job may use."
    )
    seed: int = Field(0, ge=0, description="vLLM --seed.")
    server: ServerOptions = nested(ServerOptions, "Options of the pool's vLLM pods (image, resources, scheduling).")
    storage: PoolStorage = nested(
        PoolStorage,
        "The pool's volume, mounted by its servers and by each attached job's trainer (ReadWriteOnce puts them "
        "all on one node; ReadWriteMany lets the trainers spread).",
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": POOL_IMMUTABLE}]},
    )
    rules = (
        Rule(
            cel="!has(self.maxCpuLoras) || self.maxCpuLoras >= self.maxLoras",
            message="maxCpuLoras holds every adapter a batch may mix; make it at least maxLoras",
            check=lambda s: s.max_cpu_loras is None or s.max_cpu_loras >= s.max_loras,
            field="maxCpuLoras",
        ),
    )

    @property
    def slots(self) -> int:
        """Adapters the server keeps loaded: what the attached jobs share."""
        return self.max_cpu_loras or self.max_loras


class AttachedJob(ApiModel):
    """A job the pool serves, and the slots it holds."""

    name: str = Field(..., max_length=JOB_NAME_MAX, description="The GRPOJob, in the pool's namespace.")
    slots: int = Field(..., ge=0, description="Adapter slots it holds.")
    adapters: Optional[int] = Field(
        None, ge=0, description="Its adapter versions the server lists, as its trainer last saw (its loadedAdapters)."
    )
    serving: Optional[bool] = Field(
        None,
        description=(
            "It has succeeded and the pool serves its result (result/adapter) under the job's name "
            f"(spec.serve.enabled): {SLOTS_PER_RESULT} slot."
        ),
    )


class PoolCondition(Condition):
    """A metav1.Condition of a pool."""

    type: PoolConditionType  # type: ignore[assignment]


class PoolEndpoint(ApiModel):
    """The pool's OpenAI-compatible API, as attached jobs use it."""

    url: str = Field(description="The pool's Service's OpenAI base URL in the cluster.")
    api_key_secret_ref: KeySecretRef = Field(
        description="The pool's key (every request needs it), generated for the pool, in a Secret it owns."
    )


class GRPOInferencePoolStatus(ApiModel):
    """What the operator observed of the pool."""

    observed_generation: Optional[int] = Field(None, ge=0, description="The generation this status describes.")
    replicas: Optional[int] = Field(None, ge=0, description="vLLM servers the pool has.")
    ready_replicas: Optional[int] = Field(None, ge=0, description="Servers that answer their readiness probe.")
    slots: Optional[int] = Field(None, ge=0, description="Adapter slots of each server (maxCpuLoras).")
    slots_used: Optional[int] = Field(None, ge=0, description="Slots held by the attached jobs.")
    adapters_loaded: Optional[int] = Field(
        None,
        ge=0,
        description=(
            "Adapters the server lists for the attached jobs, as their trainers last saw it (GET /v1/models; each "
            "job's status.loadedAdapters): at most slotsUsed while each job keeps its versions in flight."
        ),
    )
    jobs: Optional[list[AttachedJob]] = Field(
        None,
        max_length=1024,
        description=(
            "The jobs it serves, in the order they were attached: those that train, and succeeded ones whose result "
            "it serves (serving: true)."
        ),
    )
    results_served: Optional[int] = Field(
        None, ge=0, description="Succeeded jobs' results it serves (spec.serve.enabled), one slot each."
    )
    waiting: Optional[list[Annotated[str, Field(max_length=JOB_NAME_MAX)]]] = Field(
        None, max_length=1024, description="Jobs that name the pool but wait for slots (names), oldest first."
    )
    endpoint: Optional[PoolEndpoint] = Field(None, description="Where the pool serves, and where its key is.")
    conditions: list[PoolCondition] = Field(
        default_factory=list,
        max_length=len(POOL_CONDITION_ORDER),
        description="Ready, Created, SlotsAvailable.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )



POOL_NAME_RULE = name_rule("pool", "volume, key, ConfigMap and Service")


class GRPOInferencePool(RuledModel):
    """A vLLM server shared by the GRPOJobs of its namespace that train LoRA adapters of its base model."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rules = (POOL_NAME_RULE,)

    api_version: Literal["grpo.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["GRPOInferencePool"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: GRPOInferencePoolSpec
    status: Optional[GRPOInferencePoolStatus] = None


class InvalidPool(InvalidJob):
    """A pool manifest that fails validation; ``problems`` are 'path: message' lines."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        self.args = ("invalid GRPOInferencePool:\n  " + "\n  ".join(problems),)


def parse_pool_spec(spec: dict[str, Any]) -> GRPOInferencePoolSpec:
    """Validate a pool's spec (what the operator reads), or raise InvalidPool."""
    try:
        return GRPOInferencePoolSpec.model_validate(spec)
    except ValidationError as err:
        raise InvalidPool([f"spec.{line}" for line in format_errors(err)]) from None


def parse_pool(doc: dict[str, Any]) -> GRPOInferencePool:
    """Validate a pool manifest, or raise InvalidPool."""
    try:
        return GRPOInferencePool.model_validate(doc)
    except ValidationError as err:
        raise InvalidPool(format_errors(err)) from None


__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "GRPOInferencePool",
    "GRPOInferencePoolSpec",
    "GRPOInferencePoolStatus",
    "InvalidPool",
    "parse_pool",
    "parse_pool_spec",
]

"""``GRPOJob.spec``: what to optimise, with what, on which hardware.

Field names and meanings of ``grpo`` and ``trainKwargs`` are those of the DSPy
tutorial's ``ArborGRPO(...)`` call and its ``train_kwargs`` dict, so a notebook's
configuration pastes into a manifest unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from grpo_operator.api.base import ApiModel, InlineSecrets, Rule, exactly_one_of, nested, not_both
from grpo_operator.api.names import (
    DNS_LABEL,
    ENV_NAME,
    RESERVED_LABELS,
    RESERVED_PREFIXES,
    SECURITY_ANNOTATION_PREFIXES,
    ConfigKey,
    LabelValue,
    ObjectName,
    cel_list,
    no_reserved_keys,
    valid_keys,
)
from grpo_operator.api.quantity import NON_NEGATIVE_QUANTITY_PATTERN, parse_quantity
from grpo_trainer.contract.config import (
    CONFIG_ENV,
    HF_TOKEN_ENV,
    JUDGE_API_KEY_ENV,
    TERMINATION_LOG_ENV,
    UNTRUSTED_API_KEY_ENV,
    VLLM_API_KEY_ENV,
)
from grpo_trainer.contract.hparams import GRPOArgs, TrainKwargs

IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$"
# A string a child object takes as is: no surrounding (or any) whitespace, as in an image reference.
NO_SPACE = r"^[^\s]+$"
# Credentials in an http(s) URL: user info before the host.
URL_CREDENTIALS = r"^https?://[^/]*@"


def _quantity(value: int | str) -> int | str:
    # a clear message naming the value, instead of the pattern
    if parse_quantity(value) < 0:
        raise ValueError(f"{value!r} is negative; give an amount (e.g. 8, 500m, 64Gi)")
    return value


_QUANTITY_STRING = {"type": "string", "pattern": NON_NEGATIVE_QUANTITY_PATTERN, "maxLength": 64}
Quantity = Annotated[
    Union[int, str],
    AfterValidator(_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, _QUANTITY_STRING]}),
]
QuantityString = Annotated[str, AfterValidator(_quantity), WithJsonSchema(_QUANTITY_STRING)]


def no_url_credentials(field: str, fix: str, *, each: bool = False) -> Rule:
    """The URL ``field`` (each URL of the list, with ``each``) carries no user or password."""
    wire = to_camel(field)
    bad = re.compile(URL_CREDENTIALS)
    bad_cel = f"matches('{URL_CREDENTIALS}')"
    test = f"self.{wire}.all(u, !u.{bad_cel})" if each else f"!self.{wire}.{bad_cel}"

    def check(obj: Any) -> bool:
        value = getattr(obj, field)
        urls = value if each else [value] if value is not None else []
        return not any(bad.match(u) for u in urls)

    return Rule(
        cel=f"!has(self.{wire}) || {test}",
        message=f"credentials in the URL would be stored in the job; {fix}",
        check=check,
        field=wire,
    )

# Variables the operator sets in the job's pods (grpo_operator.resolve decides their values):
# the config and termination-log paths, keys it fills from Secret references, GPU visibility,
# $HOME and every cache (paths on the pod's writable volumes under a read-only root), and the
# process and vLLM settings the run depends on. A user's value would silently replace one
# (Kubernetes keeps the last duplicate), so the API refuses them.
# tests/unit/test_children.py checks that every name a rendered pod gets is listed here.
OPERATOR_ENV_NAMES: tuple[str, ...] = (
    CONFIG_ENV,
    TERMINATION_LOG_ENV,
    UNTRUSTED_API_KEY_ENV,
    JUDGE_API_KEY_ENV,
    HF_TOKEN_ENV,
    VLLM_API_KEY_ENV,
    "CUDA_VISIBLE_DEVICES",
    "HOME",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "HF_HOME",
    "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "NUMBA_CACHE_DIR",
    "VLLM_CACHE_ROOT",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "LITELLM_LOCAL_MODEL_COST_MAP",
    "TOKENIZERS_PARALLELISM",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
    "VLLM_NO_USAGE_STATS",
    "DO_NOT_TRACK",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_CPU_OMP_THREADS_BIND",
)
# ... and in the vLLM pod alone: its Python finds the key guard there (grpo_trainer.contract.vllm_guard).
INFERENCE_ENV_NAMES: tuple[str, ...] = ("PYTHONPATH",)


# --------------------------------------------------------------------------- program


class ProgramRef(ApiModel):
    """The DSPy program to optimise."""

    builtin: Optional[Literal["papillon"]] = Field(
        None, description="A program shipped with the trainer. papillon: the tutorial's privacy-conscious delegation program."
    )
    import_path: Optional[str] = Field(
        None,
        pattern=IMPORT_PATH,
        max_length=256,
        description=(
            "'module:attr' of a dspy.Module class or factory, importable from spec.code or the trainer image."
        ),
    )
    rules = (exactly_one_of("builtin", "import_path"),)


class MetricRef(ApiModel):
    """The reward: a DSPy metric ``(example, prediction, trace=None) -> float``."""

    builtin: Optional[Literal["compute_overall_score", "papillon_offline"]] = Field(
        None,
        description=(
            "compute_overall_score: the tutorial's LLM-judged (quality + (1 - leakage)) / 2. "
            "papillon_offline: the same shape with deterministic quality and exact PII matching (no judge calls)."
        ),
    )
    import_path: Optional[str] = Field(
        None,
        pattern=IMPORT_PATH,
        max_length=256,
        description="'module:attr' of a metric function, importable from spec.code or the trainer image.",
    )
    rules = (exactly_one_of("builtin", "import_path"),)


# --------------------------------------------------------------------------- code


class ConfigMapCode(ApiModel):
    """A module tree packed into a ConfigMap by ``grpo-pack-code DIR --name NAME`` (at most 1 MiB)."""

    name: ObjectName = Field(..., description="The ConfigMap, in the job's namespace.")


class SecretKey(ApiModel):
    """One key of a Secret in the job's namespace."""

    name: ObjectName = Field(..., description="The Secret.")
    key: ConfigKey = Field(..., description="The key in it.")


class GitCode(ApiModel):
    """A git repository, cloned by an init container of the trainer pod; the commit used is recorded."""

    url: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        pattern=r"^(https?://|ssh://|git://|git@|file://)[^\s]+$",
        description=(
            "Clone URL: https:// (http:// only inside a trusted network), ssh://, git@host:path, git://, or file:// "
            "for a path the pod can see. No credentials in it: use tokenSecretRef or sshKeySecretRef."
        ),
    )
    ref: Optional[str] = Field(None, min_length=1, max_length=255, description="Branch or tag (default: the remote's HEAD).")
    commit: Optional[str] = Field(
        None, pattern=r"^[0-9a-f]{40}$", description="The exact commit to check out (a full SHA); pins the code."
    )
    sub_path: Optional[str] = Field(
        None, min_length=1, max_length=1024, description="Folder of the repository to import from (default: its root)."
    )
    token_secret_ref: Optional[SecretKey] = Field(None, description="An HTTPS access token (sent as a header, never in the URL).")
    ssh_key_secret_ref: Optional[SecretKey] = Field(None, description="An SSH private key, for ssh:// and git@ URLs.")
    rules = (
        no_url_credentials("url", "put the token in a Secret (tokenSecretRef)"),
        not_both("token_secret_ref", "ssh_key_secret_ref"),
    )
    inline_secrets = InlineSecrets(("token", "password", "sshKey"), "tokenSecretRef (or sshKeySecretRef)")


class PipCode(ApiModel):
    """Python packages installed by an init container into a folder on the import path (not into the image)."""

    requirements: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        ...,
        min_length=1,
        max_length=64,
        description=(
            "Requirement specifiers, e.g. 'rapidfuzz==3.9.6'. Installed without their dependencies, which come "
            "from the trainer image (a second torch would shadow the image's); list any others explicitly."
        ),
    )
    index_url: Optional[str] = Field(
        None, max_length=2048, pattern=r"^https?://", description="A package index instead of PyPI (no credentials)."
    )
    extra_index_urls: list[Annotated[str, Field(max_length=2048, pattern=r"^https?://")]] = Field(
        default_factory=list, max_length=8, description="Further indexes."
    )
    index_url_secret_ref: Optional[SecretKey] = Field(
        None, description="A Secret key holding the whole index URL with its credentials (given to pip as PIP_INDEX_URL)."
    )
    rules = (
        not_both("index_url", "index_url_secret_ref"),
        no_url_credentials("index_url", "put the whole URL in a Secret (indexUrlSecretRef)"),
        no_url_credentials("extra_index_urls", "an index that needs them goes in indexUrlSecretRef", each=True),
    )
    inline_secrets = InlineSecrets(("password", "token"), "indexUrlSecretRef (the whole index URL)")


class CodeSource(ApiModel):
    """Where some of the program's and metric's code comes from; put on the trainer's import path."""

    config_map: Optional[ConfigMapCode] = Field(
        None, description="Code packed into a ConfigMap (grpo-pack-code); small trees, no image build."
    )
    volume: Optional[VolumeSource] = Field(
        None, description="A directory on a claim (mounted read-only): the directory is put on the import path."
    )
    git: Optional[GitCode] = Field(None, description="A git repository, cloned before the trainer starts.")
    pip: Optional[PipCode] = Field(None, description="Packages pip installs into a folder before the trainer starts.")
    rules = (exactly_one_of("config_map", "volume", "git", "pip"),)


# --------------------------------------------------------------------------- models


class VolumeSource(ApiModel):
    """A read-only volume holding files the job reads (a model or a data set)."""

    claim_name: ObjectName = Field(..., description="Name of an existing PersistentVolumeClaim in the job's namespace.")
    sub_path: Optional[str] = Field(
        None, min_length=1, max_length=1024, description="Relative path inside the claim to mount instead of its root."
    )
    rules = (
        Rule(
            cel=(
                "!has(self.subPath) || "
                "(!self.subPath.startsWith('/') && !self.subPath.split('/').exists(p, p == '..'))"
            ),
            message="subPath is a relative path inside the claim, without '..'",
            check=lambda v: v.sub_path is None
            or (not v.sub_path.startswith("/") and ".." not in v.sub_path.split("/")),
            field="subPath",
        ),
    )


class LocalModel(ApiModel):
    """The local model that is served by vLLM and trained with LoRA."""

    name: Optional[str] = Field(
        None, min_length=1, max_length=256, description="Hugging Face hub id, e.g. Qwen/Qwen2.5-1.5B-Instruct."
    )
    path: Optional[str] = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Directory of a saved model. Absolute, or relative to the mount of 'volume' when one is given.",
    )
    volume: Optional[VolumeSource] = Field(None, description="Volume holding 'path'; mounted read-only in both pods.")
    hub: Optional[ModelHub] = Field(None, description="Hub access for 'name' (a token for gated or private models).")
    served_name: Optional[str] = Field(
        None,
        min_length=1,
        max_length=128,
        description="Name vLLM serves the base model under (default: name or 'base').",
    )
    max_model_len: Optional[int] = Field(None, ge=128, description="vLLM --max-model-len (prompt + completion tokens).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="Weights dtype in vLLM.")
    rules = (
        exactly_one_of("name", "path"),
        Rule(
            cel="!has(self.volume) || has(self.path)",
            message="a model volume needs 'path' (the model's directory inside it)",
            check=lambda m: m.volume is None or m.path is not None,
            field="volume",
        ),
        Rule(
            cel="!has(self.hub) || has(self.name)",
            message="hub applies to a hub model; set name (the hub id), or remove hub for a model on a volume",
            check=lambda m: m.hub is None or m.name is not None,
            field="hub",
        ),
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the job's namespace."""

    name: ObjectName = Field(..., description="Secret name.")
    key: ConfigKey = Field("api-key", description="Key inside the Secret.")


class TokenSecretRef(ApiModel):
    """The Secret key holding a Hugging Face hub token (gated or private repositories)."""

    name: ObjectName = Field(..., description="Secret name.")
    key: ConfigKey = Field("token", description="Key inside the Secret.")


class ModelHub(ApiModel):
    """How the pods reach the Hugging Face hub for 'name'."""

    token_secret_ref: Optional[TokenSecretRef] = Field(
        None,
        description=(
            "Secret with a hub token, given to both pods as HF_TOKEN (never inline). "
            "Needed for gated or private models."
        ),
    )
    inline_secrets = InlineSecrets(("token", "hfToken"), "tokenSecretRef")


class ExternalLM(ApiModel):
    """An OpenAI-compatible chat endpoint (the untrusted model, or the judge)."""

    model: str = Field(
        ..., min_length=1, max_length=256, description="Model name as the endpoint knows it, e.g. gpt-4.1-mini."
    )
    base_url: Optional[str] = Field(
        None,
        max_length=1024,
        pattern=r"^https?://",
        description="OpenAI-compatible base URL (…/v1). Default: the OpenAI API.",
    )
    api_key_secret_ref: Optional[SecretKeyRef] = Field(
        None, description="Secret holding the API key. Keys are never accepted inline."
    )
    temperature: Optional[float] = Field(None, ge=0, le=2, description="Sampling temperature of this endpoint.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Completion token limit of this endpoint.")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Per-request timeout.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries with exponential backoff on errors and 429s.")
    rules = (no_url_credentials("base_url", "put the key in a Secret (apiKeySecretRef)"),)
    inline_secrets = InlineSecrets(("apiKey", "api_key", "key", "token"), "apiKeySecretRef")


# --------------------------------------------------------------------------- data


class HubDataset(ApiModel):
    """A Hugging Face hub dataset (downloaded by the trainer)."""

    id: str = Field(..., min_length=1, max_length=256, description="Dataset id, e.g. Columbia-NLP/PUPA.")
    config: Optional[str] = Field(
        None, min_length=1, max_length=128, description="Dataset configuration, e.g. pupa_new."
    )
    split: str = Field(
        "train",
        min_length=1,
        max_length=128,
        description="Split with optional slice in datasets syntax, e.g. train[:225].",
    )
    revision: Optional[str] = Field(None, min_length=1, max_length=128, description="Git revision to pin.")
    token_secret_ref: Optional[TokenSecretRef] = Field(
        None,
        description=(
            "Secret with a hub token for a gated or private dataset, given to the trainer as HF_TOKEN; "
            "must be model.hub.tokenSecretRef when both are set (one HF_TOKEN per pod)."
        ),
    )
    inline_secrets = InlineSecrets(("token", "hfToken"), "tokenSecretRef")


class FileDataset(ApiModel):
    """A data file on a volume."""

    path: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        description="File path, relative to the volume's mount when 'volume' is set.",
    )
    volume: Optional[VolumeSource] = Field(None, description="Volume holding the file; mounted read-only in the trainer.")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field("auto", description="File format (auto: by extension).")


class UrlDataset(ApiModel):
    """A data file downloaded over HTTP(S)."""

    url: str = Field(..., max_length=2048, pattern=r"^https?://", description="Address of a JSONL, CSV or Parquet file.")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field("auto", description="File format (auto: by extension).")
    rules = (
        no_url_credentials(
            "url",
            "give a URL the trainer may read without them, or the file as hub (tokenSecretRef), file or configMap",
        ),
    )


class ConfigMapDataset(ApiModel):
    """A data file kept as one key of a ConfigMap: ``kubectl create configmap NAME --from-file=train.jsonl``."""

    name: ObjectName = Field(..., description="The ConfigMap, in the job's namespace.")
    key: ConfigKey = Field(..., description="The key holding the file.")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field("auto", description="File format (auto: by the key's extension).")


# A row is whatever columns the program reads; the rows travel in the job's own config
# ConfigMap, which also holds the trainer's config and must stay under the 1 MiB object limit.
INLINE_MAX_BYTES = 256 * 1024
INLINE_MAX_ROWS = 2000
Row = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]


class InlineDataset(ApiModel):
    """A small data set written into the job itself (at most 256 KiB as JSON)."""

    rows: list[Row] = Field(
        ..., min_length=1, max_length=INLINE_MAX_ROWS, description="The examples, one object of columns each."
    )

    @field_validator("rows")
    @classmethod
    def _fits(cls, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = len(json.dumps(rows, separators=(",", ":")).encode())
        if size > INLINE_MAX_BYTES:
            raise ValueError(
                f"{size // 1024} KiB of inline rows; at most {INLINE_MAX_BYTES // 1024} KiB fit in the job. Use "
                "configMap (a file of up to 1 MiB: kubectl create configmap NAME --from-file=FILE), or file or url"
            )
        return rows


class DatasetSource(ApiModel):
    """Where examples come from, and how their columns map to the program's inputs."""

    hub: Optional[HubDataset] = None
    file: Optional[FileDataset] = None
    url: Optional[UrlDataset] = None
    config_map: Optional[ConfigMapDataset] = Field(None, description="A file in a ConfigMap (up to 1 MiB).")
    inline: Optional[InlineDataset] = Field(None, description="Rows written in the job (up to 256 KiB).")
    fields: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        description=(
            "Program field name -> column name, for columns named differently from the program's fields "
            "(PAPILLON: user_query, target_response, pii_str). Default: PUPA's columns."
        ),
        max_length=64,
    )
    input_fields: Optional[list[Annotated[str, Field(min_length=1, max_length=256)]]] = Field(
        None,
        max_length=32,
        description="Program fields that are inputs (dspy.Example.with_inputs). Default: the built-in program's.",
    )
    limit: Optional[int] = Field(None, ge=1, description="Use only the first N examples after slicing.")
    rules = (exactly_one_of("hub", "file", "url", "config_map", "inline"),)


class Datasets(ApiModel):
    """Training and validation examples."""

    train: DatasetSource = Field(..., description="Examples GRPO samples from.")
    validation: Optional[DatasetSource] = Field(
        None, description="Validation examples (the tutorial's devset). Required unless grpo.use_train_as_val."
    )


# --------------------------------------------------------------------------- pods


class Toleration(ApiModel):
    """A Kubernetes toleration (GPU nodes are usually tainted), held to core/v1's rules."""

    key: Optional[str] = Field(None, min_length=1, max_length=317)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Optional[LabelValue] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None
    rules = (
        valid_keys("key", "a taint key", single=True),
        Rule(
            cel="has(self.key) || self.operator == 'Exists'",
            message="a toleration without a key matches every taint and needs operator: Exists",
            check=lambda t: t.key is not None or t.operator == "Exists",
            field="operator",
        ),
        Rule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="operator Exists matches any value; remove value (or use operator: Equal)",
            check=lambda t: t.operator != "Exists" or not t.value,
            field="value",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds applies to effect NoExecute only; set effect: NoExecute or remove it",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field="tolerationSeconds",
        ),
    )


# What a job may size in its pods' containers (GPUs come from trainKwargs; other extended resources have rules of
# their own, request equal to limit, that the operator's defaults do not follow).
POD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_RESOURCES_FIX = (
    f"resources here are {', '.join(POD_RESOURCES)}; GPU counts come from trainKwargs.num_training_gpus / "
    "num_inference_gpus (remove nvidia.com/gpu)"
)


def _request_above_limit(resources: Resources) -> list[str]:
    """cpu/memory whose request exceeds the limit (the API server refuses such a pod at creation)."""
    out = []
    for name in ("cpu", "memory"):
        request, limit = resources.requests.get(name), resources.limits.get(name)
        if request is not None and limit is not None and parse_quantity(request) > parse_quantity(limit):
            out.append(name)
    return out


_REQUEST_LE_LIMIT_CEL = (
    "!has(self.requests) || !has(self.limits) || ['cpu', 'memory'].all(r, !(r in self.requests) || !(r in self.limits)"
    " || !isQuantity(string(self.requests[r])) || !isQuantity(string(self.limits[r]))"
    " || quantity(string(self.requests[r])).compareTo(quantity(string(self.limits[r]))) <= 0)"
)


class Resources(ApiModel):
    """CPU/memory requests and limits, over the operator's defaults. GPUs come from trainKwargs, not from here.

    Unset, a pod requests CPU and memory per GPU and is limited to its memory request
    (QoS Burstable: never the first evicted, never OOM-killed for a neighbour's use);
    set limits.cpu equal to requests.cpu for Guaranteed. A resource given only a limit
    requests that limit, as Kubernetes does.
    """

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        description=(
            "Resource requests, e.g. cpu: 8, memory: 64Gi. Default: trainer 4 CPUs and 24Gi per training GPU, "
            "vLLM 4 CPUs and 16Gi per inference GPU (2 CPUs and 8Gi / 6Gi on CPU)."
        ),
        max_length=32,
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Resource limits. Default: memory limited to its request, CPU unlimited.",
        max_length=32,
    )
    rules = (
        *(
            Rule(
                # has(): the API server does not default a map absent from a present object
                cel=f"!has(self.{m}) || self.{m}.all(r, r in {cel_list(POD_RESOURCES)})",
                message=_RESOURCES_FIX,
                message_expression=f"self.{m}.filter(r, !(r in {cel_list(POD_RESOURCES)}))[0] + ': {_RESOURCES_FIX}'",
                check=lambda r, m=m: set(getattr(r, m)) <= set(POD_RESOURCES),
                describe=lambda r, m=m: f"{min(set(getattr(r, m)) - set(POD_RESOURCES))}: {_RESOURCES_FIX}",
                field=m,
            )
            for m in ("requests", "limits")
        ),
        Rule(
            cel=_REQUEST_LE_LIMIT_CEL,
            message="a cpu or memory request exceeds its limit; lower the request or raise the limit",
            check=lambda r: not _request_above_limit(r),
            describe=lambda r: (
                f"requests.{_request_above_limit(r)[0]} exceeds limits.{_request_above_limit(r)[0]}; "
                "lower the request or raise the limit"
            ),
            field="requests",
        ),
    )


_ENV_FIX = (
    "is set by the operator; remove it (API keys: untrustedModel/judge apiKeySecretRef; "
    "the hub token: model.hub.tokenSecretRef; GPUs: trainKwargs; the vLLM key is generated per job)"
)


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the job's namespace."""

    name: ObjectName = Field(..., description="Name of the Secret or ConfigMap.")
    key: ConfigKey = Field(..., description="The key.")
    optional: bool = Field(False, description="Start the pod even when the object or key is missing (variable unset).")


class EnvVarSource(ApiModel):
    """Where a variable's value comes from (core/v1 EnvVarSource: Secret and ConfigMap keys)."""

    secret_key_ref: Optional[KeyRef] = Field(None, description="A key of a Secret: for tokens and passwords.")
    config_map_key_ref: Optional[KeyRef] = Field(None, description="A key of a ConfigMap.")
    rules = (exactly_one_of("secret_key_ref", "config_map_key_ref"),)


class EnvVar(ApiModel):
    """An environment variable of the pod's container, as in core/v1 (value, or valueFrom a Secret/ConfigMap key)."""

    name: str = Field(..., min_length=1, max_length=256, pattern=ENV_NAME, description="Variable name.")
    value: Optional[str] = Field(None, max_length=32768, description="A literal, non-secret value.")
    value_from: Optional[EnvVarSource] = Field(None, description="Read the value from a Secret or ConfigMap key.")
    rules = (
        Rule(
            cel=f"!(self.name in {cel_list(OPERATOR_ENV_NAMES)})",
            message=f"the name {_ENV_FIX}",
            # per entry, so the message can name it (a filter over the list costs too much CEL budget)
            message_expression=f"self.name + ' {_ENV_FIX}'",
            check=lambda e: e.name not in OPERATOR_ENV_NAMES,
            describe=lambda e: f"{e.name} {_ENV_FIX}",
            field="name",
        ),
        not_both("value", "value_from"),
    )


class ObjectRef(ApiModel):
    """A whole Secret or ConfigMap in the job's namespace."""

    name: ObjectName = Field(..., description="Name of the Secret or ConfigMap.")
    optional: bool = Field(False, description="Start the pod even when it is missing.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as variables (core/v1 EnvFromSource)."""

    prefix: Optional[str] = Field(None, max_length=253, pattern=ENV_NAME, description="Prepended to every key.")
    secret_ref: Optional[ObjectRef] = Field(None, description="A Secret whose keys become variables.")
    config_map_ref: Optional[ObjectRef] = Field(None, description="A ConfigMap whose keys become variables.")
    rules = (exactly_one_of("secret_ref", "config_map_ref"),)


class PullSecretRef(ApiModel):
    """A docker-registry Secret in the job's namespace."""

    name: ObjectName = Field(..., description="Secret name (kubernetes.io/dockerconfigjson).")


class PodOptions(ApiModel):
    """Scheduling and image options of one of the job's pods."""

    image: Optional[str] = Field(
        None,
        max_length=512,
        pattern=NO_SPACE,
        description="Container image (default: the operator's configured image).",
    )
    image_pull_policy: Optional[Literal["Always", "IfNotPresent", "Never"]] = Field(None, description="Image pull policy.")
    resources: Resources = nested(Resources, "CPU and memory; GPUs are set from trainKwargs.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Node labels the pod requires, e.g. nvidia.com/gpu.product.",
        max_length=32,
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations, e.g. for tainted GPU nodes."
    )
    priority_class_name: Optional[ObjectName] = Field(None, description="PriorityClass of the pod.")
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra environment variables, as in a container: {name, value} or {name, valueFrom: {secretKeyRef | "
            "configMapKeyRef}}. Names the operator sets are refused: " + ", ".join(OPERATOR_ENV_NAMES) + "."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets and ConfigMaps whose keys all become variables; the operator's own variables win over them.",
    )
    image_pull_secrets: list[PullSecretRef] = Field(
        default_factory=list, max_length=16, description="Registry credentials for a private image."
    )
    shm_size: Optional[QuantityString] = Field(
        None,
        description=(
            "sizeLimit of the memory-backed /dev/shm (NCCL, vLLM), counted in the pod's memory. "
            "Default: 2Gi per GPU, 1Gi without GPUs."
        ),
    )
    startup_timeout_seconds: Optional[int] = Field(
        None,
        ge=60,
        le=86400,
        description=(
            "How long the container may take to answer GET /health after it starts (model download and "
            "load included) before the kubelet restarts it. Default: 1800."
        ),
    )
    # 32 values of 4096 characters and their keys stay under the API server's 256 KiB for a pod's annotations.
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        description=(
            "Extra pod annotations. Keys under " + ", ".join(RESERVED_PREFIXES) + " are the operator's, and the legacy "
            "AppArmor and seccomp keys (" + ", ".join(SECURITY_ANNOTATION_PREFIXES) + ") are refused: the pods run "
            "the RuntimeDefault profiles their securityContext sets."
        ),
        max_length=32,
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description=(
            "Extra pod labels. Keys under " + ", ".join(RESERVED_PREFIXES) + " and " + ", ".join(RESERVED_LABELS)
            + " are the operator's (they identify the job's pods; Kueue's follow spec.queueName)."
        ),
        max_length=64,
    )
    rules = (
        valid_keys("nodeSelector", "node label keys"),
        valid_keys("labels", "label keys"),
        no_reserved_keys(
            "labels",
            RESERVED_PREFIXES,
            RESERVED_LABELS,
            "the operator sets it to identify the job and its pods (Kueue labels follow spec.queueName)",
        ),
        valid_keys("annotations", "annotation keys"),
        no_reserved_keys(
            "annotations",
            (*RESERVED_PREFIXES, *SECURITY_ANNOTATION_PREFIXES),
            (),
            "the operator and Kueue keep their bookkeeping under their prefixes, and the legacy AppArmor and "
            "seccomp keys would change the security profile of the pod (it runs RuntimeDefault)",
        ),
    )

    @field_validator("env")
    @classmethod
    def _each_name_once(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in env:
            if var.name in seen:
                raise ValueError(f"{var.name} is set twice; keep one entry per name")
            seen.add(var.name)
        return env


# vLLM server flags a job may not pass in inference.extraArgs.
RESERVED_VLLM_FLAGS = (
    "--host",
    "--port",
    "--api-key",
    "--model",
    "--served-model-name",
    "--lora-modules",
    "--logprobs-mode",
    "--trust-remote-code",
    "--allowed-local-media-path",
)


class ServerOptions(PodOptions):
    """A vLLM server's pod: a job's own (spec.inference) or an inference pool's (spec.server)."""

    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1, description="vLLM --gpu-memory-utilization.")
    extra_args: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra vLLM server arguments, except those the operator sets or that widen what the server reads "
            f"or runs: {', '.join(RESERVED_VLLM_FLAGS)}."
        ),
    )
    rules = (
        *PodOptions.rules,
        Rule(
            cel=(  # an inference object without extraArgs has none: the API server does not default it
                f"!has(self.extraArgs) || "
                f"self.extraArgs.all(a, !{list(RESERVED_VLLM_FLAGS)}.exists(f, a == f || a.startsWith(f + '=')))"
            ),
            message=(
                f"extraArgs may not set {', '.join(RESERVED_VLLM_FLAGS)}: the operator sets the server's identity, "
                "address, key, adapters and logprobs (the trainer trains on them), and remote code or local media "
                "would widen what it runs or reads; remove the flag"
            ),
            check=lambda o: not any(a == f or a.startswith(f + "=") for a in o.extra_args for f in RESERVED_VLLM_FLAGS),
            field="extraArgs",
        ),
        Rule(
            cel=f"!has(self.env) || self.env.all(e, !(e.name in {cel_list(INFERENCE_ENV_NAMES)}))",
            message=(
                f"env may not set {', '.join(INFERENCE_ENV_NAMES)} in the vLLM pod: the operator puts the server's key "
                "guard there; remove it"
            ),
            check=lambda o: not any(e.name in INFERENCE_ENV_NAMES for e in o.env),
            field="env",
        ),
    )


# spec.inference.pool: a pool's name, or NAMESPACE/NAME (refused by the operator unless it is the job's own
# namespace: written that way, a reference to another tenant's pool gets a message rather than a pattern error).
POOL_REF = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class InferenceOptions(ServerOptions):
    """The vLLM pod, or the inference pool the job samples through instead."""

    max_loras: Optional[int] = Field(
        None, ge=1, le=64, description="vLLM --max-loras (default: enough for the versions in flight)."
    )
    pool: Optional[str] = Field(
        None,
        max_length=317,
        pattern=POOL_REF,
        description=(
            "Sample through this GRPOInferencePool of the job's namespace instead of a vLLM pod of the job's own: "
            "the trainer uses the pool's Service and key, publishes its adapters as <job>-policy-vN, and keeps its "
            "run directory in a folder of the pool's volume (runs/<job>). The pool's model must be spec.model and "
            "its maxLoraRank at least trainKwargs.lora_config.r, and it must be of the job's namespace: the chart's "
            "admission policies refuse a job that is not at create, and the operator checks again before it "
            "creates anything (alone for a job created before its pool). The other inference fields do not apply."
        ),
    )


class VolumeStorage(ApiModel):
    """A volume the operator creates (or an existing claim): a job's runs, or an inference pool's adapters."""

    size: QuantityString = Field("20Gi", description="Requested capacity (more than 0).")
    storage_class_name: Optional[str] = Field(
        None,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description="StorageClass (default: the cluster's; \"\": none, a volume provisioned by hand).",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        "ReadWriteOnce", description="ReadWriteOnce puts the pods that share it on one node; ReadWriteMany lets them spread."
    )
    existing_claim: Optional[ObjectName] = Field(None, description="Use this PVC instead of creating one.")
    rules = (
        Rule(
            cel="!isQuantity(self.size) || quantity(self.size).isGreaterThan(quantity('0'))",
            message="a volume of size 0 holds nothing; give a size, e.g. 20Gi",
            check=lambda s: parse_quantity(s.size) > 0,
            field="size",
        ),
        Rule(
            cel="self.accessMode != 'ReadWriteOncePod'",
            message="ReadWriteOncePod cannot be shared by the trainer and vLLM pods; use ReadWriteOnce or ReadWriteMany",
            check=lambda s: s.access_mode != "ReadWriteOncePod",
            field="accessMode",
        ),
    )


class Storage(VolumeStorage):
    """The shared volume for adapters, checkpoints and logs."""

    retain_on_delete: bool = Field(
        False,
        description=(
            "Keep the job's own volume (adapters, checkpoints, result/) when the finished job is deleted, by you or "
            "by runPolicy.ttlSecondsAfterFinished: the operator drops the claim's owner reference when the job "
            "finishes; the claim keeps its labels, and a later job mounts it with storage.existingClaim. Deleting "
            "a job that has not finished still deletes its volume. The one storage field that may change."
        ),
    )
    rules = (
        *VolumeStorage.rules,
        Rule(
            cel="!(self.retainOnDelete && has(self.existingClaim))",
            message="retainOnDelete keeps the job's own volume; an existingClaim is never deleted: remove retainOnDelete",
            check=lambda s: not (s.retain_on_delete and s.existing_claim),
            field="retainOnDelete",
        ),
    )


class Serve(ApiModel):
    """Serving the result once the job has succeeded."""

    enabled: bool = Field(
        False,
        description=(
            "Keep the vLLM pod after Succeeded, serving the best adapter (result/adapter) as the model named "
            "like the job, at status.endpoint; recreated if lost. A job on an inference pool is served by the pool "
            "instead (one of its adapter slots, at the pool's Service, with the pool's key). false, or deleting the "
            "job, stops it."
        ),
    )


# Durations the operator adds to a time: ten years, far inside what a datetime holds.
MAX_SECONDS = 10 * 365 * 86400


class RunPolicy(ApiModel):
    """Failure, deadline and clean-up policy (as batch/v1 Job and Kubeflow TrainJob)."""

    backoff_limit: int = Field(3, ge=0, le=100, description="Trainer pod failures tolerated before the job fails.")
    active_deadline_seconds: Optional[int] = Field(
        None, ge=1, le=MAX_SECONDS, description="Fail with DeadlineExceeded after this long running."
    )
    ttl_seconds_after_finished: Optional[int] = Field(
        None,
        ge=0,
        le=MAX_SECONDS,
        description=(
            "Delete the finished job after this long, and with it the job's own volume (adapters, checkpoints, "
            "result/); a storage.existingClaim is never deleted."
        ),
    )


# --------------------------------------------------------------------------- export

HUB_REPO_ID = r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$"
S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# a relative path: no leading '/', no '..' segment (a rule), no whitespace
RELATIVE_PATH = r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$"
_PARENT_SEGMENT = r"(^|/)[.][.](/|$)"
_CREDENTIALS_IN_URL = r"^https?://[^/]*@"
EXPORT_DESTINATIONS_MAX = 8
OWN_CLAIM_SUFFIX = "-run"  # the job's own volume is <job>-run (grpo_operator.children.meta.pvc_name)


def _refused(field: str, pattern: str, message: str) -> Rule:
    """A rule refusing an optional string field in which ``pattern`` occurs (CEL's matches searches, as re.search)."""
    wire = to_camel(field)
    return Rule(
        cel=f"!has(self.{wire}) || !self.{wire}.matches('{pattern}')",
        message=message,
        check=lambda obj: getattr(obj, field) is None or re.search(pattern, getattr(obj, field)) is None,
        field=wire,
    )


def _no_parent_segment(field: str) -> Rule:
    return _refused(field, _PARENT_SEGMENT, f"{to_camel(field)} may not contain a '..' segment; give a path inside")


def _no_credentials_in(field: str) -> Rule:
    message = f"credentials in {to_camel(field)} would be stored in the job; put them in the Secret the destination names"
    return _refused(field, _CREDENTIALS_IN_URL, message)


class ClaimExport(ApiModel):
    """A folder on a PersistentVolumeClaim of the job's namespace, replaced as a whole at each export."""

    claim_name: ObjectName = Field(
        ..., description="The claim (mounted writable in the export pod). Not the job's own volume."
    )
    path: Optional[str] = Field(
        None,
        max_length=1024,
        pattern=RELATIVE_PATH,
        description="The folder inside the claim that receives result/'s files. Default: the job's name.",
    )
    rules = (_no_parent_segment("path"),)


class HubExport(ApiModel):
    """A model repository on the Hugging Face hub or a compatible one (created if missing)."""

    repo_id: str = Field(..., max_length=96, pattern=HUB_REPO_ID, description="owner/name of the repository.")
    endpoint: Optional[str] = Field(
        None,
        max_length=1024,
        pattern=r"^https?://",
        description="A self-hosted hub's URL (default: https://huggingface.co).",
    )
    revision: Optional[str] = Field(
        None,
        max_length=255,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./]*$",
        description="The branch to commit to, created from main if missing (default: main).",
    )
    private: bool = Field(True, description="Create the repository private (an existing one keeps its visibility).")
    token_secret_ref: TokenSecretRef = Field(
        ..., description="A Secret key holding a hub token with write access to the repository (never inline)."
    )
    rules = (_no_credentials_in("endpoint"),)
    inline_secrets = InlineSecrets(("token", "hfToken"), "tokenSecretRef")


class S3Credentials(ApiModel):
    """The Secret holding an S3 access key pair."""

    name: ObjectName = Field(..., description="Secret name.")
    access_key_id_key: ConfigKey = Field("AWS_ACCESS_KEY_ID", description="The key holding the access key id.")
    secret_access_key_key: ConfigKey = Field(
        "AWS_SECRET_ACCESS_KEY", description="The key holding the secret access key."
    )


class S3Export(ApiModel):
    """A prefix of an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS's XML API, ...)."""

    bucket: str = Field(..., max_length=63, pattern=S3_BUCKET, description="The bucket (it must exist).")
    prefix: Optional[str] = Field(
        None,
        max_length=1024,
        pattern=RELATIVE_PATH,
        description="Key prefix the result's files are written under. Default: the job's name.",
    )
    endpoint_url: Optional[str] = Field(
        None, max_length=1024, pattern=r"^https?://", description="The service's URL (default: AWS S3 of the region)."
    )
    region: Optional[str] = Field(None, max_length=64, pattern=r"^[a-z0-9-]+$", description="The bucket's region.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description="How the bucket is named in requests: path (https://host/bucket/key) for MinIO-like servers, "
        "virtual (https://bucket.host/key), or auto (boto3's choice).",
    )
    credentials_secret_ref: S3Credentials = Field(
        ..., description="The Secret holding the access key id and secret access key (never inline)."
    )
    rules = (_no_parent_segment("prefix"), _no_credentials_in("endpoint_url"))
    inline_secrets = InlineSecrets(
        ("accessKeyId", "secretAccessKey", "awsAccessKeyId", "awsSecretAccessKey"), "credentialsSecretRef"
    )


class ExportDestination(ApiModel):
    """Where a succeeded job's result is copied: exactly one of claim, hub, s3."""

    claim: Optional[ClaimExport] = Field(None, description="A folder on a claim in the job's namespace.")
    hub: Optional[HubExport] = Field(None, description="A Hugging Face-compatible hub repository.")
    s3: Optional[S3Export] = Field(None, description="An S3-compatible bucket.")
    merged: bool = Field(
        False,
        description=(
            "Also write merged/: the base model with the adapter merged into its weights (safetensors, tokenizer, "
            "a model card), loadable without PEFT. The base model is read from the job's hub cache or model "
            "volume; merging needs memory for the whole model (see resources)."
        ),
    )
    rules = (exactly_one_of("claim", "hub", "s3"),)


class Export(ApiModel):
    """Copying the result of a succeeded job elsewhere, by a short pod of the trainer image."""

    destinations: list[ExportDestination] = Field(
        ...,
        min_length=1,
        max_length=EXPORT_DESTINATIONS_MAX,
        description=(
            "Where result/ goes. A destination already exported with the same settings is not exported again; "
            "a changed or added one is."
        ),
    )
    resources: Resources = nested(
        Resources,
        "CPU and memory of the export pod. Default: 250m CPU and 1Gi; with a merged destination 2 CPUs and 8Gi "
        "(a 1.5B model merges in about 4 GiB; give about 2.5 times the weights' size for larger ones).",
    )
    backoff_limit: int = Field(2, ge=0, le=10, description="Failed export pods retried before Exported=False.")


# --------------------------------------------------------------------------- spec

# Field markers of a two-field signature take ~72 tokens in the worst case (one per character).
MIN_CONSTRAINED_COMPLETION = 128

IMMUTABLE = "is immutable once the job exists; create a new GRPOJob instead"
# storage, except retainOnDelete (whether to keep the volume may be decided late): every other field,
# present or absent alike, as it was
STORAGE_UNCHANGED = " && ".join(
    f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
    for f in ("size", "storageClassName", "accessMode", "existingClaim")
)
STORAGE_IMMUTABLE = "is immutable once the job exists, except retainOnDelete; create a new GRPOJob instead"
# inference.pool decides where the run directory is (the job's volume or the pool's): it stays as it was
POOL_UNCHANGED = "has(self.pool) == has(oldSelf.pool) && (!has(self.pool) || self.pool == oldSelf.pool)"
POOL_IMMUTABLE = (
    "pool is immutable once the job exists (its run directory is on the pool's volume, or on the job's); "
    "create a new GRPOJob instead"
)

# Where hub tokens are set, as CEL presence tests and as the Python path to the reference.
_HUB_TOKENS: tuple[tuple[str, str], ...] = (
    ("has(self.model.hub) && has(self.model.hub.tokenSecretRef)", "self.model.hub.tokenSecretRef"),
    ("has(self.data.train.hub) && has(self.data.train.hub.tokenSecretRef)", "self.data.train.hub.tokenSecretRef"),
    (
        "has(self.data.validation) && has(self.data.validation.hub) && has(self.data.validation.hub.tokenSecretRef)",
        "self.data.validation.hub.tokenSecretRef",
    ),
)
_ONE_HUB_TOKEN_CEL = " && ".join(
    f"(!({a_has}) || !({b_has}) || ({a}.name == {b}.name && {a}.key == {b}.key))"
    for i, (a_has, a) in enumerate(_HUB_TOKENS)
    for b_has, b in _HUB_TOKENS[i + 1 :]
)


def hub_tokens(spec: GRPOJobSpec) -> list[TokenSecretRef]:
    """The hub token references of a job (model first), each as written."""
    refs: list[Optional[TokenSecretRef]] = [spec.model.hub.token_secret_ref if spec.model.hub else None]
    for source in (spec.data.train, spec.data.validation):
        refs.append(source.hub.token_secret_ref if source is not None and source.hub is not None else None)
    return [r for r in refs if r is not None]


class GRPOJobSpec(ApiModel):
    """Desired state of a GRPO optimisation of a DSPy program."""

    program: ProgramRef = Field(..., description="The DSPy program to optimise.", json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]})
    metric: MetricRef = Field(..., description="The reward metric.", json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]})
    model: LocalModel = Field(..., description="The local model served by vLLM and trained with LoRA.", json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]})
    code: list[CodeSource] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "The program's and metric's own code, without building an image: each source is put on the "
            "trainer's import path, the first one first. The trainer checks program, metric and data before "
            "it loads the model; a mistake fails the job at once (InvalidProgram, InvalidMetric, InvalidData, "
            "InvalidCode) without spending retries."
        ),
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]},
    )
    untrusted_model: Optional[ExternalLM] = Field(
        None, description="The external model the program delegates to (PAPILLON's untrusted LLM). Default: the local base model."
    )
    judge: Optional[ExternalLM] = Field(None, description="The LLM judge used by the metric. Default: untrustedModel.")
    data: Datasets = Field(..., description="Training and validation data.", json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]})
    grpo: GRPOArgs = nested(
        GRPOArgs,
        "ArborGRPO(...) arguments, with the tutorial's snake_case names.",
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]},
    )
    train_kwargs: TrainKwargs = nested(
        TrainKwargs,
        "The tutorial's train_kwargs, with its snake_case keys.",
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}]},
    )
    trainer: PodOptions = nested(PodOptions, "Options of the trainer pod.")
    inference: InferenceOptions = nested(
        InferenceOptions,
        "Options of the vLLM pod, or the inference pool the job uses instead (inference.pool).",
        json_schema_extra={"x-kubernetes-validations": [{"rule": POOL_UNCHANGED, "message": POOL_IMMUTABLE}]},
    )
    storage: Storage = nested(
        Storage,
        "The shared adapter/checkpoint volume.",
        json_schema_extra={"x-kubernetes-validations": [{"rule": STORAGE_UNCHANGED, "message": STORAGE_IMMUTABLE}]},
    )
    run_policy: RunPolicy = nested(RunPolicy, "Failure, deadline and clean-up policy.")
    serve: Serve = nested(Serve, "Serving the result after the job succeeds.")
    export: Optional[Export] = Field(
        None,
        description=(
            "Copy the result of the succeeded job to claims, hub repositories or S3 buckets (optionally merged "
            "into the base model), by a short pod; status.export and the Exported condition say where it went. "
            "May be set or changed at any time (grpo export): each change exports what it adds or changes, once."
        ),
    )
    suspend: bool = Field(False, description="Delete the pods and keep the volume; resuming continues from the last checkpoint.")
    queue_name: Optional[str] = Field(
        None, max_length=63, pattern=DNS_LABEL, description="Kueue LocalQueue; the pods start gated until admitted."
    )
    rules = (
        Rule(
            cel="has(self.data.validation) || self.grpo.use_train_as_val",
            message="set data.validation, or grpo.use_train_as_val: true (with report_train_scores: true)",
            check=lambda s: s.data.validation is not None or s.grpo.use_train_as_val,
            field="data.validation",
        ),
        Rule(
            cel="self.trainKwargs.num_inference_gpus > 0 || self.trainKwargs.num_training_gpus == 0",
            message="a GPU trainer needs a GPU vLLM server; set num_inference_gpus >= 1 (or run both on CPU with 0 and 0)",
            check=lambda s: s.train_kwargs.num_inference_gpus > 0 or s.train_kwargs.num_training_gpus == 0,
            field="trainKwargs.num_inference_gpus",
        ),
        Rule(
            cel=(
                "!self.grpo.constrain_output_format || !has(self.trainKwargs.max_completion_length)"
                f" || self.trainKwargs.max_completion_length >= {MIN_CONSTRAINED_COMPLETION}"
            ),
            message=(
                f"constrain_output_format needs trainKwargs.max_completion_length >= {MIN_CONSTRAINED_COMPLETION} "
                "(room for the field markers), or unset"
            ),
            check=lambda s: not s.grpo.constrain_output_format
            or s.train_kwargs.max_completion_length is None
            or s.train_kwargs.max_completion_length >= MIN_CONSTRAINED_COMPLETION,
            field="trainKwargs.max_completion_length",
        ),
        Rule(
            cel="!has(self.metric.builtin) || self.metric.builtin != 'compute_overall_score' || has(self.judge) || has(self.untrustedModel)",
            message="compute_overall_score needs an LLM judge; set judge (or untrustedModel, which it defaults to)",
            check=lambda s: s.metric.builtin != "compute_overall_score" or s.judge is not None or s.untrusted_model is not None,
            field="judge",
        ),
        Rule(
            cel=_ONE_HUB_TOKEN_CEL,
            message=(
                "model.hub, data.train.hub and data.validation.hub name different tokenSecretRefs, and a pod has one "
                "HF_TOKEN; use one Secret key with a token that reads all of them"
            ),
            check=lambda s: len({(r.name, r.key) for r in hub_tokens(s)}) <= 1,
            field="data",
        ),
        Rule(
            cel="!has(self.inference.pool) || !has(self.storage.existingClaim)",
            message=(
                "a job on an inference pool keeps its run in a folder of the pool's volume, where the pool's servers "
                "read its adapters; remove storage.existingClaim (or inference.pool)"
            ),
            check=lambda s: s.inference.pool is None or not s.storage.existing_claim,
            field="storage.existingClaim",
        ),
        Rule(
            cel=(
                "!has(self.export) || !has(self.storage.existingClaim) || self.export.destinations.all(d, "
                "!has(d.claim) || d.claim.claimName != self.storage.existingClaim)"
            ),
            message=(
                "a claim destination may not be the job's own volume (storage.existingClaim), which the export "
                "reads; name another claim"
            ),
            check=lambda s: s.export is None
            or not s.storage.existing_claim
            or all(d.claim is None or d.claim.claim_name != s.storage.existing_claim for d in s.export.destinations),
            field="export.destinations",
        ),
    )

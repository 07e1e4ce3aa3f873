"""A GRPOJob → what runs: the trainer's config, its command and environment, the vLLM server.

The one place these are decided. The pod builders (grpo_operator.children) and the
local runner (grpo_operator.local) render a :class:`ResolvedJob`; they only say
*where* the job runs (:class:`ClusterTarget`, :class:`LocalTarget`): mount points
or local paths, hosts and ports, which interpreter, how many GPUs the machine has.
Pure: no I/O, nothing imported beyond the API models and the trainer's contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, Optional, Union

from grpo_operator.api.pool import SLOTS_PER_JOB, GRPOInferencePoolSpec
from grpo_operator.api.spec import (
    CodeSource as CodeSpec,
)
from grpo_operator.api.spec import (
    DatasetSource,
    EnvFromSource,
    EnvVar,
    Export,
    ExportDestination,
    ExternalLM,
    GRPOJobSpec,
    LocalModel,
    PodOptions,
    Resources,
    ServerOptions,
    Toleration,
    VolumeSource,
    hub_tokens,
)
from grpo_trainer.contract.config import (
    CODE_FETCH_MODULE,
    CONFIG_ENV,
    GIT_SSH_KEY_ENV,
    GIT_TOKEN_ENV,
    HF_TOKEN_ENV,
    JUDGE_API_KEY_ENV,
    PIP_INDEX_URL_ENV,
    TERMINATION_LOG_ENV,
    UNTRUSTED_API_KEY_ENV,
    VLLM_API_KEY_ENV,
    CodeSource,
    DataSpec,
    LMEndpoint,
    TrainerConfig,
    VLLMEndpoint,
)
from grpo_trainer.contract.export import EXPORT_MODULE, ClaimTarget, ExportPlan, ExportTarget, HubTarget, S3Target
from grpo_trainer.contract.identity import RUN_DEFINING_FIELDS, JobIdentity, RunOwner, field_hash
from grpo_trainer.contract.progress import RESULT_ADAPTER_DIR, RESULT_DIR, result_model_name
from grpo_trainer.contract.vllm_command import VLLMServerSpec
from grpo_trainer.contract.vllm_guard import SERVED_RESULTS_ENV, SERVED_RESULTS_FILE

log = logging.getLogger(__name__)

BASE_SERVED_NAME = "base"
LOCAL_HOST = "127.0.0.1"  # where a local run's vLLM listens
TRAINER_MODULE = "grpo_trainer.run.main"
LAUNCHER_MODULE = "grpo_trainer.run.launch"  # one rank per training GPU; forwards SIGTERM, keeps exit 75

# Where a job's run directory is on its volume (its own or storage.existingClaim) and, by default,
# under grpo-local's working directory: runs/<job name>.
RUNS_DIR = "runs"

# Where things are inside the job's pods (grpo_operator.children mounts them there).
RUN_MOUNT = "/mnt/grpo"
CONFIG_MOUNT = "/etc/grpo"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_KEY}"
MODEL_MOUNT = "/models"
DATA_MOUNT = "/datasets"
CODE_MOUNT = "/code"  # spec.code[i] at /code/<i>
EXPORT_MOUNT = "/export"  # the export pod's claim destinations at /export/<claim>
GUARD_MOUNT = "/etc/grpo-vllm"  # the vLLM pod's key guard (vllm_command.GUARD_FILE), from the job's ConfigMap
GUARD_DIR = "vllm-guard"  # the same in a local run directory
# The key of the job's vLLM in its Secret (grpo_operator.children.credentials): both pods read it from there.
API_KEY_SECRET_KEY = "api-key"
CODE_ARCHIVE_KEY = "code.tar.gz"  # the key of a packed-code ConfigMap (grpo_operator.code_pack)
HOME = "/home/grpo"  # an emptyDir: the root filesystem is read-only
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
CACHE_ROOT = f"{RUN_MOUNT}/.cache"
GPU_RESOURCE = "nvidia.com/gpu"
# vLLM serves GET /health; so does the trainer's progress server (grpo_trainer.run.progress_server).
HEALTH_PATH = "/health"
DEFAULT_STARTUP_SECONDS = 1800  # model download + load; a 1.5B model takes a few minutes, a 70B one far longer

# Environment every trainer gets (the API refuses these names in spec.trainer.env): litellm's
# price-map download costs ~7 s of retries per process offline; tokenizers' threads fight
# DSPy's; logs must not lag.
TRAINER_ENV_DEFAULTS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class EnvRef:
    """A variable whose value a pod reads from a Secret or ConfigMap key; a local run reads it from its environment."""

    name: str
    kind: Literal["secret", "configMap"]
    source: str  # the Secret's or ConfigMap's name
    key: str
    optional: bool
    field: str  # where the job asks for it, for messages: spec.judge.apiKeySecretRef


class UnplaceableJob(ValueError):
    """The job asks for more GPUs than where it runs has (local runs only: the scheduler decides in a cluster)."""


# --------------------------------------------------------------------------- where a job runs


@dataclass(frozen=True)
class ClusterTarget:
    """The job's pods: the shared volume, model and data at fixed mount points, vLLM behind its Service."""

    inference_host: str  # the vLLM Service's DNS name, as the trainer pod resolves it
    inference_port: int
    trainer_port: int
    api_key_secret: str  # the Secret holding the job's vLLM key (API_KEY_SECRET_KEY), which both pods read
    # The job's run directory is its volume's root, not runs/<name>: its pods were first created by an
    # operator from before per-job folders (grpo_operator.controller.lifecycle decides, from the status).
    claim_root: bool = False
    # A job on an inference pool: the pool's claim, which holds its run directory (runs/<job>), and where the
    # pool's servers see that directory (they mount the whole claim). None: the job's own vLLM pod.
    pool_claim: Optional[str] = None
    inference_run_dir: Optional[str] = None

    run_dir: str = field(default=RUN_MOUNT, init=False)
    guard_dir: str = field(default=GUARD_MOUNT, init=False)
    config_path: str = field(default=CONFIG_PATH, init=False)
    model_mount: str = field(default=MODEL_MOUNT, init=False)
    data_mount: str = field(default=DATA_MOUNT, init=False)
    export_mount: str = field(default=EXPORT_MOUNT, init=False)
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

    # spec.code[i] on this machine: a packed ConfigMap's archive or a directory standing in for a claim.
    code_paths: tuple[str, ...] = ()
    # Importable besides spec.code (after it): (directory, why) -- --code DIR, the job file's folder, the cwd.
    extra_code: tuple[tuple[str, str], ...] = ()
    # Data sets a pod reads from a ConfigMap (configMap, inline), as files the plan wrote: split -> path.
    data_files: Mapping[str, str] = field(default_factory=dict)
    # spec.export's claim destinations on this machine (--volume NAME=DIR): claim -> directory.
    export_claims: Mapping[str, str] = field(default_factory=dict)

    model_mount: str = field(default="", init=False)
    data_mount: str = field(default="", init=False)
    vllm_bind_host: str = field(default=LOCAL_HOST, init=False)

    @property
    def inference_host(self) -> str:
        return self.vllm_bind_host

    @property
    def guard_dir(self) -> str:
        """Where the run keeps vLLM's key guard: the runner writes it there (a pod's comes from its ConfigMap)."""
        return f"{self.run_dir}/{GUARD_DIR}"

    @property
    def inference_port(self) -> int:
        return self.vllm_port

    @property
    def vllm_python(self) -> str:
        return self.python


Target = Union[ClusterTarget, LocalTarget]


# --------------------------------------------------------------------------- the resolution


@dataclass(frozen=True)
class CodeFetch:
    """Fetching spec.code[index] (git, pip) before the trainer starts: a pod's init container, a local run's step."""

    index: int
    argv: list[str]
    dest: str  # the folder it fills: an emptyDir at /code/<i> in pods, a run-directory folder locally
    env_refs: tuple[EnvRef, ...]  # its credentials, from Secret keys (a local run: from its environment)


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
    # Variables read from Secret/ConfigMap keys (API keys, the hub token, the user's valueFrom entries).
    trainer_env_refs: tuple[EnvRef, ...]
    inference_env_refs: tuple[EnvRef, ...]
    code_fetches: tuple[CodeFetch, ...] = ()  # git and pip sources, fetched before the trainer starts
    # Pods: the run directory's folder on the job's claim, mounted at RUN_MOUNT (None: the claim's root).
    run_sub_path: Optional[str] = None


def run_path(name: str) -> str:
    """Job ``name``'s run directory relative to its volume (and grpo-local's working directory): runs/<name>.

    Keyed by the name, not the uid: claims are namespaced, so two live jobs never share it,
    and a job applied again under its name (a volume kept by storage.retainOnDelete, named
    as its existingClaim) finds its run where its own volume had it. Whose run it is, is
    checked by the trainer (grpo_trainer.run.ownership).
    """
    return f"{RUNS_DIR}/{name}"


def run_claim(name: str, spec: GRPOJobSpec) -> str:
    """The claim holding the job's run directory: storage.existingClaim, or the job's own ``<name>-run``."""
    return spec.storage.existing_claim or f"{name}-run"


def run_sub_path(name: str, target: Target) -> Optional[str]:
    """The run directory's folder on the job's claim (None: the claim's root, or not a pod)."""
    if not isinstance(target, ClusterTarget) or target.claim_root:
        return None
    return run_path(name)


# Keys of run-defining fields that say how a run goes, not what it trains: a job changed only
# in these (more steps, other checkpointing, threads, logging) still resumes its run.
OPERATIONAL_KEYS: Mapping[str, frozenset[str]] = {
    "grpo": frozenset({"num_train_steps", "num_threads", "checkpoint_every_steps", "keep_checkpoints"}),
    "trainKwargs": frozenset({"ddp_timeout", "report_to", "log_completions", "logging_steps"}),
}


def _without_credentials(value: object) -> object:
    """A field's JSON without Secret references (and what only held them): which Secret holds a token is
    not what the run is."""
    if isinstance(value, dict):
        kept = {k: _without_credentials(v) for k, v in value.items() if not k.endswith("SecretRef")}
        return {k: v for k, v in kept.items() if v != {}}
    if isinstance(value, list):
        return [_without_credentials(v) for v in value]
    return value


def run_definition(spec: GRPOJobSpec) -> dict[str, str]:
    """The run-defining fields (contract.identity.RUN_DEFINING_FIELDS), each hashed: what a resumed run must match.

    Values the job leaves at their defaults are left out, so a field a later version
    adds (with a default) does not make a running job's checkpoints foreign.
    """
    doc = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    definition: dict[str, str] = {}
    for name in RUN_DEFINING_FIELDS:
        value = _without_credentials(doc.get(name))
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in OPERATIONAL_KEYS.get(name, ())} or None
        definition[name] = field_hash(value)
    return definition


def run_owner(
    name: str, spec: GRPOJobSpec, target: Target, namespace: Optional[str] = None, uid: Optional[str] = None
) -> RunOwner:
    """Whose run directory it is, and how a refusal names it and the way out (where the job runs)."""
    job = JobIdentity(name=name, namespace=namespace, uid=uid, definition=run_definition(spec))
    if isinstance(target, LocalTarget):
        return RunOwner(
            job=job,
            where=f"run directory {target.run_dir}",
            fix="Pass --run-dir with a directory of its own, or --fresh to delete this one and start over.",
        )
    claim = target.pool_claim or run_claim(name, spec)
    sub = run_sub_path(name, target)
    where = f"folder {sub} of claim {claim!r}" if sub else f"the root of claim {claim!r}"
    # a job on a pool may not name a claim (its run is in the pool's volume, where the servers read it)
    elsewhere = "Rename the job" if target.pool_claim else "Run this job on a claim of its own (spec.storage.existingClaim)"
    return RunOwner(job=job, where=where, fix=f"{elsewhere}, or delete {where} to start over.")


def mounted(mount: str, volume: Optional[VolumeSource], path: str) -> str:
    """A path on a user volume, under the mount point the pod builders use for it."""
    if volume is None or not mount:
        return path
    return f"{mount}/{volume.claim_name}/{path.lstrip('/')}"


ServedSpec = Union[GRPOJobSpec, GRPOInferencePoolSpec]  # what has a base model that vLLM serves


def served_model_name(spec: ServedSpec) -> str:
    """The name vLLM serves the base model under; adapters are keyed to it."""
    return spec.model.served_name or spec.model.name or BASE_SERVED_NAME


def model_location(spec: ServedSpec, mount: str) -> str:
    """Hub id, or the model directory under its volume's mount."""
    if spec.model.name is not None:
        return spec.model.name
    assert spec.model.path is not None  # exactly one of name/path (rule in LocalModel)
    return mounted(mount, spec.model.volume, spec.model.path)


def max_loras(spec: GRPOJobSpec) -> int:
    """Adapters vLLM keeps loaded: current + previous (overlap) + best + one in flight."""
    return spec.inference.max_loras or SLOTS_PER_JOB


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


def _cpu_sharing_env(spec: GRPOJobSpec, target: Target, gpus: int) -> dict[str, str]:
    """OpenMP threads that sleep when idle, for a local run's CPU process while the other computes beside it
    (rollouts overlapped with training). libgomp's idle threads spin, taking the cores the other process
    computes on: 3 overlapped steps of the embedded default took 229 s spinning, 192 s passive. Alone on
    the cores (sequential steps), spinning is faster: 157 s against 191 s (bench/RESULTS.md, "cpu_sharing").
    A pod has its own cores, a GPU process barely computes on them: nothing is set there. The job's own env
    may say otherwise."""
    shared = isinstance(target, LocalTarget) and not gpus and spec.grpo.overlap_rollouts
    return {"OMP_WAIT_POLICY": "PASSIVE"} if shared else {}


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


DATA_SPLITS = ("train", "validation")


def inline_data_key(split: str) -> str:
    """The key of an inline data set in the job's config ConfigMap (and its file name in a local run)."""
    return f"data-{split}.jsonl"


def inline_data_files(spec: GRPOJobSpec) -> dict[str, str]:
    """The job's inline data sets as JSONL files, by key: written into the job's config ConfigMap."""
    files: dict[str, str] = {}
    for split in DATA_SPLITS:
        src: Optional[DatasetSource] = getattr(spec.data, split)
        if src is not None and src.inline is not None:
            rows = (json.dumps(row, ensure_ascii=False) + "\n" for row in src.inline.rows)
            files[inline_data_key(split)] = "".join(rows)
    return files


def config_map_data_dir(name: str) -> str:
    """Where a pod sees a ConfigMap of data sets (grpo_operator.children mounts it there)."""
    return f"{DATA_MOUNT}/configmap-{name}"


def _data(src: Optional[DatasetSource], split: str, target: Target) -> Optional[DataSpec]:
    if src is None:
        return None
    common = dict(fields=dict(src.fields), input_fields=src.input_fields, limit=src.limit)
    if src.hub is not None:
        h = src.hub
        return DataSpec(source="hub", id=h.id, config=h.config, split=h.split, revision=h.revision, **common)
    if src.file is not None:
        f = src.file
        return DataSpec(source="file", path=mounted(target.data_mount, f.volume, f.path), format=f.format, **common)
    if src.config_map is not None or src.inline is not None:
        fmt = src.config_map.format if src.config_map is not None else "jsonl"
        if isinstance(target, LocalTarget):  # no ConfigMaps here: the plan wrote the file and says where
            path = target.data_files[split]
        elif src.config_map is not None:
            path = f"{config_map_data_dir(src.config_map.name)}/{src.config_map.key}"
        else:
            path = f"{CONFIG_MOUNT}/{inline_data_key(split)}"
        return DataSpec(source="file", path=path, format=fmt, **common)
    assert src.url is not None  # exactly one source (rule in DatasetSource)
    return DataSpec(source="url", url=src.url.url, format=src.url.format, **common)


def code_origin(index: int, source: CodeSpec) -> str:
    """How messages name a code source: ``spec.code[0].configMap 'my-code'``."""
    if source.config_map is not None:
        return f"spec.code[{index}].configMap {source.config_map.name!r}"
    if source.git is not None:
        return f"spec.code[{index}].git {source.git.url!r}"
    if source.pip is not None:
        return f"spec.code[{index}].pip {' '.join(source.pip.requirements)!r}"
    assert source.volume is not None  # exactly one (rule in CodeSource)
    return f"spec.code[{index}].volume {source.volume.claim_name!r}"


def _code_root(index: int, target: Target) -> str:
    return target.code_paths[index] if isinstance(target, LocalTarget) else f"{CODE_MOUNT}/{index}"


def _fetch_refs(index: int, source: CodeSpec) -> tuple[EnvRef, ...]:
    """The credentials fetching spec.code[index] reads from Secret keys."""
    where = f"spec.code[{index}]"
    refs: list[EnvRef] = []
    if source.git is not None:
        for var, ref, name in (
            (GIT_TOKEN_ENV, source.git.token_secret_ref, "tokenSecretRef"),
            (GIT_SSH_KEY_ENV, source.git.ssh_key_secret_ref, "sshKeySecretRef"),
        ):
            if ref is not None:
                refs.append(EnvRef(var, "secret", ref.name, ref.key, False, f"{where}.git.{name}"))
    if source.pip is not None and source.pip.index_url_secret_ref is not None:
        ref = source.pip.index_url_secret_ref
        refs.append(EnvRef(PIP_INDEX_URL_ENV, "secret", ref.name, ref.key, False, f"{where}.pip.indexUrlSecretRef"))
    return tuple(refs)


def code_env_refs(spec: GRPOJobSpec) -> tuple[EnvRef, ...]:
    """Every Secret key the job's code fetches read (the operator checks they exist; a local run reads its env)."""
    return tuple(r for i, source in enumerate(spec.code) for r in _fetch_refs(i, source))


def code_fetches(spec: GRPOJobSpec, target: Target) -> list[CodeFetch]:
    """The git and pip sources of spec.code, each as the fetch command that fills its folder."""
    out: list[CodeFetch] = []
    for i, source in enumerate(spec.code):
        dest = _code_root(i, target)
        argv = [target.python, "-m", CODE_FETCH_MODULE]
        if source.git is not None:
            g = source.git
            argv += ["git", "--url", g.url, "--dest", f"{dest}/repo"]
            argv += ["--ref", g.ref] if g.ref else []
            argv += ["--commit", g.commit] if g.commit else []
        elif source.pip is not None:
            pip = source.pip
            argv += ["pip", "--dest", dest, *pip.requirements]
            argv += ["--index-url", pip.index_url] if pip.index_url else []
            for extra in pip.extra_index_urls:
                argv += ["--extra-index-url", extra]
        else:
            continue
        out.append(CodeFetch(index=i, argv=argv, dest=dest, env_refs=_fetch_refs(i, source)))
    return out


def code_sources(spec: GRPOJobSpec, target: Target) -> list[CodeSource]:
    """The trainer's import path additions, in the job's order: /code/<i> in pods, where the plan found them locally."""
    out: list[CodeSource] = []
    for i, source in enumerate(spec.code):
        root, origin = _code_root(i, target), code_origin(i, source)
        if source.config_map is not None:
            local = isinstance(target, LocalTarget)
            out.append(CodeSource(kind="archive", path=root if local else f"{root}/{CODE_ARCHIVE_KEY}", origin=origin))
        elif source.git is not None:
            repo = f"{root}/repo"
            path = f"{repo}/{source.git.sub_path.strip('/')}" if source.git.sub_path else repo
            out.append(CodeSource(kind="dir", path=path, origin=origin, fetched=repo))
        elif source.pip is not None:
            out.append(CodeSource(kind="dir", path=root, origin=origin, fetched=root))
        else:
            out.append(CodeSource(kind="dir", path=root, origin=origin))
    if isinstance(target, LocalTarget):
        out.extend(CodeSource(kind="dir", path=path, origin=why) for path, why in target.extra_code)
    return out


def trainer_config(
    name: str, spec: GRPOJobSpec, target: Target, training_gpus: int, owner: Optional[RunOwner] = None
) -> TrainerConfig:
    """The trainer's config file for a job where it runs."""
    train_data = _data(spec.data.train, "train", target)
    assert train_data is not None
    device: Literal["cuda", "cpu"] = "cuda" if training_gpus > 0 else "cpu"
    return TrainerConfig(
        job_name=name,
        run_dir=target.run_dir,
        owner=owner,
        program=spec.program.builtin or spec.program.import_path or "",
        metric=spec.metric.builtin or spec.metric.import_path or "",
        model=model_location(spec, target.model_mount),
        vllm=VLLMEndpoint(
            base_url=f"http://{target.inference_host}:{target.inference_port}/v1",
            served_model_name=served_model_name(spec),
            adapter_dir=f"{_inference_run_dir(target)}/adapters",
            max_loras=max_loras(spec),
            api_key_env=VLLM_API_KEY_ENV,  # a pod's from the job's (or its pool's) Secret, a local run's from the runner
            adapter_prefix=adapter_prefix(name, spec),
        ),
        untrusted=_endpoint(spec.untrusted_model, UNTRUSTED_API_KEY_ENV),
        judge=_endpoint(spec.judge, JUDGE_API_KEY_ENV),
        train_data=train_data,
        val_data=_data(spec.data.validation, "validation", target),
        code=code_sources(spec, target),
        grpo=spec.grpo,
        train=spec.train_kwargs,
        port=target.trainer_port,
        device=device,
    )


def _inference_run_dir(target: Target) -> str:
    """The run directory as the vLLM process sees it: where the trainer sees it, or in its pool's mount."""
    if isinstance(target, ClusterTarget) and target.inference_run_dir is not None:
        return target.inference_run_dir
    return target.run_dir


def adapter_prefix(name: str, spec: GRPOJobSpec) -> str:
    """What the job's adapter names start with: ``<job>-`` on a pool (names unique among its jobs), '' alone."""
    return f"{name}-" if spec.inference.pool is not None else ""


def _server(
    spec: ServedSpec,
    options: ServerOptions,
    target: Target,
    gpus: int,
    *,
    lora_rank: int,
    max_loras: int,
    max_cpu_loras: Optional[int],
    seed: int,
    default_env: Mapping[str, str] = MappingProxyType({}),
) -> VLLMServerSpec:
    """A vLLM server of ``spec``'s base model: a job's own, or a pool's. ``default_env``: what the server's
    own env may override."""
    return VLLMServerSpec(
        model=model_location(spec, target.model_mount),
        served_model_name=served_model_name(spec),
        port=target.inference_port,
        host=target.vllm_bind_host,
        lora_rank=lora_rank,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        dtype=spec.model.dtype,
        max_model_len=spec.model.max_model_len,
        device="gpu" if gpus > 0 else "cpu",
        tensor_parallel_size=max(gpus, 1),
        gpu_memory_utilization=options.gpu_memory_utilization,
        seed=seed,
        python=target.vllm_python,
        guard_dir=target.guard_dir,  # every request but the probes needs the key
        extra_args=tuple(options.extra_args),
        extra_env={
            **default_env,
            **literal_env(options.env),
            **(_visible_devices(0, gpus) if isinstance(target, LocalTarget) else {}),
        },
    )


def vllm_server(spec: GRPOJobSpec, target: Target, inference_gpus: int) -> VLLMServerSpec:
    """The job's vLLM server, for :func:`grpo_trainer.contract.vllm_command.vllm_command`."""
    return _server(
        spec,
        spec.inference,
        target,
        inference_gpus,
        lora_rank=spec.train_kwargs.lora_config.r,
        max_loras=max_loras(spec),
        max_cpu_loras=None,
        seed=spec.grpo.seed,
        default_env=_cpu_sharing_env(spec, target, inference_gpus),
    )


def serving_result(server: VLLMServerSpec, job: str, run_dir: str) -> VLLMServerSpec:
    """The job's vLLM server with its result adapter served from the start, under the job's name
    (spec.serve's pod; the server a local compile() starts on a finished run)."""
    return replace(server, lora_modules=((result_model_name(job), f"{run_dir}/{RESULT_ADAPTER_DIR}"),))


def literal_env(env: list[EnvVar]) -> dict[str, str]:
    """The user's variables with a literal value (valueFrom ones are :class:`EnvRef`)."""
    return {e.name: e.value or "" for e in env if e.value_from is None}


def _user_refs(env: list[EnvVar], where: str) -> list[EnvRef]:
    refs = []
    for i, var in enumerate(env):
        source = var.value_from
        if source is None:
            continue
        key_ref = source.secret_key_ref or source.config_map_key_ref
        assert key_ref is not None  # exactly one (rule in EnvVarSource)
        kind: Literal["secret", "configMap"] = "secret" if source.secret_key_ref is not None else "configMap"
        refs.append(EnvRef(var.name, kind, key_ref.name, key_ref.key, key_ref.optional, f"{where}.env[{i}].valueFrom"))
    return refs


def model_token_ref(model: LocalModel) -> Optional[EnvRef]:
    """The hub token of spec.model (a job's or a pool's), given to the pods that download it."""
    ref = model.hub.token_secret_ref if model.hub else None
    if ref is None:
        return None
    return EnvRef(HF_TOKEN_ENV, "secret", ref.name, ref.key, False, "spec.model.hub.tokenSecretRef")


def env_refs(spec: GRPOJobSpec) -> tuple[tuple[EnvRef, ...], tuple[EnvRef, ...]]:
    """(trainer, vLLM) variables from Secret/ConfigMap keys. Secret values never reach a config file.

    Both pods get the model's hub token (both download it); the trainer alone the data
    sets' (the same Secret key, a rule of the spec) and the API keys.
    """
    trainer: list[EnvRef] = []
    for var, lm, where in (
        (UNTRUSTED_API_KEY_ENV, spec.untrusted_model, "spec.untrustedModel"),
        (JUDGE_API_KEY_ENV, spec.judge, "spec.judge"),
    ):
        if lm is not None and lm.api_key_secret_ref is not None:
            ref = lm.api_key_secret_ref
            trainer.append(EnvRef(var, "secret", ref.name, ref.key, False, f"{where}.apiKeySecretRef"))
    inference: list[EnvRef] = []
    token = model_token_ref(spec.model)
    if token is not None:
        trainer.append(token)
        inference.append(token)
    elif data_tokens := hub_tokens(spec):
        data_token = data_tokens[0]
        trainer.append(
            EnvRef(HF_TOKEN_ENV, "secret", data_token.name, data_token.key, False, "spec.data.*.hub.tokenSecretRef")
        )
    trainer += _user_refs(spec.trainer.env, "spec.trainer")
    inference += _user_refs(spec.inference.env, "spec.inference")
    return tuple(trainer), tuple(inference)


def resolve(
    name: str, spec: GRPOJobSpec, target: Target, *, namespace: Optional[str] = None, uid: Optional[str] = None
) -> ResolvedJob:
    """What runs for job ``name`` at ``target``. Raises :class:`UnplaceableJob` (local runs only).

    ``namespace``, ``uid``: the GRPOJob object's (a cluster job), recorded with its run.
    """
    training_gpus, inference_gpus = gpu_split(spec, target)
    trainer_env = {
        **TRAINER_ENV_DEFAULTS,
        **_cpu_sharing_env(spec, target, training_gpus),
        CONFIG_ENV: target.config_path,
        **literal_env(spec.trainer.env),
    }
    if isinstance(target, LocalTarget):
        trainer_env.update(_visible_devices(inference_gpus, training_gpus))
    trainer_refs, inference_refs = env_refs(spec)
    if isinstance(target, ClusterTarget):  # a local run's key is the runner's, in both processes' environment
        whose = "the job's pool's vLLM key" if target.pool_claim is not None else "the job's vLLM key"
        key = EnvRef(VLLM_API_KEY_ENV, "secret", target.api_key_secret, API_KEY_SECRET_KEY, False, whose)
        trainer_refs, inference_refs = (*trainer_refs, key), (*inference_refs, key)
    return ResolvedJob(
        name=name,
        config=trainer_config(name, spec, target, training_gpus, run_owner(name, spec, target, namespace, uid)),
        config_path=target.config_path,
        vllm=vllm_server(spec, target, inference_gpus),
        trainer_argv=trainer_command(training_gpus, target.config_path, target.python),
        trainer_env=trainer_env,
        training_gpus=training_gpus,
        inference_gpus=inference_gpus,
        trainer_env_refs=trainer_refs,
        inference_env_refs=inference_refs,
        code_fetches=tuple(code_fetches(spec, target)),
        run_sub_path=run_sub_path(name, target),
    )


# --------------------------------------------------------------------------- the export


@dataclass(frozen=True)
class ResolvedExport:
    """The export of a succeeded job's result to some of spec.export's destinations: one process."""

    plan: ExportPlan
    argv: list[str]
    env_refs: tuple[EnvRef, ...]  # the destinations' credentials, from Secret keys (a local run: its environment)
    claims: tuple[str, ...]  # claim destinations, each once: mounted writable (a pod) or mapped (--volume)
    merged: bool  # some destination wants merged/: the process loads the base model
    run_sub_path: Optional[str] = None  # pods: the run directory's folder on the job's claim (as ResolvedJob's)


def _digest(doc: object) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def export_spec_hash(export: Export) -> str:
    """The hash of spec.export as a whole: a changed one is looked at again (status.export.specHash)."""
    return _digest(export.model_dump(mode="json", by_alias=True))


def destination_hash(destination: ExportDestination) -> str:
    """The hash of one destination's settings: exported once (a destination keeps its record while unchanged)."""
    return _digest(destination.model_dump(mode="json", by_alias=True))


def destination_name(destination: ExportDestination, job: str) -> str:
    """How messages and status name a destination: claim NAME:/path, hub owner/name[@branch], s3://bucket/prefix."""
    if destination.claim is not None:
        return f"claim {destination.claim.claim_name}:/{destination.claim.path or job}"  # ClaimTarget.shown
    if destination.hub is not None:
        hub = destination.hub
        where = f"{hub.endpoint.rstrip('/')}/" if hub.endpoint else ""
        return f"hub {where}{hub.repo_id}" + (f"@{hub.revision}" if hub.revision else "")
    assert destination.s3 is not None  # exactly one (rule in ExportDestination)
    return f"s3://{destination.s3.bucket}/{destination.s3.prefix or job}"


def export_secret_env(index: int, what: str) -> str:
    """The variable one destination's credential is given to the export process as (never a value in argv)."""
    return f"GRPO_EXPORT_{index}_{what}"


def export_env_refs(spec: GRPOJobSpec, indices: Optional[Sequence[int]] = None) -> tuple[EnvRef, ...]:
    """The Secret keys the export of ``indices`` (default: every destination) reads."""
    if spec.export is None:
        return ()
    refs: list[EnvRef] = []
    for i, d in enumerate(spec.export.destinations):
        if indices is not None and i not in indices:
            continue
        where = f"spec.export.destinations[{i}]"
        keys: list[tuple[str, str, str, str]] = []  # (variable, Secret, key, field)
        if d.hub is not None:
            t = d.hub.token_secret_ref
            keys.append(("HF_TOKEN", t.name, t.key, f"{where}.hub.tokenSecretRef"))
        if d.s3 is not None:
            c = d.s3.credentials_secret_ref
            keys.append(("AWS_ACCESS_KEY_ID", c.name, c.access_key_id_key, f"{where}.s3.credentialsSecretRef"))
            keys.append(("AWS_SECRET_ACCESS_KEY", c.name, c.secret_access_key_key, f"{where}.s3.credentialsSecretRef"))
        refs += [EnvRef(export_secret_env(i, what), "secret", s, k, False, f) for what, s, k, f in keys]
    return tuple(refs)


def export_claims(spec: GRPOJobSpec) -> list[str]:
    """The claims spec.export writes to, each once, in its order."""
    if spec.export is None:
        return []
    return list(dict.fromkeys(d.claim.claim_name for d in spec.export.destinations if d.claim is not None))


def _export_dir(claim: str, target: Target) -> str:
    if isinstance(target, LocalTarget):
        return target.export_claims[claim]
    return f"{target.export_mount}/{claim}"


def _export_target(index: int, d: ExportDestination, job: str, target: Target) -> ExportTarget:
    to: Union[ClaimTarget, HubTarget, S3Target]
    name = destination_name(d, job)
    if d.claim is not None:
        path = d.claim.path or job
        to = ClaimTarget(dir=f"{_export_dir(d.claim.claim_name, target)}/{path}", shown=f"{d.claim.claim_name}:/{path}")
    elif d.hub is not None:
        h = d.hub
        token = export_secret_env(index, "HF_TOKEN")
        to = HubTarget(repo_id=h.repo_id, endpoint=h.endpoint, revision=h.revision, private=h.private, token_env=token)
    else:
        assert d.s3 is not None
        s3 = d.s3
        to = S3Target(
            bucket=s3.bucket,
            prefix=(s3.prefix or job).rstrip("/"),
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            addressing_style=s3.addressing_style,
            access_key_id_env=export_secret_env(index, "AWS_ACCESS_KEY_ID"),
            secret_access_key_env=export_secret_env(index, "AWS_SECRET_ACCESS_KEY"),
        )
    return ExportTarget(index=index, name=name, spec_hash=destination_hash(d), merged=d.merged, to=to)


def resolve_export(name: str, spec: GRPOJobSpec, target: Target, indices: Sequence[int]) -> ResolvedExport:
    """The export of the job's result/ to spec.export's destinations ``indices`` (those not yet exported)."""
    assert spec.export is not None and indices
    chosen = [(i, spec.export.destinations[i]) for i in indices]
    plan = ExportPlan(
        job=name,
        result_dir=f"{target.run_dir}/{RESULT_DIR}",
        base_model=model_location(spec, target.model_mount),
        targets=[_export_target(i, d, name, target) for i, d in chosen],
    )
    claims = tuple(dict.fromkeys(d.claim.claim_name for _, d in chosen if d.claim is not None))
    return ResolvedExport(
        plan=plan,
        argv=[target.python, "-m", EXPORT_MODULE, "--plan", plan.to_json()],
        env_refs=export_env_refs(spec, indices),
        claims=claims,
        merged=any(d.merged for _, d in chosen),
        run_sub_path=run_sub_path(name, target),
    )


# --------------------------------------------------------------------------- what only a pod needs


@dataclass(frozen=True)
class ResourceDefaults:
    """CPU and memory a pod requests when the job says nothing: per GPU, or flat on a CPU-only job."""

    cpu_per_gpu: int
    memory_gi_per_gpu: int
    cpu_without_gpus: int
    memory_gi_without_gpus: int


# The seed (3 + 1 GPUs, Qwen2.5-1.5B) asks for 16 CPUs and 88Gi on one node: room for three
# ranks that each load the model in host memory before moving it to the GPU, DSPy's rollout
# threads, and vLLM's engine and CPU-side LoRA slots; a 4-GPU node has more. CPU-only jobs
# (tests, the tiny model) stay small.
TRAINER_RESOURCES = ResourceDefaults(cpu_per_gpu=4, memory_gi_per_gpu=24, cpu_without_gpus=2, memory_gi_without_gpus=8)
INFERENCE_RESOURCES = ResourceDefaults(
    cpu_per_gpu=4, memory_gi_per_gpu=16, cpu_without_gpus=2, memory_gi_without_gpus=6
)
SHM_GI_PER_GPU = 2  # NCCL's shared-memory transport between ranks, vLLM's tensor-parallel broadcast


@dataclass(frozen=True)
class Health:
    """The container's GET ``path`` probes: startup (a window for download and load), liveness, readiness."""

    path: str
    startup_seconds: int
    readiness: bool  # vLLM's gates its Service and InferenceReady; the trainer has no Service
    period_seconds: int = 10
    timeout_seconds: int = 5
    liveness_failures: int = 6  # a minute without an answer: restarted (vLLM) or stopped and recreated (trainer)
    # Readiness answers sooner: the trainer's requests should not reach a vLLM that just died.
    readiness_period_seconds: int = 5
    readiness_timeout_seconds: int = 3
    readiness_failures: int = 3

    @property
    def startup_failures(self) -> int:
        return math.ceil(self.startup_seconds / self.period_seconds)


@dataclass(frozen=True)
class PodPlan:
    """What a pod adds to its process: scratch and cache environment, resources, /dev/shm, probes, credentials.

    Cluster only; the local runner has no use for it (its processes use this machine's
    caches, memory and registry).
    """

    env: dict[str, str]  # under the process's own environment (ResolvedJob)
    resources: dict[str, dict[str, str]]
    shm_size: Optional[str]  # None: no memory-backed /dev/shm
    health: Optional[Health]
    env_from: tuple[EnvFromSource, ...]
    image_pull_secrets: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedPods:
    trainer: PodPlan
    inference: PodPlan


def cache_env(component: str) -> dict[str, str]:
    """$HOME, /tmp and every cache of one pod's container (and Python's unbuffered, bytecode-free output).

    The root filesystem is read-only, so all of them point at writable volumes. Caches
    that are expensive to rebuild live on the job's volume, which outlives attempts:
    the model download (shared by both pods: one download), and the compiled kernels
    (Triton, TorchInductor, vLLM's torch.compile cache), which cost seconds to minutes at
    every start and are keyed by versions, GPU architecture and model, so a restarted
    trainer or vLLM reuses them. Compiled caches are per component because the two
    images carry different torch/Triton builds. Cheap ones (numba, XDG config) stay in
    the $HOME emptyDir.
    """
    compiled = f"{CACHE_ROOT}/{component}"
    env = {
        "HOME": HOME,
        "XDG_CACHE_HOME": f"{HOME}/.cache",
        "XDG_CONFIG_HOME": f"{HOME}/.config",
        "TMPDIR": "/tmp",
        "HF_HOME": f"{CACHE_ROOT}/huggingface",
        "TRITON_CACHE_DIR": f"{compiled}/triton",
        "TORCHINDUCTOR_CACHE_DIR": f"{compiled}/torchinductor",
        "NUMBA_CACHE_DIR": f"{HOME}/.cache/numba",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if component == "inference":
        env["VLLM_CACHE_ROOT"] = f"{compiled}/vllm"
    return env


# An init container fetching code (git clone, pip install): small next to the trainer's own request.
CODE_FETCH_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
CODE_FETCH_ENV = {
    "HOME": HOME,
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def pod_resources(options: PodOptions, gpus: int, defaults: ResourceDefaults) -> dict[str, dict[str, str]]:
    """The user's requests and limits over the defaults (per GPU, or flat without), GPUs as limits."""
    if gpus > 0:
        default = {"cpu": str(defaults.cpu_per_gpu * gpus), "memory": f"{defaults.memory_gi_per_gpu * gpus}Gi"}
    else:
        default = {"cpu": str(defaults.cpu_without_gpus), "memory": f"{defaults.memory_gi_without_gpus}Gi"}
    out = over_defaults(options.resources, default)
    if gpus > 0:
        out["limits"][GPU_RESOURCE] = str(gpus)
    return out


def over_defaults(resources: Resources, default: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The user's requests and limits over the defaults, so a pod is never BestEffort.

    A resource with only a limit requests that limit (as Kubernetes defaults it); memory
    is limited to its request unless the job says otherwise (no overcommit to be
    OOM-killed for); CPU is not limited (no CFS throttling of the data loader and
    rollout threads). GPUs are extended resources: limits only.
    """
    requests = {k: str(v) for k, v in resources.requests.items()}
    limits = {k: str(v) for k, v in resources.limits.items()}
    for name, value in default.items():
        requests.setdefault(name, limits.get(name, value))
    limits.setdefault("memory", requests["memory"])
    return {"requests": requests, "limits": limits}


def _pod_plan(
    options: PodOptions, gpus: int, defaults: ResourceDefaults, health: Optional[Health], env: dict[str, str]
) -> PodPlan:
    return PodPlan(
        env=env,
        resources=pod_resources(options, gpus, defaults),
        shm_size=options.shm_size or f"{max(1, SHM_GI_PER_GPU * gpus)}Gi",
        health=health,
        env_from=tuple(options.env_from),
        image_pull_secrets=tuple(s.name for s in options.image_pull_secrets),
    )


def resolve_pods(spec: GRPOJobSpec, run: ResolvedJob, target: ClusterTarget) -> ResolvedPods:
    """What the job's two pods add to the processes of ``run``."""
    trainer_startup = spec.trainer.startup_timeout_seconds or DEFAULT_STARTUP_SECONDS
    inference_startup = spec.inference.startup_timeout_seconds or DEFAULT_STARTUP_SECONDS
    return ResolvedPods(
        trainer=_pod_plan(
            spec.trainer,
            run.training_gpus,
            TRAINER_RESOURCES,
            # the progress server is the trainer's only HTTP server; without a port there is nothing to probe
            Health(HEALTH_PATH, trainer_startup, readiness=False) if target.trainer_port else None,
            {**cache_env("trainer"), TERMINATION_LOG_ENV: TERMINATION_LOG},
        ),
        inference=_pod_plan(
            spec.inference,
            run.inference_gpus,
            INFERENCE_RESOURCES,
            Health(HEALTH_PATH, inference_startup, readiness=True),
            cache_env("inference"),
        ),
    )


# The export pod: copying and uploading need little; merging loads the whole base model (a 1.5B model in
# bf16: 3 GiB of weights, about 4 GiB at the peak of merge_and_unload and save_pretrained).
EXPORT_RESOURCES = {"cpu": "250m", "memory": "1Gi"}
EXPORT_MERGE_RESOURCES = {"cpu": "2", "memory": "8Gi"}


def export_pod_options(spec: GRPOJobSpec) -> PodOptions:
    """Where and as what the export pod runs: the trainer's image and registry credentials, both pods'
    tolerations (with a ReadWriteOnce volume it joins the serving vLLM pod, on a GPU node that may be
    tainted); no node selector or priority class of its own: it is small and needs no GPU."""
    trainer, inference = spec.trainer, spec.inference
    tolerations: dict[str, Toleration] = {}
    for t in (*trainer.tolerations, *inference.tolerations):
        tolerations.setdefault(t.model_dump_json(), t)
    return PodOptions(
        image=trainer.image,
        image_pull_policy=trainer.image_pull_policy,
        image_pull_secrets=trainer.image_pull_secrets,
        tolerations=list(tolerations.values()),
    )


def export_pod_plan(spec: GRPOJobSpec, export: ResolvedExport) -> PodPlan:
    """What the export pod adds to its process: scratch and cache environment, resources, credentials.

    The job's volume is read-only in it: the base model of a merge is read from the job's hub cache
    there (HF_HUB_CACHE; the trainer downloaded it), everything huggingface_hub writes (a token, the
    upload's chunk cache) goes to $HOME.
    """
    assert spec.export is not None
    env = {
        "HOME": HOME,
        "XDG_CACHE_HOME": f"{HOME}/.cache",
        "TMPDIR": "/tmp",
        "HF_HOME": f"{HOME}/.cache/huggingface",
        "HF_HUB_CACHE": f"{CACHE_ROOT}/huggingface/hub",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        TERMINATION_LOG_ENV: TERMINATION_LOG,
    }
    default = EXPORT_MERGE_RESOURCES if export.merged else EXPORT_RESOURCES
    return PodPlan(
        env=env,
        resources=over_defaults(spec.export.resources, default),
        shm_size=None,  # no NCCL, no vLLM: no /dev/shm of its own
        health=None,
        env_from=(),
        image_pull_secrets=tuple(s.name for s in spec.trainer.image_pull_secrets),
    )


# --------------------------------------------------------------------------- an inference pool


def pool_claim(name: str, spec: GRPOInferencePoolSpec) -> str:
    """The pool's volume: storage.existingClaim, or its own ``<pool>-adapters``."""
    return spec.storage.existing_claim or f"{name}-adapters"


def pool_run_dir(job: str) -> str:
    """Where a pool's servers see the run directory of job ``job`` (they mount the pool's whole claim)."""
    return f"{RUN_MOUNT}/{run_path(job)}"


@dataclass(frozen=True)
class ResolvedPool:
    """What runs for an inference pool: one vLLM server per replica, each in a pod of this plan."""

    name: str
    server: VLLMServerSpec
    plan: PodPlan
    env_refs: tuple[EnvRef, ...]  # the pool's key, the model's hub token, the user's valueFrom entries


def served_results(served: Sequence[str]) -> dict[str, str]:
    """What a pool's servers answer for besides its jobs' versions: each succeeded job's result (spec.serve),
    under the job's name, from its folder of the pool's volume (the list in the pool's ConfigMap that
    vllm_guard's resolver reads)."""
    return {result_model_name(job): f"{pool_run_dir(job)}/{RESULT_ADAPTER_DIR}" for job in sorted(served)}


def pool_server(spec: GRPOInferencePoolSpec, target: Target, gpus: int) -> VLLMServerSpec:
    """A pool's server: the job's vLLM server, rendered from the pool's fields (its slots, its rank); a pod's,
    or the one process of a local pool run (grpo_operator.local.plan)."""
    return _server(
        spec,
        spec.server,
        target,
        gpus,
        lora_rank=spec.max_lora_rank,
        max_loras=spec.max_loras,
        max_cpu_loras=spec.slots,
        seed=spec.seed,
    )


def resolve_pool(name: str, spec: GRPOInferencePoolSpec, target: ClusterTarget) -> ResolvedPool:
    """The pool's servers, each in a pod of this plan.

    A server answers for the results the pool serves from the list in its guard's folder (vllm_guard's
    resolver loads one on its first request), so its command line does not change with them: one restarted
    in place or made again serves the results listed then. A running one got each result from its job's
    trainer already, which loads the result as its last act.
    """
    gpus = spec.gpus_per_replica
    assert target.guard_dir is not None  # a pool's server always has its guard
    server = pool_server(spec, target, gpus)
    listing = {SERVED_RESULTS_ENV: f"{target.guard_dir}/{SERVED_RESULTS_FILE}"}  # the operator's, over spec.server.env
    server = replace(server, extra_env={**server.extra_env, **listing})
    key = EnvRef(VLLM_API_KEY_ENV, "secret", target.api_key_secret, API_KEY_SECRET_KEY, False, "the pool's vLLM key")
    token = model_token_ref(spec.model)
    refs = (*([token] if token is not None else []), *_user_refs(spec.server.env, "spec.server"), key)
    startup = spec.server.startup_timeout_seconds or DEFAULT_STARTUP_SECONDS
    health = Health(HEALTH_PATH, startup, readiness=True)
    plan = _pod_plan(spec.server, gpus, INFERENCE_RESOURCES, health, cache_env("inference"))
    return ResolvedPool(name=name, server=server, plan=plan, env_refs=refs)

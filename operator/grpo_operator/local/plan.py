"""A GRPOJob → everything a local run needs, checked before any process starts.

The job goes through the same validation (``parse_job``) and the same resolution
(grpo_operator.resolve, with a :class:`LocalTarget`) as in the cluster, so the
trainer and vLLM start with the commands a pod would run. What is local is
decided here only: volumes are directories (``--volume NAME=DIR``), model and
data paths are checked on disk, API keys come from the environment, ports are free,
and the run's vLLM key is generated (what the operator keeps in a Secret for a job).

A pool run (:func:`make_pool_plan`): a GRPOInferencePool's server (``resolve.pool_server``) and the jobs
that name it, each job checked against the pool as the operator checks it (``controller.pooling``), its
slots counted as the pool counts them (``controller.pool_lifecycle.attach``), and resolved as a job on a
pool: its adapters ``<job>-policy-vN``, its run directory ``runs/<job>`` of the pool's volume, the pool's key.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from grpo_operator.api import GRPOJob, GRPOJobSpec, InvalidJob, parse_job
from grpo_operator.api.pool import KIND as POOL_KIND
from grpo_operator.api.pool import GRPOInferencePoolSpec, InvalidPool, parse_pool
from grpo_operator.api.spec import DatasetSource, LocalModel
from grpo_operator.code_pack import PackError, archive_of
from grpo_operator.controller.pool_lifecycle import JobOnPool, attach
from grpo_operator.controller.pooling import job_slots, pool_name, pool_verdict
from grpo_operator.resolve import (
    DATA_SPLITS,
    LOCAL_HOST,
    CodeFetch,
    LocalTarget,
    ResolvedExport,
    UnplaceableJob,
    code_env_refs,
    env_refs,
    export_env_refs,
    inline_data_files,
    inline_data_key,
    pool_claim,
    pool_server,
    resolve,
    resolve_export,
    run_path,
)
from grpo_trainer.contract.config import DEFAULT_PORT, VLLM_API_KEY_ENV, TrainerConfig
from grpo_trainer.contract.vllm_command import GUARD_FILE, VLLMServerSpec, guard_source

log = logging.getLogger(__name__)

DEFAULT_VLLM_PORT = 8000
DEFAULT_NAMESPACE = "default"  # a local job's or pool's namespace when its manifest names none
POOLS_DIR = "pools"  # a pool run's own files (its server's log and key guard): pools/<pool> of its volume
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
    code_dirs: tuple[Path, ...] = ()  # --code DIR: importable by the trainer (after spec.code)


@dataclass(frozen=True)
class Plan:
    """Everything decided before a process starts."""

    name: str
    run_dir: Path
    config: TrainerConfig
    vllm: VLLMServerSpec  # the server the trainer samples through: the job's own, or its pool's (started once)
    trainer_argv: list[str]
    trainer_env: dict[str, str]
    # What a pod would read from ConfigMaps (spec.code archives, configMap and inline data sets),
    # written into the run directory before the trainer starts
    job_files: dict[Path, bytes] = field(default_factory=dict)
    code_fetches: tuple[CodeFetch, ...] = ()  # spec.code's git and pip sources, fetched into the run directory
    export: Optional[ResolvedExport] = None  # spec.export: run after the run has finished
    # What both processes get from a Secret in a pod: the run's vLLM key, made for this run only (never on disk);
    # on a pool, the pool's key of this pool run
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    slots: int = 0  # on a pool: the adapter slots the job holds there (controller.pooling.job_slots)


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Documents:
    """A job file: one GRPOJob, and the ConfigMaps of its packed code (``grpo-pack-code`` output, appended)."""

    job: dict[str, Any]
    config_maps: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_documents(path: Path, what: str) -> list[Any]:
    """The YAML documents of a file (``what``: "job", "pool"), empty ones left out; raises InvalidInput."""
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {exc}") from None


def load_document(job_file: Optional[Path]) -> Documents:
    """The job manifest (and any code ConfigMaps beside it) from a YAML file, or the embedded default."""
    if job_file is None:
        from grpo_operator.local.default import default_job

        log.info("running the embedded default job (grpo-local --print-default shows it)")
        return Documents(default_job())
    docs = read_documents(job_file, "job")
    if not all(isinstance(d, dict) for d in docs):
        raise InvalidInput(f"{job_file}: every document must be a YAML mapping")
    config_maps = {str((d.get("metadata") or {}).get("name")): d for d in docs if d.get("kind") == "ConfigMap"}
    jobs = [d for d in docs if d.get("kind") != "ConfigMap"]
    if len(jobs) != 1:
        raise InvalidInput(
            f"{job_file} must hold exactly one GRPOJob document (plus, optionally, the ConfigMaps of its spec.code)"
        )
    return Documents(jobs[0], config_maps)


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


def localize_model(model: LocalModel, volumes: Mapping[str, Path]) -> LocalModel:
    """spec.model (a job's or a pool's) with its directory as an absolute local path; raises InvalidInput
    when it is missing."""
    if model.path is None:
        return model
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
    return model.model_copy(update={"path": str(path), "volume": None})


def localize(spec: GRPOJobSpec, volumes: Mapping[str, Path]) -> GRPOJobSpec:
    """The spec with model and data files as absolute local paths; raises InvalidInput when one is missing."""
    model = localize_model(spec.model, volumes)
    data = spec.data.model_copy(
        update={
            "train": _localize_data(spec.data.train, volumes, "spec.data.train"),
            "validation": _localize_data(spec.data.validation, volumes, "spec.data.validation"),
        }
    )
    return spec.model_copy(update={"model": model, "data": data})


def locate_code(
    spec: GRPOJobSpec, docs: Documents, volumes: Mapping[str, Path], run_dir: Path
) -> tuple[tuple[str, ...], dict[Path, bytes]]:
    """spec.code on this machine: packed ConfigMaps from the job file (their archives land in the run
    directory), volumes from ``--volume``, git and pip fetched into the run directory. Returns the path of
    each source and the archives to write."""
    paths: list[str] = []
    archives: dict[Path, bytes] = {}
    for i, source in enumerate(spec.code):
        where = f"spec.code[{i}]"
        if source.config_map is not None:
            name = source.config_map.name
            manifest = docs.config_maps.get(name)
            if manifest is None:
                raise InvalidInput(
                    f"{where}.configMap: a local run reads ConfigMap {name!r} from the job file; append it "
                    f"(grpo-pack-code DIR --name {name} >> JOB.yaml), or pass the folder itself with --code DIR"
                )
            try:
                archive = archive_of(manifest)
            except PackError as exc:
                raise InvalidInput(f"{where}.configMap: {exc}") from None
            path = run_dir / "code" / f"{name}.tar.gz"
            archives[path] = archive
            paths.append(str(path))
        elif source.git is not None or source.pip is not None:
            paths.append(str(run_dir / "code" / str(i)))  # the runner fetches into it before the trainer starts
        else:
            assert source.volume is not None
            directory = _local("", source.volume.claim_name, volumes, source.volume.sub_path, f"{where}")
            if not directory.is_dir():
                raise InvalidInput(f"{where}.volume: code directory {directory} does not exist")
            paths.append(str(directory))
    return tuple(paths), archives


def locate_data(spec: GRPOJobSpec, docs: Documents, run_dir: Path) -> tuple[dict[str, str], dict[Path, bytes]]:
    """configMap and inline data sets as files in the run directory: split -> path, and the files to write."""
    paths: dict[str, str] = {}
    files: dict[Path, bytes] = {}
    inline = inline_data_files(spec)
    for split in DATA_SPLITS:
        source: Optional[DatasetSource] = getattr(spec.data, split)
        if source is None:
            continue
        if source.inline is not None:
            path = run_dir / inline_data_key(split)
            files[path] = inline[inline_data_key(split)].encode()
        elif source.config_map is not None:
            name, key = source.config_map.name, source.config_map.key
            manifest = docs.config_maps.get(name)
            if manifest is None:
                raise InvalidInput(
                    f"spec.data.{split}.configMap: a local run reads ConfigMap {name!r} from the job file; append it "
                    f"(kubectl create configmap {name} --from-file={key} --dry-run=client -o yaml >> JOB.yaml), "
                    "or use file"
                )
            text = (manifest.get("data") or {}).get(key)
            binary = (manifest.get("binaryData") or {}).get(key)
            if text is None and binary is None:
                raise InvalidInput(f"spec.data.{split}.configMap: ConfigMap {name!r} has no key {key!r}")
            path = run_dir / "data" / name / key
            files[path] = text.encode() if text is not None else base64.b64decode(binary)
        else:
            continue
        paths[split] = str(path)
    return paths, files


def extra_code(options: RunOptions) -> tuple[tuple[str, str], ...]:
    """What a local run can import besides spec.code: ``--code`` folders, the job file's folder, the cwd."""
    found: dict[str, str] = {}
    for directory in options.code_dirs:
        path = directory.expanduser().resolve()
        if not path.is_dir():
            raise InvalidInput(f"--code {directory}: no such directory")
        found.setdefault(str(path), f"--code {directory}")
    if options.job_file is not None:
        found.setdefault(str(options.job_file.expanduser().resolve().parent), "the job file's folder")
    found.setdefault(str(Path.cwd().resolve()), "the working directory")
    return tuple(found.items())


def check_env_refs(spec: GRPOJobSpec) -> None:
    """A local run has no Secrets or ConfigMaps: the variables a pod would read from them (API keys, the
    hub token, the job's valueFrom entries; grpo_operator.resolve.env_refs) come from this environment,
    which both processes inherit."""
    trainer, inference = env_refs(spec)
    for ref in (*trainer, *inference, *code_env_refs(spec), *export_env_refs(spec)):
        if not ref.optional and not os.environ.get(ref.name):
            raise InvalidInput(f"{ref.field}: local runs read this key from ${ref.name}; set it")
    for where, options in (("spec.trainer", spec.trainer), ("spec.inference", spec.inference)):
        if options.env_from:
            log.warning("%s.envFrom: a local run has no Secrets or ConfigMaps; set those variables here", where)


def locate_export_claims(spec: GRPOJobSpec, volumes: Mapping[str, Path]) -> dict[str, str]:
    """spec.export's claim destinations on this machine: the ``--volume`` directory of each claim."""
    found: dict[str, str] = {}
    for i, d in enumerate(spec.export.destinations if spec.export is not None else ()):
        claim = d.claim.claim_name if d.claim is not None else None
        if claim is None or claim in found:
            continue
        if claim not in volumes:
            raise InvalidInput(
                f"spec.export.destinations[{i}].claim.claimName: a local run exports to a directory standing in "
                f"for claim {claim!r}; pass --volume {claim}=DIR"
            )
        root = volumes[claim].expanduser().resolve()
        if not root.is_dir():
            raise InvalidInput(f"--volume {claim}={volumes[claim]}: no such directory")
        found[claim] = str(root)
    return found


def port_in_use(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_vllm_port(port: int) -> None:
    if port_in_use(port, VLLM_HOST):
        raise InvalidInput(f"port {port} is in use; pass --port")


def check_ports(options: RunOptions, *, vllm: bool = True) -> None:
    """The servers' ports are free (``vllm``: also the vLLM port; a pool run checks its server's once)."""
    if options.port == options.trainer_port:
        raise InvalidInput(f"--port and --trainer-port are both {options.port}; pick two ports")
    if vllm:
        check_vllm_port(options.port)
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


# --------------------------------------------------------------------------- an inference pool


@dataclass(frozen=True)
class LocalPool:
    """The GRPOInferencePool of a pool run: its manifest, the folder standing in for its volume (its jobs' runs
    are ``runs/<job>`` in it), its one server and the key of this run (what the operator keeps in its Secret)."""

    name: str
    namespace: str
    doc: dict[str, Any]  # the manifest, judged by the operator's own verdict on a job's pool
    spec: GRPOInferencePoolSpec
    volume: Path
    server: VLLMServerSpec
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def home(self) -> Path:
        """The pool's own files in its volume: its server's log and key guard."""
        return self.volume / POOLS_DIR / self.name


def refuse_pool(spec: GRPOJobSpec) -> None:
    """A job that names a pool runs on it or not at all: never silently with a server of its own (the job
    would then not be what it says, and its adapters would not carry the names the pool's do)."""
    pool = spec.inference.pool
    if pool is not None:
        raise InvalidInput(
            f"spec.inference.pool: {pool!r} names a GRPOInferencePool; run the job on it with the pool's file "
            "(grpo-local --pool POOL.yaml JOB.yaml ...), or remove spec.inference.pool for a vLLM server of "
            "the job's own"
        )


def check_pool(name: str, job: GRPOJob, pool: LocalPool) -> None:
    """The operator's verdict on the job's pool (controller.pooling.pool_verdict): the pool it names, in its
    namespace, of its base model and LoRA rank; raises InvalidInput with the operator's message."""
    namespace = job.metadata.namespace or DEFAULT_NAMESPACE
    ref = job.spec.inference.pool
    if ref is None:
        raise InvalidInput(
            f"job {name!r}: spec.inference.pool is not set; set it to {pool.name!r} to run the job on the pool "
            f"{pool.name!r}, or run the job alone (without --pool)"
        )
    found = pool.doc if (pool.namespace, pool.name) == pool_name(ref, namespace) else None
    verdict = pool_verdict(name, namespace, job.spec, found)
    if verdict is not None and verdict.reason:
        given = f"the pool file is GRPOInferencePool {pool.namespace}/{pool.name}"
        raise InvalidInput(f"job {name!r}: {verdict.reason}: {verdict.message} ({given})")


def load_pool(pool_file: Path, volumes: Mapping[str, Path], port: int) -> LocalPool:
    """A GRPOInferencePool file as a local pool: validated, its volume a ``--volume`` directory (or the working
    directory, as a lone job's runs/<job> is), its server resolved as the operator resolves a pool's pod."""
    docs = read_documents(pool_file, "pool")
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != POOL_KIND:
        raise InvalidInput(f"{pool_file} must hold exactly one {POOL_KIND} document")
    try:
        pool = parse_pool(docs[0])
    except InvalidPool as exc:
        raise InvalidInput(f"invalid pool {pool_file}:\n  " + "\n  ".join(exc.problems)) from None
    name = pool.metadata.name
    if not name:
        raise InvalidInput(f"{pool_file}: metadata.name: a pool needs a name (its jobs name it in spec.inference.pool)")
    spec = pool.spec
    if spec.replicas == 0:
        raise InvalidInput(f"{pool_file}: spec.replicas is 0: the pool would serve nothing; set it to 1")
    if local_gpus():
        raise InvalidInput(
            "a local pool run starts its server and trainers on the CPU, and this machine has GPUs: not built yet; "
            "run the jobs alone (without --pool) or submit them to the cluster"
        )
    if spec.gpus_per_replica:
        log.warning("no GPU here: the pool's vLLM (CPU build) runs on the CPU")
    claim = pool_claim(name, spec)
    volume = (volumes[claim] if claim in volumes else Path.cwd()).expanduser().resolve()
    if not volume.is_dir():
        raise InvalidInput(f"--volume {claim}={volumes[claim]}: no such directory")
    home = volume / POOLS_DIR / name
    target = LocalTarget(
        run_dir=str(home), config_path="", vllm_port=port, trainer_port=0, gpus=0, python=sys.executable
    )
    local_spec = spec.model_copy(update={"model": localize_model(spec.model, volumes)})
    return LocalPool(
        name=name,
        namespace=pool.metadata.namespace or DEFAULT_NAMESPACE,
        doc=docs[0],
        spec=spec,
        volume=volume,
        server=pool_server(local_spec, target, 0),
        secret_env={VLLM_API_KEY_ENV: secrets.token_urlsafe(32)},
    )


@dataclass(frozen=True)
class PoolPlan:
    """A pool run, decided: the pool's one server and the plans of its jobs, in the order given."""

    pool: LocalPool
    jobs: tuple[Plan, ...]


def make_pool_plan(pool_file: Path, jobs: tuple[RunOptions, ...], *, port: int) -> PoolPlan:
    """The pool and each job (``jobs``: their options; their ``volumes`` map the pool's claim too), checked as
    the operator checks them, and every job's slots held at once; starts nothing. Raises InvalidInput."""
    if not jobs:
        raise InvalidInput("--pool: give the job files to run on the pool")
    check_vllm_port(port)
    pool = load_pool(pool_file, jobs[0].volumes, port)
    plans = tuple(make_plan(options, pool=pool) for options in jobs)
    names = [p.name for p in plans]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInput(
            f"jobs {', '.join(twice)} are given twice: a pool's jobs need names of their own (their runs are "
            "runs/<job> and their adapters <job>-policy-vN); rename one (metadata.name)"
        )
    # every job starts at once: a job that would wait for slots in the cluster is refused here
    on_pool = tuple(JobOnPool(p.name, f"{i:06d}", p.slots, finished=False, refused=False) for i, p in enumerate(plans))
    _, waiting = attach([], on_pool, pool.spec.slots)
    if waiting:
        need = sum(p.slots for p in plans)
        raise InvalidInput(
            f"GRPOInferencePool {pool.name!r} has {pool.spec.slots} adapter slots (maxCpuLoras) and its jobs take "
            f"{need}: {', '.join(waiting)} would wait for slots; raise spec.maxCpuLoras to {need} or run fewer jobs"
        )
    return PoolPlan(pool=pool, jobs=plans)


def make_plan(options: RunOptions, *, ports: bool = True, pool: Optional[LocalPool] = None) -> Plan:
    """Validate everything and decide every command; starts nothing. Raises InvalidInput.

    ``ports``: check that the servers' ports are free (not for ``--check``, which starts no server).
    ``pool``: the job runs on this pool (:func:`make_pool_plan`); its run directory is the pool's, not
    ``options.run_dir``.
    """
    docs = load_document(options.job_file)
    try:
        job = parse_job(with_steps(docs.job, options.steps))
    except InvalidJob as exc:
        source = options.job_file or "the default job"
        raise InvalidInput(f"invalid job {source}:\n  " + "\n  ".join(exc.problems)) from None
    name = job_name(job, options.job_file)
    if pool is None:
        refuse_pool(job.spec)
    else:
        check_pool(name, job, pool)
    spec = localize(job.spec, options.volumes)
    check_env_refs(spec)
    if ports:
        check_ports(options, vllm=pool is None)
    if pool is not None:
        run_dir = pool.volume / run_path(name)
    else:
        run_dir = (options.run_dir or Path(run_path(name))).expanduser().resolve()
    code_paths, code_archives = locate_code(spec, docs, options.volumes, run_dir)
    data_files, data_contents = locate_data(spec, docs, run_dir)

    target = LocalTarget(
        run_dir=str(run_dir),
        config_path=str(run_dir / CONFIG_FILE),
        vllm_port=pool.server.port if pool is not None else options.port,
        trainer_port=options.trainer_port,
        gpus=local_gpus(),
        python=sys.executable,
        code_paths=code_paths,
        extra_code=extra_code(options),
        data_files=data_files,
        export_claims=locate_export_claims(spec, options.volumes),
    )
    try:
        run = resolve(name, spec, target)
    except UnplaceableJob as exc:
        raise InvalidInput(str(exc)) from None
    server = pool.server if pool is not None else run.vllm
    assert server.guard_dir is not None  # a LocalTarget's (resolve.LocalTarget.guard_dir)
    return Plan(
        name=name,
        run_dir=run_dir,
        config=run.config,
        vllm=server,
        trainer_argv=run.trainer_argv,
        trainer_env=run.trainer_env,
        # the key guard where the server imports it (a pool's: the same file for each of its jobs)
        job_files={**code_archives, **data_contents, Path(server.guard_dir) / GUARD_FILE: guard_source().encode()},
        code_fetches=run.code_fetches,
        export=resolve_export(name, spec, target, range(len(spec.export.destinations))) if spec.export else None,
        secret_env=dict(pool.secret_env) if pool is not None else {VLLM_API_KEY_ENV: secrets.token_urlsafe(32)},
        slots=job_slots(spec) if pool is not None else 0,
    )

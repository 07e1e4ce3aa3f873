"""``load(job)``: a finished job's optimized program, later, in another session.

The program is rebuilt as the trainer built it -- from the code the job carries (a
compile()d job's ``<job>-code`` ConfigMap, or the ConfigMap in a local job file),
else from its ``importPath`` or built-in name on this machine -- or taken from
``student=``; its trained predictors then call the job's served result, and its
untrusted model is the job's (the served base model when the job named none).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import yaml

from grpo_operator.api import GRPOJobSpec, parse_job
from grpo_operator.client.cluster_backend import ClusterBackend
from grpo_operator.client.errors import GRPOError
from grpo_operator.client.local_backend import LocalBackend, serve
from grpo_operator.client.served import ServedResult, bind_result
from grpo_operator.client.student import UNTRUSTED_PARAM, accepts, analyse
from grpo_operator.code_pack import archive_of
from grpo_operator.local.plan import RunOptions
from grpo_trainer.contract.config import UNTRUSTED_API_KEY_ENV
from grpo_trainer.usercode.install import unpack

log = logging.getLogger(__name__)

Backend = Union[LocalBackend, ClusterBackend]
PLACEHOLDER_MODEL = "openai/unused"  # an LM to build a program with when only its structure is read


def _on_path(archives: list[bytes]) -> None:
    """The job's packed code on this process's import path (first source first, as in the trainer)."""
    work = Path(tempfile.mkdtemp(prefix="grpo-load-"))
    for i, archive in reversed(list(enumerate(archives))):
        path = work / f"code-{i}.tar.gz"
        path.write_bytes(archive)
        folder, _ = unpack(path, work)
        sys.path.insert(0, str(folder))


def _program(spec: GRPOJobSpec, untrusted: Any) -> Any:
    """The job's program, built here as the trainer builds it (its code already on the import path)."""
    if spec.program.import_path is None:
        from grpo_trainer.dspy.registry import resolve_program

        return resolve_program(
            spec.program.builtin or "", untrusted_lm=untrusted, exclude_demos=spec.grpo.exclude_demos
        )
    module, _, attr = spec.program.import_path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise GRPOError(
            f"cannot build the job's program {spec.program.import_path} here ({exc}); pass load(..., student=program)"
        ) from None
    if isinstance(obj, type) or callable(obj):
        return obj(**{UNTRUSTED_PARAM: untrusted}) if accepts(obj, UNTRUSTED_PARAM) else obj()
    return obj.deepcopy()


def _untrusted(spec: GRPOJobSpec, served: ServedResult, secret: Callable[[str, str], Optional[str]]) -> Any:
    """The job's untrusted model as a ``dspy.LM``: its endpoint with its key, or the served base model."""
    import dspy

    endpoint = spec.untrusted_model
    if endpoint is None:
        return served.lm(base=True)
    key = None
    if endpoint.api_key_secret_ref is not None:
        key = secret(endpoint.api_key_secret_ref.name, endpoint.api_key_secret_ref.key)
    key = key or os.environ.get(UNTRUSTED_API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
    kwargs: dict[str, Any] = {"api_key": key} if key else {}
    if endpoint.base_url:
        kwargs["api_base"] = endpoint.base_url
    return dspy.LM(
        f"openai/{endpoint.model}", max_tokens=endpoint.max_tokens, temperature=endpoint.temperature, **kwargs
    )


def load(job: str, namespace: Optional[str] = None, *, student: Any = None, backend: Optional[Backend] = None) -> Any:
    """The optimized program of finished job ``job``: a cluster's (the namespace's, or ``backend``'s), or a
    local run's with ``backend=LocalBackend(workdir=...)``. ``student``: the program to bind (default: rebuilt
    from the job's code). The served result is the program's ``grpo_result``."""
    import dspy

    backend = backend or ClusterBackend(namespace=namespace)
    config_maps: dict[str, Mapping[str, Any]] = {}
    if isinstance(backend, LocalBackend):
        job_file, run_dir = backend.paths(job)
        if not job_file.is_file():
            raise GRPOError(f"no local job {job}: {job_file} does not exist")
        docs = [d for d in yaml.safe_load_all(job_file.read_text(encoding="utf-8")) if d]
        manifest = next(d for d in docs if d.get("kind") == "GRPOJob")
        config_maps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}

        def secret(name: str, key: str) -> Optional[str]:
            return None  # a local run's keys are in the environment
    else:
        jobs = backend.jobs()
        manifest = jobs.get(job)
        for source in (manifest.get("spec") or {}).get("code") or []:
            name = (source.get("configMap") or {}).get("name")
            if name:
                cm = jobs.core.read_namespaced_config_map(name, jobs.namespace)
                config_maps[name] = {"metadata": {"name": name}, "binaryData": cm.binary_data or {}}

        def secret(name: str, key: str) -> Optional[str]:
            try:
                return jobs.secret_value(name, key)
            except GRPOError as exc:
                log.warning("cannot read the untrusted model's key (%s); using the environment's", exc)
                return None

    spec = parse_job(manifest).spec
    if student is None:
        _on_path(
            [
                archive_of(dict(config_maps[s.config_map.name]))
                for s in spec.code
                if s.config_map is not None and s.config_map.name in config_maps
            ]
        )
    shape = student if student is not None else _program(spec, dspy.LM(PLACEHOLDER_MODEL))
    trained = analyse(shape).trained
    if isinstance(backend, LocalBackend):
        job_file, run_dir = backend.paths(job)
        served = serve(job, RunOptions(job_file=job_file, run_dir=run_dir), trained)
    else:
        served = backend.served(jobs, jobs.view(job), trained)
    if student is None:
        student = _program(spec, _untrusted(spec, served, secret))
    program = bind_result(student, served)
    program.grpo_result = served
    return program

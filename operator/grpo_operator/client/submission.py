"""``compile()``'s arguments → the GRPOJob and the objects it references, decided once for both backends.

The cluster backend creates these objects; the local backend writes the same
manifests into one job file for grpo-local (which reads ConfigMaps from the job
file and Secret-backed variables from its environment). So a notebook's job is the
YAML a platform team would apply, and ``Submission.yaml()`` shows it.

Pure: nothing here talks to a cluster or starts a process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.api.spec import INLINE_MAX_BYTES
from grpo_operator.client.code_bundle import CodeBundle
from grpo_operator.client.errors import BundleError, JobRejected
from grpo_operator.client.student import UNTRUSTED_PARAM, Student, external_endpoint, model_name
from grpo_operator.code_pack import MANIFEST_MARGIN, OBJECT_LIMIT, PackError
from grpo_operator.code_pack import config_map as code_config_map
from grpo_trainer.contract.config import UNTRUSTED_API_KEY_ENV

STUDENT_MODULE = "grpo_student"  # the generated factory of the student (its class and its state)
STUDENT_STATE_FILE = "grpo_student_state.json"
UNTRUSTED_KEY = "untrusted-api-key"  # the key of the job's client Secret holding the untrusted model's key
CREATED_BY_LABEL = "grpo.dev/created-by"
# Environment variables the LM providers' clients read their keys from (litellm's names).
PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
}


@dataclass(frozen=True)
class Submission:
    """A job and what it references: code and data ConfigMaps, and one Secret of keys."""

    name: str
    job: dict[str, Any]
    config_maps: list[dict[str, Any]]
    secret_data: dict[str, str]  # key -> value of Secret ``<name>-keys`` (a local run: environment variables)
    secret_env: dict[str, str]  # environment variable -> key of that Secret, as the trainer reads them
    student: Student
    installed: dict[str, str] = field(default_factory=dict)  # modules the trainer image must provide

    @property
    def secret_name(self) -> str:
        return keys_secret_name(self.name)

    def yaml(self) -> str:
        """The job and its ConfigMaps as one multi-document YAML (what ``kubectl apply -f`` takes)."""
        return yaml.safe_dump_all([self.job, *self.config_maps], sort_keys=False)

    def local_env(self) -> dict[str, str]:
        """The Secret's values as the variables a local run reads them from."""
        return {var: self.secret_data[key] for var, key in self.secret_env.items()}


def keys_secret_name(job: str) -> str:
    return f"{job}-keys"


def code_config_map_name(job: str) -> str:
    return f"{job}-code"


def data_config_map_name(job: str) -> str:
    return f"{job}-data"


def job_name(program_class: type, spec: Mapping[str, Any]) -> str:
    """A stable name for the same program and configuration: a re-run cell finds its job (and resumes it)."""
    slug = re.sub(r"[^a-z0-9]+", "-", program_class.__name__.lower()).strip("-")[:40] or "program"
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


# --------------------------------------------------------------------------- data


def _rows(examples: Sequence[Any], split: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Examples as JSON rows and their input fields (every example must have the same inputs)."""
    if not examples:
        raise BundleError(f"the {split} set is empty")
    rows, inputs = [], None
    for i, example in enumerate(examples):
        try:
            keys = sorted(example.inputs().keys())
            row = example.toDict()
        except AttributeError:
            raise BundleError(
                f"{split}[{i}] is a {type(example).__name__}, not a dspy.Example; build examples with "
                "dspy.Example(...).with_inputs(...)"
            ) from None
        if not keys:
            raise BundleError(f"{split}[{i}] has no input fields; mark them with .with_inputs(...)")
        if inputs is None:
            inputs = keys
        elif keys != inputs:
            raise BundleError(f"{split}[{i}] has inputs {keys}, the examples before it {inputs}; use one set of inputs")
        try:
            json.dumps(row)
        except TypeError as exc:
            raise BundleError(
                f"{split}[{i}] has a value JSON cannot hold ({exc}); give plain strings and numbers"
            ) from None
        rows.append(row)
    assert inputs is not None
    return rows, inputs


def _dataset(
    name: str, split: str, rows: list[dict[str, Any]], inputs: list[str], config_maps: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """A split as ``inline`` rows when small, else as a file in the job's data ConfigMap."""
    size = len(json.dumps(rows, separators=(",", ":")).encode())
    if size <= INLINE_MAX_BYTES:
        return {"inline": {"rows": rows}, "inputFields": inputs}
    key = f"{split}.jsonl"
    config_maps.setdefault(data_config_map_name(name), {})[key] = "".join(json.dumps(r) + "\n" for r in rows)
    return {"configMap": {"name": data_config_map_name(name), "key": key, "format": "jsonl"}, "inputFields": inputs}


def _data_config_map(name: str, files: dict[str, str]) -> dict[str, Any]:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": data_config_map_name(name)},
        "data": files,
    }
    size = sum(len(v.encode()) for v in files.values()) + MANIFEST_MARGIN
    if size > OBJECT_LIMIT:
        raise BundleError(
            f"the training and validation sets take {size // 1024} KiB; a job carries at most "
            f"{OBJECT_LIMIT // 1024} KiB of data itself. Put larger sets on a volume, a URL or the hub and submit "
            "the job as YAML (spec.data.train.file / url / hub)"
        )
    return manifest


# --------------------------------------------------------------------------- LMs


def _model(model: Any, student: Student) -> dict[str, Any]:
    """``spec.model``: as given (a hub id, a local directory, or the field itself), else the student's LM."""
    if isinstance(model, Mapping):
        return dict(model)
    if model is None:
        if student.local_lm is None:
            raise BundleError(
                "no model to train: bind the predictors to the local model (student.set_lm(dspy.LM('openai/"
                "Qwen/Qwen2.5-1.5B-Instruct'))) or pass GRPO(model=...)"
            )
        model = model_name(student.local_lm)
    text = str(model)
    if Path(text).expanduser().is_dir():
        return {"path": str(Path(text).expanduser().resolve())}
    return {"name": text}


def _provider_keys(main_names: Sequence[str], main_ns: Mapping[str, Any]) -> dict[str, str]:
    """The API keys the LMs in the shipped notebook code read from the environment: variable -> value."""
    import dspy

    keys: dict[str, str] = {}
    for name in main_names:
        lm = main_ns.get(name)
        if not isinstance(lm, dspy.BaseLM):
            continue
        provider = str(getattr(lm, "model", "")).partition("/")[0]
        var = PROVIDER_KEY_ENV.get(provider)
        if var and os.environ.get(var) and not (getattr(lm, "kwargs", {}) or {}).get("api_base"):
            keys[var] = os.environ[var]
    return keys


# --------------------------------------------------------------------------- the job


def student_factory_source(student: Student, program_path: str) -> str:
    """The module the trainer builds the student from: its class, then its state as compile() got it."""
    module, _, attr = program_path.partition(":")
    args = f"{UNTRUSTED_PARAM}={UNTRUSTED_PARAM}" if student.takes_untrusted else ""
    return (
        '"""Generated by grpo compile(): the student program as compile() was given it (class and DSPy state)."""\n\n'
        "import json\nfrom pathlib import Path\n\n"
        "from grpo_trainer.dspy.state import load_state_keeping_lms\n"
        f"from {module} import {attr.split('.')[0]} as _root\n\n"
        f"_Program = _root{''.join('.' + p for p in attr.split('.')[1:])}\n"
        f"_STATE = Path(__file__).with_name({STUDENT_STATE_FILE!r})\n\n\n"
        f"def student({UNTRUSTED_PARAM}=None):\n"
        f"    program = _Program({args})\n"
        '    return load_state_keeping_lms(program, json.loads(_STATE.read_text(encoding="utf-8")))\n'
    )


def build(
    *,
    student: Student,
    bundle: CodeBundle,
    paths: Mapping[str, str],
    trainset: Sequence[Any],
    valset: Optional[Sequence[Any]],
    grpo: Mapping[str, Any],
    train_kwargs: Mapping[str, Any],
    model: Any,
    name: Optional[str],
    spec_overrides: Mapping[str, Any],
    main_ns: Mapping[str, Any],
) -> Submission:
    """The job for ``compile()``; validated as the API server and the operator will (raises JobRejected)."""
    (bundle.root / f"{STUDENT_MODULE}.py").write_text(
        student_factory_source(student, paths["program"]), encoding="utf-8"
    )
    (bundle.root / STUDENT_STATE_FILE).write_text(json.dumps(student.state, indent=1), encoding="utf-8")

    secret_data: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    spec: dict[str, Any] = {
        "program": {"importPath": f"{STUDENT_MODULE}:student"},
        "metric": {"importPath": paths["metric"]},
        "model": _model(model, student),
        "grpo": dict(grpo),
        "trainKwargs": dict(train_kwargs),
    }
    if student.untrusted_lm is not None:
        endpoint = external_endpoint(student.untrusted_lm, "untrusted")
        untrusted: dict[str, Any] = {"model": endpoint.model}
        if endpoint.base_url:
            untrusted["baseUrl"] = endpoint.base_url
        if endpoint.temperature is not None:
            untrusted["temperature"] = endpoint.temperature
        if endpoint.max_tokens is not None:
            untrusted["maxTokens"] = endpoint.max_tokens
        if endpoint.api_key:
            secret_data[UNTRUSTED_KEY] = endpoint.api_key
            secret_env[UNTRUSTED_API_KEY_ENV] = UNTRUSTED_KEY
            untrusted["apiKeySecretRef"] = {"name": "", "key": UNTRUSTED_KEY}  # named below, with the job
        spec["untrustedModel"] = untrusted
    provider = _provider_keys(bundle.main_names, main_ns)
    secret_data.update(provider)
    secret_env.update({var: var for var in provider})

    splits = {"train": _rows(trainset, "trainset")}
    if valset is not None:
        splits["validation"] = _rows(valset, "valset")
    # The name: given, or the same for the same program, configuration and data (keys left out).
    job_name_ = name or job_name(student.program_class, {**spec, "state": student.state, "data": splits})
    if "apiKeySecretRef" in spec.get("untrustedModel", {}):
        spec["untrustedModel"]["apiKeySecretRef"]["name"] = keys_secret_name(job_name_)
    if provider:
        spec["trainer"] = {
            "env": [
                {"name": var, "valueFrom": {"secretKeyRef": {"name": keys_secret_name(job_name_), "key": var}}}
                for var in sorted(provider)
            ]
        }

    data_files: dict[str, dict[str, str]] = {}
    spec["data"] = {split: _dataset(job_name_, split, *rows, data_files) for split, rows in splits.items()}
    spec["code"] = [{"configMap": {"name": code_config_map_name(job_name_)}}]
    spec = _merge(spec, spec_overrides)

    try:
        code = code_config_map(code_config_map_name(job_name_), bundle.root)
    except PackError as exc:
        raise BundleError(f"the program's code: {exc}") from None
    config_maps = [code] + [_data_config_map(job_name_, files) for files in data_files.values()]
    job = {
        "apiVersion": "grpo.dev/v1alpha1",
        "kind": "GRPOJob",
        "metadata": {"name": job_name_, "labels": {CREATED_BY_LABEL: "compile"}},
        "spec": spec,
    }
    try:
        parse_job(job)
    except InvalidJob as exc:
        raise JobRejected("the job compile() built is invalid:\n  " + "\n  ".join(exc.problems), exc.problems) from None
    return Submission(
        name=job_name_,
        job=job,
        config_maps=config_maps,
        secret_data=secret_data,
        secret_env=secret_env,
        student=student,
        installed=dict(bundle.installed),
    )


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, recursively for mappings (a backend's pod options over the job's)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        elif isinstance(value, list) and isinstance(out.get(key), list) and key == "env":
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out

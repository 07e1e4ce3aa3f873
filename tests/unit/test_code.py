"""What a job brings besides its spec, in pods and in local runs alike: its code (spec.code: packed
ConfigMaps, volumes) on the trainer's import path, and small data sets inline or in a ConfigMap."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.children import Job, config_map, referenced_secrets, trainer_pod, user_claims, user_config_maps
from grpo_operator.code_pack import CODE_LABEL, SHA_ANNOTATION, PackError, archive_of, pack
from grpo_operator.code_pack import config_map as code_config_map
from grpo_operator.code_pack import main as pack_main
from grpo_operator.local.default import default_job
from grpo_operator.local.plan import InvalidInput, RunOptions, make_plan
from grpo_operator.settings import OperatorSettings
from support.jobdocs import ROOT, load_example

OWN = ROOT / "examples" / "own_program"
SETTINGS = OperatorSettings()
CODE = [{"configMap": {"name": "topics-code"}}, {"volume": {"claimName": "team-code", "subPath": "src"}}]


def seed_job() -> Job:
    doc = load_example()
    doc["spec"]["code"] = CODE
    doc["spec"]["program"] = {"importPath": "topics.program:Topic"}
    return Job("papillon", "ns", "uid", parse_job(doc).spec)


def test_pods_mount_each_source_read_only_where_the_config_points_the_trainer() -> None:
    job = seed_job()
    pod = trainer_pod(job, SETTINGS, 0)
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["/code/0"] == {"name": "code-0", "mountPath": "/code/0", "readOnly": True}
    assert volumes["code-0"] == {"name": "code-0", "configMap": {"name": "topics-code"}}
    assert mounts["/code/1"]["subPath"] == "src" and mounts["/code/1"]["readOnly"] is True
    assert volumes["code-1"]["persistentVolumeClaim"] == {"claimName": "team-code", "readOnly": True}
    code = json.loads(config_map(job, SETTINGS)["data"]["config.json"])["code"]
    assert code == [
        {
            "kind": "archive",
            "path": "/code/0/code.tar.gz",
            "origin": "spec.code[0].configMap 'topics-code'",
            "fetched": None,
        },
        {"kind": "dir", "path": "/code/1", "origin": "spec.code[1].volume 'team-code'", "fetched": None},
    ]
    # the operator checks what the pod cannot start without
    assert user_config_maps(job) == [("topics-code", "spec.code[0]")] and "team-code" in user_claims(job)


def test_git_and_pip_sources_are_fetched_by_restricted_init_containers_with_their_secrets_only() -> None:
    doc = load_example()
    doc["spec"]["code"] = [
        {
            "git": {
                "url": "https://git.example/team/task.git",
                "ref": "v2",
                "subPath": "src",
                "tokenSecretRef": {"name": "git-token", "key": "token"},
            }
        },
        {"pip": {"requirements": ["topic-words==1.0"], "indexUrlSecretRef": {"name": "index", "key": "url"}}},
    ]
    job = Job("papillon", "ns", "uid", parse_job(doc).spec)
    pod = trainer_pod(job, SETTINGS, 0)
    git, pip = pod["spec"]["initContainers"]
    assert git["command"][-6:] == [
        "--url",
        "https://git.example/team/task.git",
        "--dest",
        "/code/0/repo",
        "--ref",
        "v2",
    ]
    assert pip["command"][3:] == ["pip", "--dest", "/code/1", "topic-words==1.0"]
    assert git["image"] == pod["spec"]["containers"][0]["image"]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for c in (git, pip) for e in c["env"] if "valueFrom" in e}
    assert secret_env == {
        "GRPO_GIT_TOKEN": {"name": "git-token", "key": "token"},
        "PIP_INDEX_URL": {"name": "index", "key": "url"},
    }
    trainer_env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert not trainer_env & {"GRPO_GIT_TOKEN", "PIP_INDEX_URL"}  # the trainer never holds them
    for c in (git, pip):
        assert (
            c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["allowPrivilegeEscalation"] is False
        )
    mounts = {m["mountPath"]: m for m in git["volumeMounts"]}
    assert "readOnly" not in mounts["/code/0"] and "/code/1" not in mounts  # it writes its own folder only
    main = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert main["/code/0"]["readOnly"] and main["/code/1"]["readOnly"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["code-0"] == {"name": "code-0", "emptyDir": {}}
    code = json.loads(config_map(job, SETTINGS)["data"]["config.json"])["code"]
    assert [(c["path"], c["fetched"]) for c in code] == [("/code/0/repo/src", "/code/0/repo"), ("/code/1", "/code/1")]
    assert {("git-token", "token"), ("index", "url")} <= set(referenced_secrets(job))


def test_packing_is_reproducible_skips_caches_and_round_trips(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    (tree / "pkg" / "__pycache__").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_text("")
    (tree / "pkg" / "mod.py").write_text("X = 1\n")
    (tree / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    first = pack(tree)
    (tree / "pkg" / "mod.py").touch()  # a new mtime changes nothing
    assert pack(tree) == first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["pkg/__init__.py", "pkg/mod.py"]
    manifest = code_config_map("my-code", tree, namespace="team-a")
    assert manifest["metadata"]["labels"] == {CODE_LABEL: "packed"}
    assert archive_of(manifest) == first and len(manifest["metadata"]["annotations"][SHA_ANNOTATION]) == 64
    assert set(manifest) == {"apiVersion", "kind", "metadata", "binaryData"}


def test_a_tree_beyond_one_object_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "weights.bin").write_bytes(__import__("os").urandom(900 * 1024))  # incompressible
    with pytest.raises(PackError, match=r"at most 1024 KiB.*--exclude.*spec.code\[\]\.volume"):
        code_config_map("big", big)
    assert pack_main([str(big), "--name", "big", "--exclude", "weights.bin"]) == 2  # then nothing is left


def _local_job(tmp_path: Path, code: list[dict], extra_docs: tuple[dict, ...] = ()) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    doc = default_job(model)
    doc["spec"].update(
        program={"importPath": "topics.program:Topic"},
        metric={"importPath": "topics.metric:topic_match"},
        code=code,
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump_all([doc, *extra_docs], sort_keys=False))
    return job


def test_a_local_run_reads_packed_code_from_the_job_file_and_volumes_from_directories(tmp_path: Path) -> None:
    packed = code_config_map("topics-code", OWN, excludes=("data", "__pycache__"))
    job = _local_job(tmp_path, CODE, (packed,))
    team = tmp_path / "team"
    (team / "src").mkdir(parents=True)
    plan = make_plan(
        RunOptions(job_file=job, run_dir=tmp_path / "run", volumes={"team-code": team}, code_dirs=(OWN,)),
        ports=False,
    )
    archive = tmp_path / "run" / "code" / "topics-code.tar.gz"
    assert plan.job_files[archive] == base64.b64decode(packed["binaryData"]["code.tar.gz"])
    assert set(plan.job_files) == {archive, tmp_path / "run" / "vllm-guard" / "grpo_vllm_guard.py"}  # + vLLM's guard
    assert [(c.kind, c.path, c.origin) for c in plan.config.code] == [
        ("archive", str(archive), "spec.code[0].configMap 'topics-code'"),
        ("dir", str(team / "src"), "spec.code[1].volume 'team-code'"),
        ("dir", str(OWN), f"--code {OWN}"),
        ("dir", str(tmp_path), "the job file's folder"),
        ("dir", str(Path.cwd().resolve()), "the working directory"),
    ]


def test_a_local_run_without_the_packed_config_map_says_how_to_add_it(tmp_path: Path) -> None:
    job = _local_job(tmp_path, CODE[:1])
    with pytest.raises(InvalidInput, match=r"spec.code\[0\].configMap.*grpo-pack-code DIR --name topics-code >> JOB"):
        make_plan(RunOptions(job_file=job, run_dir=tmp_path / "run"), ports=False)
    job = _local_job(tmp_path, CODE[1:])
    with pytest.raises(InvalidInput, match=r"spec.code\[1\]|pass --volume team-code=DIR"):
        make_plan(RunOptions(job_file=job, run_dir=tmp_path / "run"), ports=False)


# --------------------------------------------------------------------------- data without a claim

ROWS = [{"text": f"row {i}", "topic": "sport"} for i in range(3)]


def test_inline_and_config_map_data_reach_the_trainer_pod_as_files() -> None:
    doc = load_example()
    doc["spec"]["data"] = {
        "train": {"inline": {"rows": ROWS}, "fields": {"text": "text", "topic": "topic"}},
        "validation": {"configMap": {"name": "topics-val", "key": "val.jsonl"}},
    }
    job = Job("papillon", "ns", "uid", parse_job(doc).spec)
    cm = config_map(job, SETTINGS)
    assert cm["data"]["data-train.jsonl"].splitlines() == [json.dumps(r) for r in ROWS]
    config = json.loads(cm["data"]["config.json"])
    assert config["train_data"]["path"] == "/etc/grpo/data-train.jsonl" and config["train_data"]["format"] == "jsonl"
    assert config["val_data"]["path"] == "/datasets/configmap-topics-val/val.jsonl"
    pod = trainer_pod(job, SETTINGS, 0)
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/datasets/configmap-topics-val"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/datasets/configmap-topics-val"]["name"]]["configMap"] == {"name": "topics-val"}
    assert user_config_maps(job) == [("topics-val", "spec.data.validation")]


def test_inline_data_beyond_what_fits_is_refused_naming_the_alternatives() -> None:
    doc = load_example()
    doc["spec"]["data"]["train"] = {"inline": {"rows": [{"text": "x" * 1000} for _ in range(300)]}}
    with pytest.raises(InvalidJob) as info:
        parse_job(doc)
    text = "\n".join(info.value.problems)
    assert "spec.data.train.inline.rows" in text and "at most 256 KiB" in text and "configMap" in text, text


def test_a_local_run_writes_inline_and_config_map_data_where_the_trainer_reads_them(tmp_path: Path) -> None:
    val = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "topics-val"}, "data": {"val.jsonl": "{}\n"}}
    job = _local_job(tmp_path, [], (val,))
    doc = yaml.safe_load_all(job.read_text())
    first = next(doc)
    first["spec"]["data"] = {
        "train": {"inline": {"rows": ROWS}},
        "validation": {"configMap": {"name": "topics-val", "key": "val.jsonl"}},
    }
    job.write_text(yaml.safe_dump_all([first, val], sort_keys=False))
    run = tmp_path / "run"
    plan = make_plan(RunOptions(job_file=job, run_dir=run), ports=False)
    assert plan.config.train_data.path == str(run / "data-train.jsonl")
    assert plan.config.val_data is not None and plan.config.val_data.path == str(
        run / "data" / "topics-val" / "val.jsonl"
    )
    assert plan.job_files[run / "data" / "topics-val" / "val.jsonl"] == b"{}\n"
    assert plan.job_files[run / "data-train.jsonl"].decode().splitlines() == [json.dumps(r) for r in ROWS]
    job.write_text(yaml.safe_dump(first, sort_keys=False))  # the ConfigMap left out
    with pytest.raises(InvalidInput, match=r"spec.data.validation.configMap.*kubectl create configmap topics-val"):
        make_plan(RunOptions(job_file=job, run_dir=run), ports=False)

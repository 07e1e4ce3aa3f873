"""spec.export: the API, the one resolution of an export for a pod and for grpo-local, and the export pod."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.children import Job, export_pod
from grpo_operator.local.plan import InvalidInput, RunOptions, make_plan
from grpo_operator.resolve import ClusterTarget, LocalTarget, destination_hash, export_spec_hash, resolve_export
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.export import (
    ERROR_CHARS,
    REPORT_BYTES,
    ClaimTarget,
    Exported,
    ExportReport,
    HubTarget,
    S3Target,
)
from support.jobdocs import load_example

SETTINGS = OperatorSettings()

EXPORT = {
    "destinations": [
        {"claim": {"claimName": "models"}},
        {"hub": {"repoId": "team-a/papillon", "tokenSecretRef": {"name": "hf-write"}}, "merged": True},
        {
            "s3": {
                "bucket": "ml-models",
                "prefix": "grpo/papillon",
                "endpointUrl": "http://minio.storage:9000",
                "addressingStyle": "path",
                "credentialsSecretRef": {"name": "minio"},
            }
        },
    ]
}


def doc_with(export: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    doc = load_example()
    doc["spec"]["export"] = copy.deepcopy(export if export is not None else EXPORT)
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def job_of(doc: dict[str, Any]) -> Job:
    return Job(doc["metadata"]["name"], "team-a", "uid-1", parse_job(doc).spec)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def argv_plan(pod: dict[str, Any]) -> dict[str, Any]:
    argv = container(pod)["command"]
    return json.loads(argv[argv.index("--plan") + 1])


# --------------------------------------------------------------------------- the API


def test_an_export_parses_with_safe_defaults_and_hashes_per_destination() -> None:
    spec = parse_job(doc_with()).spec
    claim, hub, s3 = spec.export.destinations
    assert hub.hub.private is True and hub.hub.token_secret_ref.key == "token"  # private unless asked otherwise
    assert s3.s3.credentials_secret_ref.access_key_id_key == "AWS_ACCESS_KEY_ID"
    assert spec.export.backoff_limit == 2 and not claim.merged
    # one destination changed: the others keep their hash (they are not exported again)
    changed = parse_job(
        doc_with({"destinations": [EXPORT["destinations"][0], {**EXPORT["destinations"][1], "merged": False}]})
    ).spec
    assert destination_hash(changed.export.destinations[0]) == destination_hash(claim)
    assert destination_hash(changed.export.destinations[1]) != destination_hash(hub)
    assert export_spec_hash(changed.export) != export_spec_hash(spec.export)


def test_only_the_jobs_own_volume_is_refused_as_a_destination() -> None:
    """(tests/data/invalid_jobs.yaml has the refusals: <job>-run and storage.existingClaim.)"""
    doc = doc_with({"destinations": [{"claim": {"claimName": "papillon-run"}}]})
    with pytest.raises(InvalidJob, match=r"spec.export.destinations: a claim destination may not be the job's own"):
        parse_job(doc)
    doc["metadata"]["name"] = "other"  # papillon-run is then another job's (kept) volume: a claim like any
    assert parse_job(doc).spec.export.destinations[0].claim.claim_name == "papillon-run"


def test_no_credential_is_accepted_inline() -> None:
    with pytest.raises(InvalidJob, match="tokenSecretRef"):
        parse_job(doc_with({"destinations": [{"hub": {"repoId": "a/b", "token": "hf_abc"}}]}))
    with pytest.raises(InvalidJob, match="endpointUrl: credentials in endpointUrl"):
        s3 = {"bucket": "b12", "endpointUrl": "https://key:secret@minio:9000", "credentialsSecretRef": {"name": "m"}}
        parse_job(doc_with({"destinations": [{"s3": s3}]}))


# --------------------------------------------------------------------------- the resolution


def test_a_pod_and_grpo_local_export_alike_except_where_things_are(tmp_path: Path) -> None:
    spec = parse_job(doc_with()).spec
    cluster = resolve_export("papillon", spec, ClusterTarget("papillon-vllm", 8000, 9400, "papillon-vllm-key"), [0, 1, 2])
    local_target = LocalTarget(
        run_dir=str(tmp_path / "run"), config_path="c.json", vllm_port=8000, trainer_port=9400, gpus=0,
        python="/venv/bin/python", export_claims={"models": str(tmp_path / "models")},
    )  # fmt: skip
    local = resolve_export("papillon", spec, local_target, [0, 1, 2])
    assert cluster.argv[1:3] == local.argv[1:3] == ["-m", "grpo_trainer.export.main"]
    claim, hub, s3 = cluster.plan.targets
    assert cluster.plan.result_dir == "/mnt/grpo/result" and local.plan.result_dir == f"{tmp_path}/run/result"
    assert claim.to == ClaimTarget(
        dir="/export/models/papillon", shown="models:/papillon"
    )  # default path: the job's name
    assert local.plan.targets[0].to.dir == f"{tmp_path}/models/papillon"
    assert isinstance(hub.to, HubTarget) and hub.merged and hub.to.token_env == "GRPO_EXPORT_1_HF_TOKEN"
    assert isinstance(s3.to, S3Target) and (s3.to.prefix, s3.to.addressing_style) == ("grpo/papillon", "path")
    # every field but where things are is the same
    for a, b in zip(cluster.plan.targets[1:], local.plan.targets[1:]):
        assert a == b
    assert cluster.env_refs == local.env_refs and cluster.merged and cluster.claims == ("models",)
    assert [(r.name, r.source, r.key) for r in cluster.env_refs] == [
        ("GRPO_EXPORT_1_HF_TOKEN", "hf-write", "token"),
        ("GRPO_EXPORT_2_AWS_ACCESS_KEY_ID", "minio", "AWS_ACCESS_KEY_ID"),
        ("GRPO_EXPORT_2_AWS_SECRET_ACCESS_KEY", "minio", "AWS_SECRET_ACCESS_KEY"),
    ]
    # only the destinations asked for: no merge, no hub token
    only_s3 = resolve_export("papillon", spec, ClusterTarget("papillon-vllm", 8000, 9400, "papillon-vllm-key"), [2])
    assert [t.index for t in only_s3.plan.targets] == [2] and not only_s3.merged and only_s3.claims == ()
    assert {r.name for r in only_s3.env_refs} == {
        "GRPO_EXPORT_2_AWS_ACCESS_KEY_ID",
        "GRPO_EXPORT_2_AWS_SECRET_ACCESS_KEY",
    }


def test_grpo_local_maps_claims_to_volumes_and_reads_credentials_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grpo_operator.local.default import default_job

    doc = default_job()
    doc["metadata"] = {"name": "tiny"}
    doc["spec"]["export"] = {"destinations": [{"claim": {"claimName": "exports", "path": "runs/tiny"}}]}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(doc))
    options = RunOptions(job_file=job_file, run_dir=tmp_path / "run", port=18000, trainer_port=0)
    with pytest.raises(InvalidInput, match=r"spec.export.destinations\[0\].claim.claimName: .*--volume exports=DIR"):
        make_plan(options, ports=False)
    (tmp_path / "out").mkdir()
    plan = make_plan(RunOptions(**{**options.__dict__, "volumes": {"exports": tmp_path / "out"}}), ports=False)
    assert plan.export is not None and plan.export.plan.targets[0].to.dir == f"{tmp_path}/out/runs/tiny"

    doc["spec"]["export"] = {"destinations": [{"hub": {"repoId": "me/tiny", "tokenSecretRef": {"name": "hf"}}}]}
    job_file.write_text(json.dumps(doc))
    monkeypatch.delenv("GRPO_EXPORT_0_HF_TOKEN", raising=False)
    with pytest.raises(
        InvalidInput, match=r"hub.tokenSecretRef: local runs read this key from \$GRPO_EXPORT_0_HF_TOKEN"
    ):
        make_plan(options, ports=False)


# --------------------------------------------------------------------------- the pod


def test_the_export_pod_is_restricted_reads_the_job_volume_and_gets_credentials_from_secrets_only() -> None:
    job = job_of(
        doc_with(
            queueName="team-queue", trainer={"image": "reg.example/trainer:1", "imagePullSecrets": [{"name": "reg"}]}
        )
    )
    pod = export_pod(job, SETTINGS, 3, [0, 1, 2], join_inference=False)
    spec, c = pod["spec"], container(pod)
    assert (
        pod["metadata"]["name"] == "papillon-export-3"
        and pod["metadata"]["labels"]["app.kubernetes.io/component"] == "export"
    )
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert c["image"] == "reg.example/trainer:1" and spec["imagePullSecrets"] == [{"name": "reg"}]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/mnt/grpo"]["readOnly"] is True  # it only reads result/ and the hub cache
    assert not mounts["/export/models"].get("readOnly") and not mounts["/tmp"].get("readOnly")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/export/models"]["name"]]["persistentVolumeClaim"] == {"claimName": "models"}
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim"}
    env = {e["name"]: e for e in c["env"]}
    assert env["GRPO_EXPORT_1_HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-write", "key": "token"}}
    assert env["GRPO_EXPORT_2_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "minio"
    assert env["HF_HUB_CACHE"]["value"] == "/mnt/grpo/.cache/huggingface/hub" and env["HF_HOME"]["value"].startswith(
        "/home"
    )
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # a merge needs memory for the whole model; without one the pod is small
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    small = export_pod(job, SETTINGS, 4, [0], join_inference=False)
    assert container(small)["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}
    assert [t["index"] for t in argv_plan(small)["targets"]] == [0] and "/export/models" in str(small)
    # not one of the pair Kueue admits, and on no node in particular
    assert "schedulingGates" not in spec and "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]
    assert "affinity" not in spec


def test_the_export_pod_joins_the_serving_vllm_pod_on_a_read_write_once_volume() -> None:
    job = job_of(
        doc_with(inference={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    )
    pod = export_pod(job, SETTINGS, 0, [0], join_inference=True)
    (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == {
        "grpo.dev/job": "papillon",
        "app.kubernetes.io/component": "inference",
    }
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    rwx = job_of(doc_with(storage={"accessMode": "ReadWriteMany"}))
    assert "affinity" not in export_pod(rwx, SETTINGS, 0, [0], join_inference=True)["spec"]
    resources = {"requests": {"memory": "24Gi"}}
    bigger = job_of(doc_with({**EXPORT, "resources": resources}))
    assert container(export_pod(bigger, SETTINGS, 0, [1], join_inference=False))["resources"]["limits"] == {
        "memory": "24Gi"
    }


def test_the_report_fits_a_termination_message_whatever_the_errors() -> None:
    long = "boto3 said: " + "x" * 5000
    failed = [Exported(index=i, name=f"s3://b/{i}", spec_hash="h", merged=False, error=long) for i in range(8)]
    report = ExportReport(job="papillon", step=7, adapter=True, destinations=failed)
    text = report.termination_message()
    assert len(text.encode()) <= REPORT_BYTES
    back = ExportReport.parse(text)
    assert back is not None and [d.index for d in back.destinations] == list(range(8))
    assert all(d.error and d.error.startswith("boto3 said") and len(d.error) <= ERROR_CHARS for d in back.destinations)
    assert ExportReport.parse("Traceback (most recent call last): ...") is None

"""The export program (grpo_trainer.export) takes a real result/ -- a PEFT adapter trained on the
embedded tiny model, the program state, the card -- to a claim folder, an S3-compatible bucket (moto's
server, over HTTP) and a hub repository (tests/support/fakehub.py: a fake of the hub's write API, as
none can run here), and merges the adapter into the base model's weights so that the merged model
loads with transformers alone and gives the adapter's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_trainer.contract.export import (
    ClaimTarget,
    ExportPlan,
    ExportReport,
    ExportTarget,
    HubTarget,
    S3Target,
)
from grpo_trainer.contract.progress import Progress
from grpo_trainer.embedded.tinymodel import ensure_tiny_model
from grpo_trainer.export.main import run_export
from grpo_trainer.run.result import RESULT_DIR, write_result
from grpo_trainer.vllm.adapters import AdapterStore
from support.checkout import checkout_env
from support.fakehub import fake_hub
from support.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, s3_server

HUB_TOKEN = "hf_export_test_write_token_123456"
ENV = {
    "GRPO_EXPORT_1_AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "GRPO_EXPORT_1_AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "GRPO_EXPORT_2_HF_TOKEN": HUB_TOKEN,
    "GRPO_EXPORT_3_HF_TOKEN": "hf_a_token_the_hub_does_not_know",
}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="module")
def run_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose result/ holds a trained adapter (step 2), as the trainer writes it."""
    run = tmp_path_factory.mktemp("run")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    store = AdapterStore(run, base_model_name=str(model_dir))
    store.save(model.eval(), 2)
    progress = Progress(job="topics", max_steps=3, step=3, baseline_val_score=0.5, val_scores={0: 0.5, 2: 0.7})
    write_result(
        run, job="topics", base_model=str(model_dir), adapter=store.set_best(2, 0.7), base_score=0.5,
        program=dspy.Predict("question -> answer"), progress=progress, finished=True,
    )  # fmt: skip
    return run


def target(index: int, name: str, to, merged: bool = False) -> ExportTarget:  # noqa: ANN001
    return ExportTarget(index=index, name=name, spec_hash=f"hash{index}", merged=merged, to=to)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_result_goes_to_a_claim_a_bucket_and_a_hub_repo_and_a_failing_destination_fails_alone(
    run_dir: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # scripts/test.sh runs offline
    result = files(run_dir / RESULT_DIR)
    assert {"adapter/adapter_model.safetensors", "program.json", "result.json", "README.md"} <= set(result)
    claim = tmp_path / "exports"
    with s3_server("models") as s3, fake_hub(HUB_TOKEN) as hub:
        s3_to = S3Target(
            bucket="models", prefix="team-a/topics", endpoint_url=s3.endpoint_url, region=REGION,
            addressing_style="path", access_key_id_env="GRPO_EXPORT_1_AWS_ACCESS_KEY_ID",
            secret_access_key_env="GRPO_EXPORT_1_AWS_SECRET_ACCESS_KEY",
        )  # fmt: skip
        plan = ExportPlan(
            job="topics",
            result_dir=str(run_dir / RESULT_DIR),
            base_model=str(model_dir),
            targets=[
                target(0, "claim exports:/topics", ClaimTarget(dir=str(claim / "topics"), shown="exports:/topics")),
                target(1, "s3://models/team-a/topics", s3_to),
                target(
                    2,
                    "hub team-a/topics@grpo",
                    HubTarget(
                        repo_id="team-a/topics", endpoint=hub.url, revision="grpo", token_env="GRPO_EXPORT_2_HF_TOKEN"
                    ),
                ),  # fmt: skip
                target(
                    3,
                    "hub team-b/topics",
                    HubTarget(repo_id="team-b/topics", endpoint=hub.url, token_env="GRPO_EXPORT_3_HF_TOKEN"),
                ),  # fmt: skip
            ],
        )
        report = run_export(plan, environ=ENV)

        claimed, bucket, pushed = report.destinations[:3]
        assert (claimed.location, claimed.error) == ("exports:/topics", None)
        assert files(claim / "topics") == result  # the whole result/, byte for byte
        assert (bucket.location, bucket.error) == ("s3://models/team-a/topics", None)
        assert s3.objects("models") == {f"team-a/topics/{rel}": data for rel, data in result.items()}
        repo = hub.repos["team-a/topics"]
        ((branch, oid, summary),) = repo.commits
        assert (
            pushed.location == f"team-a/topics@{oid}" and branch == "grpo" and summary == "topics: GRPO result, step 2"
        )
        assert repo.private and repo.branches["grpo"] == result and repo.branches["main"] == {}
        # a token the hub refuses fails that destination alone, and says so without the token
        refused = report.destinations[3]
        assert refused.location is None and "401" in (refused.error or ""), refused
        assert not report.ok and report.step == 2 and report.adapter
        assert ENV["GRPO_EXPORT_3_HF_TOKEN"] not in report.termination_message()
        assert "team-b/topics" not in hub.repos

    # exported again: the claim folder is replaced as a whole, nothing staged is left beside it
    (claim / "topics" / "stale.txt").write_text("from an earlier export")
    again = run_export(plan.model_copy(update={"targets": plan.targets[:1]}), environ=ENV)
    assert again.ok and files(claim / "topics") == result
    assert sorted(p.name for p in claim.iterdir()) == ["topics"]


def hub_cache(model_dir: Path, root: Path, repo_id: str) -> Path:
    """``model_dir`` laid out as the hub cache holds a downloaded model (what the trainer left on the volume)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.is_file():
            (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def test_a_merged_export_loads_with_transformers_alone_and_gives_the_adapters_logits(
    run_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    """The export's CLI as a pod runs it, with the base model a hub id read from the job volume's hub cache
    (offline: it is never downloaded again) and the report in the termination log."""
    cache = hub_cache(model_dir, tmp_path / "hub-cache", "grpo-test/tiny")
    dest = tmp_path / "exports" / "topics"
    plan = ExportPlan(
        job="topics",
        result_dir=str(run_dir / RESULT_DIR),
        base_model="grpo-test/tiny",
        targets=[target(0, "claim exports:/topics", ClaimTarget(dir=str(dest), shown="exports:/topics"), merged=True)],
    )
    termination = tmp_path / "termination-log"
    env = {**checkout_env(), "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"),
           "GRPO_TERMINATION_LOG": str(termination), "GRPO_LOG_FORMAT": "text"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "grpo_trainer.export.main", "--plan", plan.to_json()],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = ExportReport.parse(termination.read_text())
    assert report is not None and report.ok and report.destinations[0].merged, termination.read_text()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == json.loads(termination.read_text())

    merged = dest / "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert "step 2 merged" in (merged / "README.md").read_text()
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), dest / "adapter"
        ).eval()
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        assert torch.allclose(loaded(ids).logits, peft(ids).logits, atol=1e-4)
        assert not torch.allclose(loaded(ids).logits, base(ids).logits, atol=1e-3)  # the adapter is in it
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer("hello").input_ids == AutoTokenizer.from_pretrained(model_dir)("hello").input_ids


def test_grpo_local_exports_a_finished_run_as_the_export_pod_would(run_dir: Path, tmp_path: Path) -> None:
    """The runner's export step: the resolution's command as a process, a claim as a --volume directory."""
    from grpo_operator.local.default import default_job
    from grpo_operator.local.plan import RunOptions, make_plan
    from grpo_operator.local.runner import export_result

    doc = default_job()
    doc["metadata"] = {"name": "topics"}
    doc["spec"]["export"] = {"destinations": [{"claim": {"claimName": "team-models", "path": "grpo/topics"}}]}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(doc))
    (tmp_path / "models").mkdir()
    options = RunOptions(job_file=job_file, run_dir=run_dir, volumes={"team-models": tmp_path / "models"})
    report, why = export_result(make_plan(options, ports=False))
    assert why is None and report is not None and report.ok, (why, report)
    assert report.destinations[0].location == "team-models:/grpo/topics"
    assert files(tmp_path / "models" / "grpo" / "topics") == files(run_dir / RESULT_DIR)
    assert "exported" in (run_dir / "logs" / "export.log").read_text()

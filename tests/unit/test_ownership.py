"""Whose run a run directory holds (grpo_trainer.run.ownership), and which checkpoints are whole
(grpo_trainer.run.checkpoint_manifest): the decisions, on directories laid out as the trainer writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_operator.children import Job, resolved
from grpo_trainer.contract.identity import JobIdentity, RunOwner
from grpo_trainer.run.checkpoint_manifest import newest_verified, problem, write_complete
from grpo_trainer.run.ownership import OWNER_FILE, ForeignRunError, check_owner, claim_run_dir
from support.jobstates import SETTINGS, spec


def owner(name: str = "papillon", uid: str = "uid-1", **spec_changes: object) -> RunOwner:
    """The owner the operator puts in the trainer's config for the example job (with spec fields replaced)."""
    config = resolved(Job(name, "team-a", uid, spec(**spec_changes)), SETTINGS).config
    assert config.owner is not None
    return config.owner


def example(field: str, **changes: object) -> dict[str, object]:
    """The example's spec field, every value written out (defaults too), with ``changes``."""
    return {**getattr(spec(), field).model_dump(mode="json", by_alias=True), **changes}


def checkpoint(run_dir: Path, step: int, job: JobIdentity | None) -> Path:
    """A checkpoint directory as CheckpointManager.save leaves it (the tensors' files stand in as bytes)."""
    directory = run_dir / "checkpoints" / f"step-{step}"
    (directory / "adapter").mkdir(parents=True)
    (directory / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (directory / "optimizer.pt").write_bytes(b"moments" * 100)
    state = {"format": 1, "step": step, **({"job": job.model_dump(mode="json")} if job else {})}
    (directory / "state.json").write_text(json.dumps(state))
    write_complete(directory, step)
    return directory


def test_a_new_directory_is_claimed_and_its_job_recorded(tmp_path: Path) -> None:
    me = owner()
    claim_run_dir(tmp_path, me)
    assert JobIdentity.model_validate_json((tmp_path / OWNER_FILE).read_text()) == me.job
    check_owner(tmp_path, me)  # and it is this job's from now on


def test_another_jobs_directory_is_refused_naming_both_jobs_and_the_fix(tmp_path: Path) -> None:
    """Job B on the folder of job A (its checkpoints, or only its record): never resumed, never overwritten."""
    a, b = owner("papillon"), owner("second", uid="uid-2")
    checkpoint(tmp_path, 4, a.job)
    with pytest.raises(ForeignRunError) as raised:
        claim_run_dir(tmp_path, b)
    message = str(raised.value)
    assert "holds the run of job 'team-a/papillon' (uid uid-1) (checkpoints/step-4)" in message
    assert "not of this job 'team-a/second'" in message and b.fix in message and b.where in message
    assert not (tmp_path / OWNER_FILE).exists()  # nothing written into it

    claim_run_dir(tmp_path / "other", a)
    with pytest.raises(ForeignRunError, match=f"holds the run of job 'team-a/papillon' .*\\({OWNER_FILE}\\)"):
        check_owner(tmp_path / "other", b)


def test_the_same_name_with_other_run_defining_fields_is_refused_naming_them(tmp_path: Path) -> None:
    first = owner()
    claim_run_dir(tmp_path, first)
    checkpoint(tmp_path, 2, first.job)
    data = example("data")
    changed = owner(grpo=example("grpo", seed=7), data={**data, "train": {"hub": {"id": "other/set"}}})
    with pytest.raises(ForeignRunError) as raised:
        check_owner(tmp_path, changed)
    assert "holds a run of job 'papillon' started with another spec.data, spec.grpo" in str(raised.value)
    assert changed.fix in str(raised.value)


def test_a_reapplied_job_resumes_its_run_and_how_a_run_goes_may_change(tmp_path: Path) -> None:
    """A new uid (deleted and applied again on its kept volume), more steps, other checkpointing or threads:
    the same run. Defaults written out or left implicit, and which Secret holds a token, are the same run too."""
    first = owner()
    claim_run_dir(tmp_path, first)
    checkpoint(tmp_path, 3, first.job)
    again = owner(
        uid="uid-2",
        grpo=example("grpo", num_train_steps=900, num_threads=4, keep_checkpoints=5, checkpoint_every_steps=3),
        trainKwargs=example("train_kwargs", report_to="none", ddp_timeout=600, log_completions=False),
        model=example("model", hub={"tokenSecretRef": {"name": "hf-token", "key": "token"}}),
    )
    assert again.job.definition == first.job.definition
    claim_run_dir(tmp_path, again)
    assert JobIdentity.model_validate_json((tmp_path / OWNER_FILE).read_text()).uid == "uid-2"


def test_a_record_with_other_fields_but_no_checkpoint_is_taken_over(tmp_path: Path) -> None:
    """Nothing trained to resume (the first attempt failed before its first checkpoint): a fixed job starts there."""
    claim_run_dir(tmp_path, owner())
    fixed = owner(model=example("model", name="Qwen/Qwen2.5-0.5B-Instruct"))
    claim_run_dir(tmp_path, fixed)
    assert JobIdentity.model_validate_json((tmp_path / OWNER_FILE).read_text()) == fixed.job


def test_a_run_from_before_records_is_adopted(tmp_path: Path) -> None:
    """Written by an earlier version (no job.json, checkpoints without a job, a COMPLETE without a manifest)."""
    directory = checkpoint(tmp_path, 5, None)
    (directory / "COMPLETE").write_text(json.dumps({"step": 5, "saved_at": 0}))
    claim_run_dir(tmp_path, owner())
    assert newest_verified(tmp_path / "checkpoints") == 5


def test_a_checkpoint_that_no_longer_matches_its_manifest_is_not_resumed_from(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    job = owner().job
    for step in (1, 2, 3):
        checkpoint(tmp_path, step, job)
    assert newest_verified(root) == 3
    optimizer = root / "step-3" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-1] + b"X")  # same size, other bytes
    assert "optimizer.pt does not match its SHA-256" in (problem(root / "step-3") or "")
    assert newest_verified(root) == 2
    (root / "step-2" / "adapter" / "adapter_model.safetensors").write_bytes(b"short")
    assert "adapter/adapter_model.safetensors has 5 bytes, the manifest says 700" == problem(root / "step-2")
    (root / "step-1" / "optimizer.pt").unlink()
    assert newest_verified(root) is None

"""``grpo-local --pool``: jobs of the embedded default on one GRPOInferencePool server, as the operator runs them
(real vLLM, CPU build; the real trainer; the tiny model)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.learning import assert_served
from support.local_pool import on_pool, pool_manifest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def small(doc: dict[str, Any], val: Path) -> dict[str, Any]:
    """The default at the smallest shape that still trains and validates: 2 examples x 4 samples, 8 validation rows."""
    rows = Path(doc["spec"]["data"]["validation"]["file"]["path"]).read_text().splitlines()[:8]
    val.write_text("\n".join(rows) + "\n")
    doc["spec"]["data"]["validation"]["file"]["path"] = str(val)
    doc["spec"]["grpo"].update(num_dspy_examples_per_grpo_step=2, num_samples_per_input=4)
    return doc


@pytest.mark.timeout(600)
def test_two_jobs_on_one_pool_server_each_train_and_are_served_under_their_own_names_from_their_own_folders(
    cli,
    default_doc: dict[str, Any],
    write_job: Callable[..., Path],
    ports: tuple[int, int],
    tmp_path: Path,
    survivors: Callable[[], list[str]],
) -> None:
    job = small(default_doc, tmp_path / "val.jsonl")
    pool = write_job(pool_manifest("tiny-pool", job, jobs=2), "pool.yaml")
    files = [write_job(on_pool(job, name, "tiny-pool"), f"{name}.yaml") for name in ("job-a", "job-b")]
    port, _ = ports

    done = cli("--pool", str(pool), *map(str, files), "--steps", "1", "--port", str(port), "--trainer-port", "0",
               "--no-plot", timeout=540)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = tmp_path / "runs"  # the pool's volume is the working directory: runs/<job> in it
    assert sorted(p.name for p in runs.iterdir()) == ["job-a", "job-b"]
    for name in ("job-a", "job-b"):
        run_dir = runs / name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["outcome"], summary["steps"]) == ("finished", 1), summary
        # the pool's server loaded the job's version from the job's own folder, under the job's name
        assert_served(run_dir, 1, prefix=f"{name}-")
        assert not (run_dir / "logs" / "vllm.log").exists(), "the job started a vLLM server of its own"
    log = (tmp_path / "pools" / "tiny-pool" / "logs" / "vllm.log").read_text()
    said = [line for line in log.splitlines() if "LoRA" in line or "Uvicorn" in line or "Error" in line]
    for name in ("job-a", "job-b"):
        assert f"name '{name}-policy-v1', path '{runs / name / 'adapters' / 'step-1'}'" in log, (
            f"the pool's server log ({len(log.splitlines())} lines) never loaded {name}'s version; its lines on "
            f"LoRA, Uvicorn and errors:\n" + "\n".join(said[-40:]) + "\nthe runner's output:\n" + done.stdout[-2000:]
        )
    assert survivors() == []

"""Entry point of the export: copy a succeeded run's result/ to its destinations, report what went where.

    python -m grpo_trainer.export.main --plan '<ExportPlan JSON>'      (grpo-export)

The operator's export pod runs this (grpo_operator.resolve.resolve_export decides the plan), and so
does ``grpo-local`` after a run. Credentials come only from the environment variables the plan names.
Each destination is exported on its own (one failing does not stop the others); the report
(grpo_trainer.contract.export.ExportReport) is printed and written to ``$GRPO_TERMINATION_LOG``
when set (the pod's termination message, read into status.export). Exit 0 when every destination
was exported, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from grpo_trainer.contract.config import TERMINATION_LOG_ENV
from grpo_trainer.contract.export import (
    MERGED_DIR,
    ClaimTarget,
    Exported,
    ExportPlan,
    ExportReport,
    ExportTarget,
    HubTarget,
    S3Target,
    short_error,
    utc_now,
)
from grpo_trainer.contract.progress import RESULT_ADAPTER_DIR, RESULT_DIR, RESULT_FILE
from grpo_trainer.export.layout import Files, commit_message, destination_files, files_under, location, needs_merge
from grpo_trainer.run.logs import configure_logging
from grpo_trainer.run.secrets import Redactor

log = logging.getLogger("grpo_trainer.export")

ADAPTER_SUBDIR = RESULT_ADAPTER_DIR.removeprefix(f"{RESULT_DIR}/")


class ExportError(Exception):
    """One destination could not be exported; the message says why (never a credential)."""


def _secret(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if not value:
        raise ExportError(f"${name} is not set (the destination's Secret key)")
    return value


def _export_one(target: ExportTarget, files: Files, job: str, step: Optional[int], environ: Mapping[str, str]) -> str:
    """Export to one destination; returns where it went."""
    to = target.to
    if isinstance(to, ClaimTarget):
        from grpo_trainer.export.claim import copy_to_claim

        copy_to_claim(files, Path(to.dir))
        return location(target)
    if isinstance(to, HubTarget):
        from grpo_trainer.export.hub import push_to_hub

        commit = push_to_hub(files, to, _secret(environ, to.token_env), commit_message(job, step, target.merged))
        return location(target, commit)
    assert isinstance(to, S3Target)
    from grpo_trainer.export.s3 import upload_to_s3

    upload_to_s3(files, to, _secret(environ, to.access_key_id_env), _secret(environ, to.secret_access_key_env))
    return location(target)


def _secret_envs(plan: ExportPlan) -> list[str]:
    names: list[str] = []
    for t in plan.targets:
        if isinstance(t.to, HubTarget):
            names.append(t.to.token_env)
        elif isinstance(t.to, S3Target):
            names += [t.to.access_key_id_env, t.to.secret_access_key_env]
    return names


def run_export(
    plan: ExportPlan, environ: Mapping[str, str] = os.environ, scratch: Optional[Path] = None
) -> ExportReport:
    """Export the result to every destination of the plan; never raises for one destination's failure."""
    redact = Redactor.from_env(_secret_envs(plan), environ)
    result_dir = Path(plan.result_dir)
    summary_file = result_dir / RESULT_FILE
    step: Optional[int] = None
    adapter = False
    failed: dict[int, str] = {}
    if not summary_file.is_file():
        why = f"no result to export: {summary_file} does not exist (the run wrote none)"
        failed = {t.index: why for t in plan.targets}
    else:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        step, adapter = summary.get("step"), bool(summary.get("adapter"))
    result = files_under(result_dir) if not failed else {}

    with tempfile.TemporaryDirectory(prefix="grpo-export-", dir=scratch) as tmp:
        merged: Optional[Files] = None
        if not failed and needs_merge(plan.targets):
            out = Path(tmp) / MERGED_DIR
            adapter_dir = result_dir / ADAPTER_SUBDIR if adapter else None
            try:
                from grpo_trainer.export.merge import merge

                merge(plan.base_model, adapter_dir, out, job=plan.job, step=step)
                merged = files_under(out, MERGED_DIR)
            except Exception as exc:  # noqa: BLE001 - the destinations that want it say why; the others go on
                log.exception("merging failed")
                why = f"merging the adapter into {plan.base_model} failed: {type(exc).__name__}: {exc}"
                failed.update({t.index: why for t in plan.targets if t.merged})

        outcomes: list[Exported] = []
        for target in plan.targets:
            common = dict(index=target.index, name=target.name, spec_hash=target.spec_hash, merged=target.merged)
            error = failed.get(target.index)
            if error is None:
                try:
                    where = _export_one(target, destination_files(result, merged, target), plan.job, step, environ)
                    outcomes.append(Exported(**common, location=where, exported_at=utc_now()))
                    log.info("exported", extra={"destination": target.name, "location": where})
                    continue
                except Exception as exc:  # noqa: BLE001 - reported per destination
                    log.exception("export failed", extra={"destination": target.name})
                    error = f"{type(exc).__name__}: {exc}"
            outcomes.append(Exported(**common, error=short_error(redact(error))))
    return ExportReport(job=plan.job, step=step, adapter=adapter, destinations=outcomes)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo-export", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="the ExportPlan (JSON), as grpo_operator.resolve renders it")
    parser.add_argument("--log-format", choices=["json", "text"], default=None)
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    plan = ExportPlan.model_validate_json(args.plan)
    report = run_export(plan)
    text = report.termination_message()
    sys.stdout.write(text + "\n")
    termination_log = os.environ.get(TERMINATION_LOG_ENV)
    if termination_log:
        Path(termination_log).write_text(text, encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``grpo``: submit, follow, stop and collect GRPOJobs from a shell (the current kube context), or local runs.

    grpo submit job.yaml          create the job (and the ConfigMaps in the file)
    grpo status [JOB]             the jobs of the namespace, or one job's conditions, result and endpoint
    grpo logs [-f] JOB            the trainer's log
    grpo wait JOB                 until it succeeds (exit 0) or fails (exit 1)
    grpo stop JOB / resume JOB    suspend (pods go, the volume and checkpoints stay) / go on
    grpo result JOB               status.result and the endpoint serving it
    grpo export JOB --to DEST     copy the result to a claim, a hub repository or a bucket (spec.export)
    grpo delete JOB

``--local`` reads grpo-local's runs (``runs/<name>``) instead; ``-o json|yaml`` prints
for scripts. Exit codes: 0 done, 1 the job failed, 2 bad input or refused, 3 timed out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from grpo_operator.client.errors import GRPOError, JobRejected
from grpo_operator.client.job_view import JobView

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT = 0, 1, 2, 3

Jobs = Any  # ClusterJobs | LocalJobs: the same verbs


def _jobs(args: argparse.Namespace) -> Jobs:
    if args.local:
        from grpo_operator.client.local_jobs import LocalJobs

        return LocalJobs(args.workdir)
    from grpo_operator.client.cluster_jobs import ClusterJobs

    return ClusterJobs(args.namespace, context=args.context, kubeconfig=args.kubeconfig)


def _print(data: Any, output: Optional[str]) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(views: list[JobView]) -> str:
    header = ["NAME", "STATE", "STEP", "MAX", "REWARD", "VAL", "BEST", "MESSAGE"]
    rows = [
        [
            v.name,
            v.state,
            _fmt(v.step),
            _fmt(v.max_steps),
            _fmt(v.train_reward),
            _fmt(v.val_score),
            _fmt(v.best_val_score),
            v.message[:60],
        ]
        for v in views
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def cmd_status(jobs: Jobs, args: argparse.Namespace) -> int:
    if args.job is None:
        views = jobs.list()
        if args.output:
            _print([v.row() for v in views], args.output)
        else:
            sys.stdout.write((_table(views) if views else "no GRPOJobs") + "\n")
        return EXIT_OK
    view = jobs.view(args.job)
    detail = {**view.row(), "result": view.result, "endpoint": view.endpoint, "conditions": view.conditions}
    if args.output:
        _print(detail, args.output)
        return EXIT_OK
    sys.stdout.write(_table([view]) + "\n")
    for c in view.conditions:
        sys.stdout.write(f"  {c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message', '')}\n")
    if view.result:
        sys.stdout.write(f"result: {json.dumps(view.result)}\n")
    if view.endpoint:
        sys.stdout.write(f"endpoint: {json.dumps(view.endpoint)}\n")
    return EXIT_OK


def cmd_logs(jobs: Jobs, args: argparse.Namespace) -> int:
    for line in jobs.logs(args.job, follow=args.follow, tail=args.tail):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return EXIT_OK


def cmd_wait(jobs: Jobs, args: argparse.Namespace) -> int:
    try:
        view = jobs.wait(args.job, timeout=args.timeout)
    except TimeoutError as exc:
        sys.stderr.write(f"grpo: {exc}\n")
        return EXIT_TIMEOUT
    sys.stdout.write(f"{view.name}: {view.state} ({view.reason}) {view.message}\n")
    return EXIT_OK if view.state == "Succeeded" else EXIT_FAILED


def cmd_stop(jobs: Jobs, args: argparse.Namespace) -> int:
    jobs.stop(args.job)
    sys.stdout.write(f"{args.job}: stopping; its volume and checkpoints are kept (grpo resume {args.job} goes on)\n")
    return EXIT_OK


def cmd_resume(jobs: Jobs, args: argparse.Namespace) -> int:
    if args.local:
        sys.stderr.write("grpo: a local run resumes by running it again (grpo-local JOB.yaml)\n")
        return EXIT_INVALID
    jobs.resume(args.job)
    sys.stdout.write(f"{args.job}: resuming from its last checkpoint\n")
    return EXIT_OK


def cmd_result(jobs: Jobs, args: argparse.Namespace) -> int:
    result = jobs.result(args.job)
    if result.get("result") is None:
        sys.stderr.write(f"grpo: {args.job} has no result yet\n")
        return EXIT_FAILED
    _print(result, args.output)
    return EXIT_OK


def cmd_export(jobs: Jobs, args: argparse.Namespace) -> int:
    from grpo_operator.client.export_target import ExportOptions, destination

    entry = destination(
        ExportOptions(
            to=args.to,
            merged=args.merged,
            token_secret=args.token_secret,
            credentials_secret=args.credentials_secret,
            endpoint=args.endpoint,
            region=args.region,
            path_style=args.path_style,
        )
    )
    if args.local:
        volumes = dict(_volume(v) for v in args.volume)
        report = jobs.export(args.job, entry, job_file=args.job_file, volumes=volumes)
        _print(report.model_dump(mode="json"), args.output)
        return EXIT_OK if report.ok else EXIT_FAILED
    jobs.export(args.job, entry)
    sys.stdout.write(f"{args.job}: exporting to {args.to} (grpo status {args.job} shows Exported)\n")
    if not args.wait:
        return EXIT_OK
    view = jobs.wait(args.job, until=_export_settled, timeout=args.timeout)
    exported = next(c for c in view.conditions if c.get("type") == "Exported")
    status, reason, message = exported.get("status"), exported.get("reason"), exported.get("message")
    sys.stdout.write(f"{args.job}: Exported={status} {reason}: {message}\n")
    return EXIT_OK if exported.get("status") == "True" else EXIT_FAILED


def _export_settled(view: JobView) -> bool:
    """The export of the job's current generation has ended, one way or the other."""
    exported = next((c for c in view.conditions if c.get("type") == "Exported"), None)
    return (
        exported is not None
        and exported.get("status") in ("True", "False")
        and exported.get("observedGeneration") == view.generation
    )


def _volume(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep:
        raise JobRejected(f"--volume {text!r}: write NAME=DIR")
    return name, Path(folder)


def cmd_delete(jobs: Jobs, args: argparse.Namespace) -> int:
    if args.local:
        sys.stderr.write("grpo: delete a local run's folder yourself\n")
        return EXIT_INVALID
    jobs.delete(args.job)
    sys.stdout.write(f"{args.job}: deleted\n")
    return EXIT_OK


def cmd_submit(jobs: Jobs, args: argparse.Namespace) -> int:
    if args.local:
        from grpo_operator.local.cli import main as grpo_local

        return grpo_local([str(args.file)])
    docs = [d for d in yaml.safe_load_all(args.file.read_text(encoding="utf-8")) if d]
    from grpo_operator.api import InvalidJob, parse_job

    for doc in docs:
        if doc.get("kind") == "GRPOJob":
            try:
                parse_job(doc)  # the same messages the API server gives, before anything is created
            except InvalidJob as exc:
                raise JobRejected(
                    f"{args.file}: invalid GRPOJob:\n  " + "\n  ".join(exc.problems), exc.problems
                ) from None
    for doc in docs:
        name = (doc.get("metadata") or {}).get("name")
        if doc.get("kind") == "ConfigMap":
            jobs._create(jobs.core.create_namespaced_config_map, doc, f"ConfigMap {name}")
        elif doc.get("kind") == "GRPOJob":
            jobs.apply(doc)
        else:
            raise JobRejected(f"{args.file}: grpo submit takes GRPOJobs and their ConfigMaps, not {doc.get('kind')}")
        sys.stdout.write(f"{str(doc.get('kind')).lower()}/{name} created\n")
    return EXIT_OK


COMMANDS = {
    "submit": cmd_submit,
    "status": cmd_status,
    "logs": cmd_logs,
    "wait": cmd_wait,
    "stop": cmd_stop,
    "resume": cmd_resume,
    "result": cmd_result,
    "export": cmd_export,
    "delete": cmd_delete,
}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    common.add_argument("--context", help="the kube context (default: the current one)")
    common.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    common.add_argument("--local", action="store_true", help="grpo-local's runs instead of a cluster's jobs")
    common.add_argument(
        "--workdir", type=Path, default=Path("runs"), help="with --local: the runs' folder (default: runs)"
    )
    common.add_argument("-o", "--output", choices=("json", "yaml"), help="machine-readable output")
    p = argparse.ArgumentParser(prog="grpo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", parents=[common], help="create the GRPOJob (and ConfigMaps) of a YAML file")
    s.add_argument("file", type=Path)
    s = sub.add_parser("status", parents=[common], help="jobs, or one job in detail")
    s.add_argument("job", nargs="?")
    s = sub.add_parser("logs", parents=[common], help="the trainer's log")
    s.add_argument("job")
    s.add_argument("-f", "--follow", action="store_true", help="stream until the trainer ends")
    s.add_argument("--tail", type=int, help="the last N lines")
    s = sub.add_parser("wait", parents=[common], help="until the job succeeds (exit 0) or fails (exit 1)")
    s.add_argument("job")
    s.add_argument("--timeout", type=float, help="seconds (exit 3 when they run out)")
    s = sub.add_parser("export", parents=[common], help="copy the finished job's result elsewhere (spec.export)")
    s.add_argument("job")
    s.add_argument("--to", required=True, help="claim:NAME[/PATH], hf://OWNER/REPO[@BRANCH] or s3://BUCKET[/PREFIX]")
    s.add_argument("--merged", action="store_true", help="also write the base model with the adapter merged in")
    s.add_argument("--token-secret", metavar="NAME[:KEY]", help="hf://: the Secret holding the hub token")
    s.add_argument("--credentials-secret", metavar="NAME", help="s3://: the Secret holding the access keys")
    s.add_argument("--endpoint", help="a self-hosted hub's or an S3-compatible service's URL")
    s.add_argument("--region", help="s3://: the bucket's region")
    s.add_argument("--path-style", action="store_true", help="s3://: path-style addressing (MinIO and the like)")
    s.add_argument("--wait", action="store_true", help="until the export has ended (exit 0 exported, 1 failed)")
    s.add_argument("--timeout", type=float, help="with --wait: seconds (exit 3 when they run out)")
    s.add_argument("--job", dest="job_file", type=Path, help="with --local: the job file the run ran")
    s.add_argument("--volume", action="append", default=[], metavar="NAME=DIR", help="with --local: a claim's folder")
    for name, text in (
        ("stop", "suspend: pods go, the volume and checkpoints stay"),
        ("resume", "go on from the last checkpoint"),
        ("result", "status.result and the endpoint serving it"),
        ("delete", "delete the job (and its volume unless storage.retainOnDelete)"),
    ):
        s = sub.add_parser(name, parents=[common], help=text)
        s.add_argument("job")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](_jobs(args), args)
    except JobRejected as exc:
        sys.stderr.write(f"grpo: {exc}\n")
        return EXIT_INVALID
    except GRPOError as exc:
        sys.stderr.write(f"grpo: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The generated admission corpus's counts (GRPOJob, then GRPOInferencePool), for bench/RESULTS.md (section
admission_corpus).

The same corpus tests/cluster/test_admission_corpus.py asserts on (tests/support/mutations.py,
tests/support/admission.py): every field of the CRD's spec mutated every way, sent to a real API
server of the test control plane with dryRun=All; each mutation refused naming the field, or
accepted and then surviving pydantic, every child builder and the dry run of every child.

    bash bench/run.sh admission_corpus             # prints the table and writes the section
    bash bench/run.sh admission_corpus --no-write  # prints only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))  # as tests/cluster/conftest.py

import controlplane  # noqa: E402
from _results import header, write_section  # noqa: E402

from support.admission import VERDICTS, Judge, count  # noqa: E402
from support.cluster_jobs import CRD_FILE, POOL_CRD_FILE, RESTRICTED, install_crd  # noqa: E402
from support.mutations import generate, seed_job, seed_pool  # noqa: E402

NAME = "admission_corpus"


def corpus(cp: controlplane.ControlPlane, namespace: str, crd: Path, seed: dict[str, Any]) -> tuple[list[str], bool]:
    """The corpus of ``seed`` against the API server: its table and notes, and whether any mutation failed."""
    spec = yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    judge = Judge(cp.session(), namespace)
    t0 = time.monotonic()
    generated = generate(seed, spec)
    try:
        outcomes = judge.run(generated.mutations)
    finally:
        judge.clean_up()
    counts = count(outcomes, generated, judge.children_sent, time.monotonic() - t0)
    kinds = Counter(o.mutation.kind.split()[0] for o in outcomes)
    failing = [o.line() for o in outcomes if o.verdict in (VERDICTS[2], VERDICTS[3])]
    lines = [
        counts.table(),
        "",
        f"- Mutations by kind: {', '.join(f'{k} {n}' for k, n in kinds.most_common())}.",
        f"- Fields no value makes valid (every mutation of them must be refused): {', '.join(generated.refused)}.",
        *(f"- Failing: {line}" for line in failing[:20]),
    ]
    return lines, bool(failing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="admission-corpus-"))
    with controlplane.ControlPlane.start(logs_dir=logs) as cp:
        install_crd(cp)
        namespace = cp.create_namespace("admission-corpus", labels=RESTRICTED)
        job_lines, job_failing = corpus(cp, namespace, CRD_FILE, seed_job())
        pool_lines, pool_failing = corpus(cp, namespace, POOL_CRD_FILE, seed_pool())
    lines = [
        *job_lines,
        "- Sent with fieldValidation=Ignore (unknown keys pruned; the declared inline-secret keys refused by rules), "
        "unknown keys once more with Strict; accepted jobs through `parse_job`, the job's resolution, every child "
        "builder, and a dryRun=All create of each distinct child in a namespace enforcing Pod Security restricted.",
        "",
        "GRPOInferencePool (its own rules among every field's; an accepted pool through `parse_pool`, its volume, "
        "ConfigMap, Service and server, and the trainer of the example job on it, each dry-run as above):",
        "",
        *pool_lines,
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(NAME, f"## Admission corpus\n\n{header(NAME)}\n{body}\n")
    return 1 if job_failing or pool_failing else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``grpo-local`` with its CPU processes' OpenMP wait policy forced, whatever the resolution would choose
(bench/cpu_sharing.py): ``python _omp_local.py spinning|passive JOB [grpo-local args]``. ``spinning`` is
libgomp's default (no ``OMP_WAIT_POLICY``), ``passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` in both."""

import os
import sys

import grpo_operator.resolve as resolution
from grpo_operator.local.cli import main

POLICIES = {"spinning": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}

if __name__ == "__main__":
    policy = POLICIES[sys.argv.pop(1)]
    os.environ.pop("OMP_WAIT_POLICY", None)
    resolution._cpu_sharing_env = lambda spec, target, gpus: dict(policy)  # noqa: SLF001 - the one decision forced
    sys.exit(main())

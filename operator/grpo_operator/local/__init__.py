"""The local runner: a GRPOJob on one machine, without Kubernetes (``grpo-local``).

vLLM and the trainer run as child processes of the runner, a directory stands in
for the shared volume, and the job goes through the same validation and
translation as in the cluster.
"""

from grpo_operator.local.plan import InvalidInput, RunOptions, make_plan
from grpo_operator.local.runner import RunFailed, RunResult, run

__all__ = ["InvalidInput", "RunFailed", "RunOptions", "RunResult", "make_plan", "run"]

#!/usr/bin/env bash
# Run one benchmark with the project's environment:  bash bench/run.sh <name> [args]
#   e.g.  bash bench/run.sh operator_scale --quick
# <name> is a script in bench/ (without .py). Installs the venv (and, for benchmarks
# that need the control plane, the cluster binaries) exactly as scripts/test.sh does.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: bash bench/run.sh <benchmark> [args]}
shift

source "$root/.ci/python-env.sh"

if [[ "$name" == operator_scale && -z "${GRPO_K8S_BIN:-}" ]]; then
  GRPO_K8S_BIN=$(bash "$root/tests/cluster/build.sh" | tail -n 1)
  export GRPO_K8S_BIN
fi
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Test helpers (tests/support) are importable by the benchmarks, as in pytest.
export PYTHONPATH="$root/tests${PYTHONPATH:+:$PYTHONPATH}"

cd "$root/bench"
exec python "$name.py" "$@"

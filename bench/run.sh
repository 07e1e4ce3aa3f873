#!/usr/bin/env bash
# Run one benchmark with the project's environment:  bash bench/run.sh <name> [args]
#   e.g.  bash bench/run.sh operator_scale --quick
# <name> is a script in bench/ (without .py). Installs the venv (and, for benchmarks
# that need the control plane, the cluster binaries) exactly as scripts/test.sh does.
#
# GRPO_SYSTEM_PYTHON=1: use the machine's own python3 instead of the project's venv (a
# machine that cannot build the venv: the GPU machine, no network, no wheelhouse). Only
# this checkout's operator/ and trainer/ go on PYTHONPATH. GRPO_WHEELS=DIR adds carried
# wheels (bench/gpu_wheels.sh), installed without dependencies into a temporary folder
# first on PYTHONPATH.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: bash bench/run.sh <benchmark> [args]}
shift

if [[ "${GRPO_SYSTEM_PYTHON:-}" == 1 ]]; then
  python=$(command -v python3) || { echo "bench/run.sh: GRPO_SYSTEM_PYTHON=1 but no python3" >&2; exit 1; }
  export PYTHONPATH="$root/operator:$root/trainer${PYTHONPATH:+:$PYTHONPATH}"
  if [[ -n "${GRPO_WHEELS:-}" ]]; then
    wheels=$(cd "$GRPO_WHEELS" && pwd)
    site=$(mktemp -d "${TMPDIR:-/tmp}/grpo-wheels.XXXXXX")
    trap 'rm -rf "$site"' EXIT
    shopt -s nullglob
    whls=("$wheels"/*.whl)
    [[ ${#whls[@]} -gt 0 ]] || { echo "bench/run.sh: no wheels in $wheels" >&2; exit 1; }
    echo "[bench/run.sh] installing ${#whls[@]} carried wheels into $site" >&2
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$site" "${whls[@]}" >&2
    export PYTHONPATH="$site:$PYTHONPATH"
  fi
else
  source "$root/.ci/python-env.sh"
  python=python
fi

if [[ "$name" == operator_* || "$name" == admission_corpus ]] && [[ -z "${GRPO_K8S_BIN:-}" ]]; then
  GRPO_K8S_BIN=$(bash "$root/tests/cluster/build.sh" | tail -n 1)
  export GRPO_K8S_BIN
fi
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Test helpers (tests/support) are importable by the benchmarks, as in pytest.
export PYTHONPATH="$root/tests${PYTHONPATH:+:$PYTHONPATH}"

cd "$root/bench"
if [[ -n "${site:-}" ]]; then
  "$python" "$name.py" "$@"  # not exec: the EXIT trap removes the temporary site
else
  exec "$python" "$name.py" "$@"
fi

#!/usr/bin/env bash
# The test command: installs what the tests need (Python venv, control-plane
# binaries built from the Go module proxy; both cached by version under
# ${GRPO_CACHE:-~/.cache/grpo-operator}), then runs pytest with any arguments.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/unit -q   # a subset
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

source "$root/.ci/python-env.sh"
python -m pip install -q --no-deps --no-index --no-build-isolation -e "$root" >&2 \
  || python -m pip install -q --no-deps -e "$root" >&2

if [[ "${GRPO_SKIP_CLUSTER:-0}" != 1 ]]; then
  GRPO_K8S_BIN=$(bash "$root/tests/cluster/build.sh" | tail -n 1)
  export GRPO_K8S_BIN
fi

# litellm fetches a model price map at import unless told not to (no network here).
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The embedded default's tiny model is generated and warm-started once (minutes), then cached:
# built here rather than inside whichever test first needs it, so no test timeout includes it.
# (Not from the repo root: operator/ there would shadow the stdlib module.)
if [[ "${GRPO_SKIP_MODEL_BUILD:-0}" != 1 ]]; then
  (cd "${TMPDIR:-/tmp}" && python -c \
    "from grpo_operator.local.default import default_model_dir; print('tiny model:', default_model_dir())") >&2
fi


cd "$root"
set +e
pytest "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc

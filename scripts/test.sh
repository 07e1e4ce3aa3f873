#!/usr/bin/env bash
# The test command: sets up what the tests need (Python venv, control-plane binaries
# built from the Go module proxy, the embedded default's tiny model; all cached by
# version under ${GRPO_CACHE:-~/.cache/grpo-operator}), then runs pytest with any
# arguments. Prints each phase's wall time at the end, pass or fail.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/unit -q   # a subset
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

phases=()
phase_start=$SECONDS
phase_done() { # phase_done NAME: record the time since the previous phase ended
  phases+=("$(printf '%-14s %5d s' "$1" $((SECONDS - phase_start)))")
  phase_start=$SECONDS
}
report_phases() {
  local rc=$? p
  {
    echo "=== phase times (total $SECONDS s, exit $rc)"
    for p in "${phases[@]}"; do echo "  $p"; done
  } >&2
}
trap report_phases EXIT

# The control plane (CPU-bound Go builds) builds while the venv is set up (mostly waiting on
# the wheel downloads): on a cold machine the two overlap instead of adding up.
if [[ "${GRPO_SKIP_CLUSTER:-0}" != 1 ]]; then
  cluster_out=$(mktemp)
  bash "$root/tests/cluster/build.sh" >"$cluster_out" 2>&1 &
  cluster_pid=$!
fi

# The venv holds only the lock; this checkout is imported from its folders (PYTHONPATH).
source "$root/.ci/python-env.sh"
phase_done venv

# litellm fetches a model price map at import unless told not to (no network here).
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The embedded default's tiny model: shipped in the package and copied into the cache
# (built from its recipe only when the shipped copy does not match it). Here rather than
# inside whichever test first needs it, so no test's timeout includes it.
if [[ "${GRPO_SKIP_MODEL_BUILD:-0}" != 1 ]]; then
  python -P -c "from grpo_operator.local.default import default_model_dir; print('tiny model:', default_model_dir())" >&2
  phase_done model
fi

wait_control_plane() { # the Go builds started above: their output, and GRPO_K8S_BIN for the tests
  local cluster_rc=0
  wait "$cluster_pid" || cluster_rc=$?
  cat "$cluster_out" >&2
  [[ $cluster_rc == 0 ]] || { rm -f "$cluster_out"; exit "$cluster_rc"; }
  GRPO_K8S_BIN=$(tail -n 1 "$cluster_out")
  rm -f "$cluster_out"
  export GRPO_K8S_BIN
}

whole_suite() {
  local arg
  for arg in "$@"; do
    case $arg in
      -m | -m* | -k | -k* | --deselect* | --lf | --last-failed | --sw | --stepwise) return 1 ;;
      -*) ;;
      *) return 1 ;; # a test path (or an option's separate value: one lane, to be safe)
    esac
  done
}

# The whole suite (no test path, -m or -k given; GRPO_TEST_LANES=1: one pytest): the unit tests first,
# beside the Go builds, then two lanes at once: the tests that need only the API server and KWOK nodes,
# which mostly wait (on the operator, the API server, resyncs), in a second pytest beside the main lane,
# which runs everything else. Every test runs exactly once (by its folder and markers). Not two heavy
# lanes: the local runner's learning runs beside the process-node and trainer runs made both 1.5-3x
# slower on 2 cores (a cold run of 240930a: 58 min; kill -9 of a rank 516 s against 173 s alone).
HELM_UNIT_TESTS=tests/unit/test_chart.py  # unit tests of the chart with the real helm, built with the control plane
api_lane() { # the API-server lane: its output is printed after the main lane's
  local log=$1
  shift
  GRPO_CLUSTER_LOGS=${GRPO_CLUSTER_LOGS:+$GRPO_CLUSTER_LOGS/api-lane} \
    pytest -m "cluster and not processnode" -p no:cacheprovider "$@" tests >"$log" 2>&1
}

cd "$root"
set +e
if [[ "${GRPO_SKIP_CLUSTER:-0}" != 1 && "${GRPO_TEST_LANES:-2}" != 1 ]] && whole_suite "$@"; then
  # The unit tests (one core of plain Python; not the chart's, which need helm) run while the Go builds finish: on a
  # cold machine the builds outlast the venv by minutes, and half the cores would wait on them.
  pytest -m "not cluster or processnode" --ignore="$HELM_UNIT_TESTS" "$@" tests/unit
  rc=$?
  phase_done "unit tests"  # beside the Go builds
  wait_control_plane
  phase_done control-plane  # the time it took beyond the venv's and the unit tests'
  api_log=$(mktemp)
  api_lane "$api_log" "$@" &
  api_pid=$!
  rest=()
  for dir in tests/*/; do [[ $dir == tests/unit/ ]] || rest+=("${dir%/}"); done
  rest+=("$HELM_UNIT_TESTS")  # helm comes with the control plane
  pytest -m "not cluster or processnode" "$@" "${rest[@]}"
  main_rc=$?
  phase_done "main lane"
  wait "$api_pid"
  api_rc=$?
  phase_done "API lane"  # beyond the main lane's end
  echo "=== the API-server lane (tests that need only the API server and KWOK nodes), run beside the above"
  cat "$api_log"
  rm -f "$api_log"
  [[ $rc == 0 ]] && rc=$main_rc
  [[ $rc == 0 ]] && rc=$api_rc
else
  if [[ "${GRPO_SKIP_CLUSTER:-0}" != 1 ]]; then
    wait_control_plane
    phase_done control-plane  # the time it took beyond the venv's
  fi
  pytest "$@"
  rc=$?
  phase_done tests
fi
set -e
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc

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
# beside the Go builds, then two lanes at once. The second lane runs the tests that need only the API
# server and KWOK nodes (they mostly wait: on the operator, the API server, resyncs), then the local
# runner's (tests/local: learning runs of one trainer and one vLLM, which keep about 1.3 of the 2 cores
# busy: two such runs side by side took 1.33x one run's time in bench/pool.py, not 2x); the main lane
# runs everything else (the process-node cluster runs, the trainer's). Every test runs exactly once
# (by its folder and markers).
LOCAL_TESTS=tests/local
second_lane() { # its output is printed after the main lane's
  local log=$1 api_rc=0 local_rc=0
  shift
  {
    GRPO_CLUSTER_LOGS=${GRPO_CLUSTER_LOGS:+$GRPO_CLUSTER_LOGS/api-lane} \
      pytest -m "cluster and not processnode" -p no:cacheprovider "$@" tests || api_rc=$?
    pytest -m "not cluster or processnode" -p no:cacheprovider "$@" "$LOCAL_TESTS" || local_rc=$?
  } >"$log" 2>&1
  [[ $api_rc != 0 ]] && return "$api_rc"
  return "$local_rc"
}

cd "$root"
set +e
if [[ "${GRPO_SKIP_CLUSTER:-0}" != 1 && "${GRPO_TEST_LANES:-2}" != 1 ]] && whole_suite "$@"; then
  # The unit tests (one core of plain Python, no control plane) run while the Go builds finish: on a
  # cold machine the builds outlast the venv by minutes, and half the cores would wait on them.
  pytest -m "not cluster or processnode" "$@" tests/unit
  rc=$?
  phase_done "unit tests"  # beside the Go builds
  wait_control_plane
  phase_done control-plane  # the time it took beyond the venv's and the unit tests'
  second_log=$(mktemp)
  second_lane "$second_log" "$@" &
  second_pid=$!
  rest=()
  for dir in tests/*/; do [[ $dir == tests/unit/ || $dir == "$LOCAL_TESTS/" ]] || rest+=("${dir%/}"); done
  pytest -m "not cluster or processnode" "$@" "${rest[@]}"
  main_rc=$?
  phase_done "main lane"
  wait "$second_pid"
  second_rc=$?
  phase_done "second lane"  # beyond the main lane's end
  echo "=== the second lane, run beside the above: the tests that need only the API server and KWOK nodes, then $LOCAL_TESTS"
  cat "$second_log"
  rm -f "$second_log"
  [[ $rc == 0 ]] && rc=$main_rc
  [[ $rc == 0 ]] && rc=$second_rc
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

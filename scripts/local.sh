#!/usr/bin/env bash
# The main job: a GRPOJob run locally, without Kubernetes. With no arguments it runs
# the embedded default (PAPILLON on a tiny generated model, CPU; ~1 GB of RAM).
# Installs the pinned venv first (cached under ${GRPO_CACHE:-~/.cache/grpo-operator}).
#
#   bash scripts/local.sh                          # the embedded default, in ./runs/papillon-local
#   bash scripts/local.sh --steps 3                # a quick try
#   bash scripts/local.sh my-job.yaml --volume models=/data/models
#   bash scripts/local.sh --print-default > job.yaml   # a job file to copy and edit
#   bash scripts/local.sh --help
#
# Ctrl-C stops after the trainer's next checkpoint; the same command resumes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

source "$root/.ci/python-env.sh"
# (setuptools' warnings are noise here; a failure shows them)
python -m pip install -q --no-deps --no-index --no-build-isolation -e "$root" >/dev/null 2>&1 \
  || python -m pip install -q --no-deps -e "$root" >&2

# litellm fetches a model price map at import unless told not to; no hub downloads for local paths.
export LITELLM_LOCAL_MODEL_COST_MAP=True TOKENIZERS_PARALLELISM=false

# exec: Ctrl-C and the exit code belong to grpo-local (a console script, so running it from
# the repo root is safe: the current directory is not on its import path).
exec grpo-local "$@"

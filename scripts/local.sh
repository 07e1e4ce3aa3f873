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

# litellm fetches a model price map at import unless told not to; no hub downloads for local paths.
export LITELLM_LOCAL_MODEL_COST_MAP=True TOKENIZERS_PARALLELISM=false

# exec: Ctrl-C and the exit code belong to grpo-local. -P: the current directory is not
# put on the import path (this checkout is, by python-env.sh).
exec python -P -m grpo_operator.local.cli "$@"

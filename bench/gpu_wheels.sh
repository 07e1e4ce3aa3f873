#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on the GPU machine beyond what its image has, at this
# checkout's locked versions (requirements/constraints.txt), into a folder to carry there:
#
#   bash bench/gpu_wheels.sh [DIR]     (default DIR: .gpu-wheels, git-ignored)
#   then, there:  GRPO_SYSTEM_PYTHON=1 GRPO_WHEELS=DIR bash bench/run.sh gpu_check
#
# The H200 image's python3 (3.12) has torch, transformers, peft, accelerate, triton and also
# pandas, pyarrow, xxhash, fsspec, httpx (see bench/gpu_check.py); it lacks TRL (the reference
# loss, and our fused LM head), datasets (TRL's GRPOTrainer imports it) with dill and
# multiprocess, and pydantic (the project's hparams) with its three companions.
# GPU_PYTHON (default 3.12) is the Python the wheels are for: pure wheels come from the
# project's wheelhouse, the rest (pydantic-core, multiprocess) from PyPI by name.
# GPU_WHEELS_EXTRA="transformers peft" also carries the lock's versions of those.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/.gpu-wheels}
pyver=${GPU_PYTHON:-3.12}
wheelhouse=${GRPO_CACHE:-$HOME/.cache/grpo-operator}/wheels
packages=(trl datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection typing-extensions)
# shellcheck disable=SC2206
packages+=(${GPU_WHEELS_EXTRA:-})
py=$(bash "$root/.ci/python-env.sh" path 2>/dev/null)/bin/python
[[ -x $py ]] || py=python3

mkdir -p "$out"
rm -f "$out"/*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for name in "${packages[@]}"; do
  pin=$(grep -iE "^${name//-/[-_]}==" "$root/requirements/constraints.txt" || true)
  [[ -n $pin ]] || { echo "gpu_wheels: $name is not in requirements/constraints.txt" >&2; exit 1; }
  args=(download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" -d "$out" "$pin")
  # multiprocess ships one pure wheel per Python (py311, py312, ...), which pip's tags would let stand
  # in for another: take it from the wheelhouse only with the exact tag.
  local_ok=1
  if [[ $name == multiprocess ]] && ! compgen -G "$wheelhouse/multiprocess-${pin#*==}-py${pyver//./}-none-any.whl" >/dev/null; then
    local_ok=0
  fi
  if ! { ((local_ok)) && "$py" -m pip "${args[@]}" --no-index --find-links "$wheelhouse" 2>/dev/null; }; then
    echo "gpu_wheels: $pin for Python $pyver is not in the wheelhouse; fetching it" >&2
    "$py" -m pip "${args[@]}"
  fi
done
total=0
for f in "$out"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '%10d  %s\n' "$size" "${f##*/}"
done
awk -v t="$total" 'BEGIN { printf "%10d  total (%.1f MiB; the device carries 64 MiB in all)\n", t, t / 1048576 }'

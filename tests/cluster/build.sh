#!/usr/bin/env bash
# Build the test control plane's programs from the Go module proxy, with pinned
# versions, into a cache directory keyed by those versions:
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm
#
# Usage:  tests/cluster/build.sh            # build (or reuse) and print the bin dir
#         tests/cluster/build.sh --print    # print the bin dir the pins map to; no build
#         tests/cluster/build.sh --check    # exit 0 if all binaries are cached, else 1
#
# The last line printed on stdout is always the bin dir. Build logs go to
# <bin dir>.log (one file, appended). Idempotent: a second run finds every binary
# and does nothing. Env: GRPO_CACHE (default ~/.cache/grpo-operator),
# GRPO_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

# ---- pins (change here; the cache key follows) --------------------------------
K8S_VERSION=v1.36.3          # k8s.io/kubernetes; staging modules pinned to v0.36.3
ETCD_VERSION=v3.7.3          # go.etcd.io/etcd/server/v3 (its main.go is the etcd binary)
KWOK_VERSION=v0.8.0          # sigs.k8s.io/kwok/cmd/kwok
HELM_VERSION=v3.22.0         # helm.sh/helm/v3/cmd/helm
RECIPE=1                     # bump when the way we build changes
# -------------------------------------------------------------------------------

CACHE="${GRPO_CACHE:-$HOME/.cache/grpo-operator}"
JOBS="${GRPO_BUILD_JOBS:-2}"
GO_VERSION="$(go env GOVERSION 2>/dev/null || echo none)"
KEY_TEXT="k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION go=$GO_VERSION recipe=$RECIPE goarch=$(go env GOOS 2>/dev/null)-$(go env GOARCH 2>/dev/null)"
KEY="$(printf '%s' "$KEY_TEXT" | sha256sum | cut -c1-12)"
BIN_DIR="$CACHE/k8s-bin-$KEY"
LOG="$BIN_DIR.log"
WORK="$CACHE/k8s-build-$KEY"   # wrapper modules (kept: cheap, useful for debugging)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
  return 0
}

case "${1:-}" in
  --print) echo "$BIN_DIR"; exit 0 ;;
  --check) all_present && { echo "$BIN_DIR"; exit 0; } || exit 1 ;;
  "") ;;
  *) echo "usage: $0 [--print|--check]" >&2; exit 2 ;;
esac

if all_present; then
  echo "cluster binaries: cached ($KEY_TEXT)" >&2
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
mkdir -p "$BIN_DIR" "$WORK"
# one build at a time per cache key (another session or test run may be building)
if command -v flock >/dev/null; then
  exec 9>"$WORK.lock"
  flock -n 9 || { echo "build.sh: waiting for another build of $BIN_DIR" >&2; flock 9; }
  if all_present; then echo "cluster binaries: built by another run" >&2; echo "$BIN_DIR"; exit 0; fi
fi
export GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
echo "=== build $(date -Is) $KEY_TEXT" >>"$LOG"
START=$(date +%s)

step() {  # step NAME CMD...: run with output to the log, fail loudly with the log tail
  local name="$1"; shift
  local t0=$(date +%s)
  echo "--- $name: $*" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    echo "build.sh: FAILED at '$name' (log: $LOG); last lines:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  echo "  $name ($(( $(date +%s) - t0 ))s)" >&2
}

gobuild() {  # gobuild DIR OUT PKG [ldflags...]
  local dir="$1" out="$2" pkg="$3"; shift 3
  local ld="-s -w $*"
  (cd "$dir" && go build -p "$JOBS" -trimpath -ldflags="$ld" -o "$BIN_DIR/.$out.tmp" "$pkg") &&
    mv -f "$BIN_DIR/.$out.tmp" "$BIN_DIR/$out"
}

# ---- kubernetes ---------------------------------------------------------------
K8S_MINOR="${K8S_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
k8s_dir="$WORK/kubernetes"
if ! { [[ -x "$BIN_DIR/kube-apiserver" ]] && [[ -x "$BIN_DIR/kube-controller-manager" ]] &&
       [[ -x "$BIN_DIR/kube-scheduler" ]] && [[ -x "$BIN_DIR/kubectl" ]]; }; then
  mkdir -p "$k8s_dir"
  if [[ ! -f "$k8s_dir/.ready-$K8S_VERSION" ]]; then
    step "download k8s.io/kubernetes@$K8S_VERSION" \
      go mod download "k8s.io/kubernetes@$K8S_VERSION"
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    # every `k8s.io/X => ./staging/src/k8s.io/X` becomes `k8s.io/X => k8s.io/X v0.N.P`
    replaces="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9.-]*\) => \./staging/src/.*#\1#p' "$gomod" |
      while read -r m; do echo "replace $m => $m $STAGING_VERSION"; done)"
    [[ -n "$replaces" ]] || { echo "build.sh: no staging replaces found in $gomod" >&2; exit 1; }
    tools="$(printf 'tool k8s.io/kubernetes/cmd/%s\n' kube-apiserver kube-controller-manager kube-scheduler kubectl)"
    rm -f "$k8s_dir/go.mod" "$k8s_dir/go.sum"
    {
      echo "module grpo.test/clusterbin"; echo
      echo "go ${GO_VERSION#go}"; echo
      echo "require k8s.io/kubernetes $K8S_VERSION"; echo
      echo "$replaces"; echo
      echo "$tools"
    } >"$k8s_dir/go.mod"
    step "resolve kubernetes deps (go mod tidy)" bash -c "cd '$k8s_dir' && go mod tidy"
    touch "$k8s_dir/.ready-$K8S_VERSION"
  fi
  BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  K8S_LD=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LD+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
    K8S_LD+=" -X $p.gitTreeState=clean -X $p.buildDate=$BUILD_DATE -X $p.gitCommit=module-proxy"
  done
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN_DIR/$b" ]] && continue
    step "build $b $K8S_VERSION" gobuild "$k8s_dir" "$b" "k8s.io/kubernetes/cmd/$b" $K8S_LD
  done
fi

# ---- etcd -----------------------------------------------------------------------
if [[ ! -x "$BIN_DIR/etcd" ]]; then
  d="$WORK/etcd"
  mkdir -p "$d"
  if [[ ! -f "$d/.ready-$ETCD_VERSION" ]]; then
    rm -f "$d/go.mod" "$d/go.sum"
    printf 'module grpo.test/clusterbin\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' \
      "${GO_VERSION#go}" "$ETCD_VERSION" >"$d/go.mod"
    step "resolve etcd deps (go mod tidy)" bash -c "cd '$d' && go mod tidy"
    touch "$d/.ready-$ETCD_VERSION"
  fi
  step "build etcd $ETCD_VERSION" gobuild "$d" etcd go.etcd.io/etcd/server/v3 \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=module-proxy"
fi

# ---- kwok -----------------------------------------------------------------------
if [[ ! -x "$BIN_DIR/kwok" ]]; then
  d="$WORK/kwok"
  mkdir -p "$d"
  if [[ ! -f "$d/.ready-$KWOK_VERSION" ]]; then
    rm -f "$d/go.mod" "$d/go.sum"
    printf 'module grpo.test/clusterbin\n\ngo %s\n\nrequire sigs.k8s.io/kwok %s\n\ntool sigs.k8s.io/kwok/cmd/kwok\n' \
      "${GO_VERSION#go}" "$KWOK_VERSION" >"$d/go.mod"
    step "resolve kwok deps (go mod tidy)" bash -c "cd '$d' && go mod tidy"
    touch "$d/.ready-$KWOK_VERSION"
  fi
  step "build kwok $KWOK_VERSION" gobuild "$d" kwok sigs.k8s.io/kwok/cmd/kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
fi

# ---- helm -----------------------------------------------------------------------
if [[ ! -x "$BIN_DIR/helm" ]]; then
  d="$WORK/helm"
  mkdir -p "$d"
  if [[ ! -f "$d/.ready-$HELM_VERSION" ]]; then
    rm -f "$d/go.mod" "$d/go.sum"
    printf 'module grpo.test/clusterbin\n\ngo %s\n\nrequire helm.sh/helm/v3 %s\n\ntool helm.sh/helm/v3/cmd/helm\n' \
      "${GO_VERSION#go}" "$HELM_VERSION" >"$d/go.mod"
    step "resolve helm deps (go mod tidy)" bash -c "cd '$d' && go mod tidy"
    touch "$d/.ready-$HELM_VERSION"
  fi
  step "build helm $HELM_VERSION" gobuild "$d" helm helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
fi

all_present || { echo "build.sh: some binaries are missing after the build (log: $LOG)" >&2; exit 1; }
printf '%s\n' "$KEY_TEXT" >"$BIN_DIR/VERSIONS"
echo "cluster binaries: built in $(( $(date +%s) - START ))s ($KEY_TEXT); log: $LOG" >&2
echo "$BIN_DIR"

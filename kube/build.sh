#!/usr/bin/env bash
# Builds what the local cluster runs that Debian does not package, from the Go module proxy, outside
# the clone (WAITROOM_KUBE_DIR, default ~/.cache/waitroom/kube):
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#               from k8s.io/kubernetes, into bin-<KUBE_VERSION>/
#   coredns     the cluster DNS (github.com/coredns/coredns), into coredns-<COREDNS_VERSION>/
# `kube/build.sh` builds both (`kube/build.sh kubernetes|coredns` one). A finished build is reused:
# its folder only appears, complete, once everything linked (built in a temporary folder, renamed).
#
# `go install k8s.io/kubernetes/cmd/...@vX` is refused (kubernetes' go.mod replaces its staging
# modules with ./staging paths at v0.0.0), so this builds a small wrapper module that requires
# k8s.io/kubernetes and replaces every staging module it requires at v0.0.0 with the published
# k8s.io/<name> v0.<minor>.<patch>. Cold: ~30 s download + ~15-20 min compiling on 2 cores (run
# under nice so other work keeps the machine); warm Go caches: seconds.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
KUBE_DIR="${WAITROOM_KUBE_DIR:-${WAITROOM_CACHE_DIR:-$HOME/.cache/waitroom}/kube}"
BIN="$KUBE_DIR/bin-$KUBE_VERSION"
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

log() { printf 'kube-build: %s\n' "$*" >&2; }

have_all() {
  local c
  for c in "${COMMANDS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
}

build_kubernetes() {
if have_all; then
  log "cached: $BIN"
  return 0
fi
command -v go >/dev/null || { log "needs the Go toolchain (go 1.24+) on PATH"; exit 1; }

started=$(date +%s)
mkdir -p "$KUBE_DIR"
exec 9>"$KUBE_DIR/build-$KUBE_VERSION.lock"
flock 9
if have_all; then log "cached (built meanwhile): $BIN"; return 0; fi

mod="$KUBE_DIR/src-$KUBE_VERSION"
mkdir -p "$mod"
minor_patch="${KUBE_VERSION#v1.}"           # 37.2
staging_version="v0.$minor_patch"           # v0.37.2
pkg_version="k8s.io/component-base/version"
cg_version="k8s.io/client-go/pkg/version"

log "downloading k8s.io/kubernetes@$KUBE_VERSION from the module proxy"
kube_gomod=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')

# The staging modules: every k8s.io/<name> kubernetes requires at v0.0.0 and that the module proxy
# publishes (sample-cli-plugin and sample-controller are not published and not needed).
mapfile -t staging < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$kube_gomod" |
  grep -v -e '^k8s.io/sample-' | sort -u)
log "${#staging[@]} staging modules -> $staging_version"

go_line=$(awk '$1 == "go" {print $2; exit}' "$kube_gomod")
{
  echo "module waitroom.local/kubebuild"
  echo
  echo "go $go_line"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  for c in "${COMMANDS[@]}"; do echo "tool k8s.io/kubernetes/cmd/$c"; done
  echo
  for m in "${staging[@]}"; do echo "replace $m => $m $staging_version"; done
} >"$mod/go.mod"

pushd "$mod" >/dev/null
log "go mod tidy (resolves the dependency graph)"
GOFLAGS=-mod=mod go mod tidy

ldflags="-s -w"
for p in "$pkg_version" "$cg_version"; do
  ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor_patch%%.*}"
  ldflags+=" -X $p.gitTreeState=clean"
done

tmp="$KUBE_DIR/.bin-$KUBE_VERSION.partial"
rm -rf "$tmp" && mkdir -p "$tmp"
jobs="${KUBE_BUILD_JOBS:-2}"
pkgs=()
for c in "${COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
log "compiling ${COMMANDS[*]} (go build -p $jobs under nice; ~15-20 min cold on 2 cores)"
# Progress: go build -v prints each package as it is compiled; report a count once a minute.
progress="$KUBE_DIR/build-$KUBE_VERSION.progress"
: >"$progress"
(
  while sleep 60; do
    log "  ... $(wc -l <"$progress") packages compiled, $(( $(date +%s) - started )) s"
  done
) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true' EXIT
CGO_ENABLED=0 GOMAXPROCS="$jobs" nice -n 19 go build -v -p "$jobs" -trimpath \
  -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}" 2>"$progress"
kill "$ticker" 2>/dev/null || true
rm -rf "$BIN"
mv "$tmp" "$BIN"
popd >/dev/null
trap - EXIT
log "built $BIN in $(( $(date +%s) - started )) s ($(du -sh "$BIN" | cut -f1))"
}

# CoreDNS: `go install` of the published module (no replace directives to work around); ~7 min cold.
build_coredns() {
  local out="$KUBE_DIR/coredns-$COREDNS_VERSION" started
  if [ -x "$out/coredns" ]; then log "cached: $out"; return 0; fi
  command -v go >/dev/null || { log "needs the Go toolchain (go 1.24+) on PATH"; exit 1; }
  started=$(date +%s)
  mkdir -p "$KUBE_DIR"
  exec 8>"$KUBE_DIR/build-coredns-$COREDNS_VERSION.lock"
  flock 8
  if [ -x "$out/coredns" ]; then log "cached (built meanwhile): $out"; return 0; fi
  local tmp="$KUBE_DIR/.coredns-$COREDNS_VERSION.partial" jobs="${KUBE_BUILD_JOBS:-2}"
  rm -rf "$tmp" && mkdir -p "$tmp"
  log "compiling coredns $COREDNS_VERSION (go install -p $jobs under nice; ~7 min cold on 2 cores)"
  GOBIN="$tmp" CGO_ENABLED=0 GOMAXPROCS="$jobs" GOFLAGS=-mod=mod nice -n 19 \
    go install -p "$jobs" -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  rm -rf "$out"
  mv "$tmp" "$out"
  log "built $out in $(( $(date +%s) - started )) s"
}

case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  coredns) build_coredns ;;
  all) build_kubernetes; build_coredns ;;
  *) log "usage: kube/build.sh [all|kubernetes|coredns]"; exit 2 ;;
esac

#!/usr/bin/env bash
# Builds the real servers the integration tests and the demo run against (kube-apiserver,
# kube-controller-manager, etcd, MinIO) from source through the Go module proxy, because this
# machine reaches no release downloads. Binaries are cached outside the clone, keyed by version,
# so only the first run pays for the build.
#
# Usage: tests/harness/build-servers.sh [component ...]   (default: all)
# Prints the cache directory of each built binary as NAME=PATH lines on the last lines of stdout.
set -euo pipefail

KUBE_VERSION="${CELLAR_KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${CELLAR_ETCD_VERSION:-v3.6.16}"
# MinIO's upstream repository is no longer maintained: pin one commit (pseudo-version).
MINIO_VERSION="${CELLAR_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
# Prometheus 3.x's Go module is versioned v0.3xx (v0.316.0 is Prometheus 3.16); the alert tests run it.
PROMETHEUS_VERSION="${CELLAR_PROMETHEUS_VERSION:-v0.316.0}"
# Only the CRDs of prometheus-operator are used (PrometheusRule), read from its module.
PROMETHEUS_OPERATOR_VERSION="${CELLAR_PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# Shopify's toxiproxy: TCP faults (latency, bandwidth, resets) between the jobs and the servers.
TOXIPROXY_VERSION="${CELLAR_TOXIPROXY_VERSION:-v2.5.0}"
# rhysd/actionlint: lints the hosted CI workflow (.github/workflows), which cannot run on these machines.
ACTIONLINT_VERSION="${CELLAR_ACTIONLINT_VERSION:-v1.7.12}"
# Helm renders, lints and installs the chart (cronjobs/); Helm 3 renders it too (a test compares the two).
HELM_VERSION="${CELLAR_HELM_VERSION:-v4.3.1}"
HELM3_VERSION="${CELLAR_HELM3_VERSION:-v3.22.0}"
# The storage emulators the Azure Blob and GCS suites run against: fsouza/fake-gcs-server (Go) and
# Microsoft's Azurite (npm); and the clients no one here wrote that read back what cellar wrote there
# (the Azure CLI and gsutil, from PyPI, each in a virtualenv of its own, as their dependencies clash).
FAKE_GCS_VERSION="${CELLAR_FAKE_GCS_VERSION:-v1.56.1}"
AZURITE_VERSION="${CELLAR_AZURITE_VERSION:-3.37.0}"
AZURE_CLI_VERSION="${CELLAR_AZURE_CLI_VERSION:-2.91.0}"
GSUTIL_VERSION="${CELLAR_GSUTIL_VERSION:-5.38}"
CACHE="${CELLAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cellar}"

log() { printf '[build-servers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed: install Go 1.24 or newer (https://go.dev/doc/install) or 'apt-get install golang-go', then rerun."

# go build -v prints one line per package it compiles; turn that into a progress line every 25.
progress() {
  local what=$1 n=0 start=$SECONDS
  while IFS= read -r line; do
    n=$((n + 1))
    # Package paths are progress; compiler diagnostics (file.go:line:...) and go's own messages are not.
    case "$line" in *.go:[0-9]*|"# "*|go:\ *) printf '%s\n' "$line" >&2 ;; esac
    if (( n % 25 == 0 )); then log "$what: $n packages compiled ($((SECONDS - start)) s)"; fi
  done
  log "$what: $n packages compiled in $((SECONDS - start)) s"
}

build_kube() {
  local name=$1 out="$CACHE/bin/kubernetes-$KUBE_VERSION/$1"
  if [[ -x "$out" ]]; then log "$name $KUBE_VERSION: cached at $out"; echo "$name=$out"; return; fi
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local staging="v0.${KUBE_VERSION#v1.}"
  local mod="$CACHE/src/kubernetes-$KUBE_VERSION"
  mkdir -p "$mod" "$(dirname "$out")"
  # The marker names the commands resolved, so adding one (kubelet, kube-scheduler) resolves again on an older cache.
  if [[ ! -f "$mod/.ready-with-node" ]]; then
    log "$name $KUBE_VERSION: preparing a scratch module (k8s.io/kubernetes replaces its staging modules with local paths)"
    local gomod
    gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION through the Go module proxy (check GOPROXY)"
    rm -f "$mod/go.mod" "$mod/go.sum"
    (cd "$mod" && go mod init cellar.dev/kube-build >/dev/null 2>&1)
    grep -E '^godebug ' "$gomod" >> "$mod/go.mod" || true
    local replaces=()
    while read -r m; do replaces+=("-replace=$m=$m@$staging"); done < <(
      sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$gomod")
    (( ${#replaces[@]} > 0 )) || die "found no staging replace lines in $gomod"
    (cd "$mod" && go mod edit "${replaces[@]}")
    log "$name $KUBE_VERSION: resolving modules (go get; downloads a few hundred MB the first time)"
    (cd "$mod" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
        "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION" \
        "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubelet@$KUBE_VERSION" \
        "k8s.io/kubernetes/cmd/kube-scheduler@$KUBE_VERSION" 2>&1 \
        | tail -n 3 >&2)
    touch "$mod/.ready-with-node"
  fi
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  log "$name $KUBE_VERSION: compiling (several minutes on two cores the first time)"
  (cd "$mod" && go build -v -trimpath -ldflags "$ld" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name" 2>&1) | progress "$name"
  [[ -x "$out.tmp" ]] || die "building $name $KUBE_VERSION failed (see the compiler output above)"
  mv "$out.tmp" "$out"
  echo "$name=$out"
}

build_etcd() {
  local out="$CACHE/bin/etcd-$ETCD_VERSION/etcd"
  if [[ -x "$out" ]]; then log "etcd $ETCD_VERSION: cached at $out"; echo "etcd=$out"; return; fi
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod" "$(dirname "$out")"
  if [[ ! -f "$mod/.ready" ]]; then
    rm -f "$mod/go.mod" "$mod/go.sum"
    (cd "$mod" && go mod init cellar.dev/etcd-build >/dev/null 2>&1)
    log "etcd $ETCD_VERSION: resolving modules"
    (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>&1 | tail -n 3 >&2)
    touch "$mod/.ready"
  fi
  log "etcd $ETCD_VERSION: compiling"
  (cd "$mod" && go build -v -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3 2>&1) | progress etcd
  [[ -x "$out.tmp" ]] || die "building etcd $ETCD_VERSION failed (see the compiler output above)"
  mv "$out.tmp" "$out"
  echo "etcd=$out"
}

# go_install NAME VERSION PACKAGE@VERSION BINARY [DIR]: `go install` a module's command into the cache as
# DIR-VERSION/NAME (DIR: NAME by default)
# (BINARY: the name go install gives it), unless it is there already; prints NAME=PATH.
go_install() {
  local name=$1 version=$2 package=$3 binary=$4
  local out="$CACHE/bin/${5:-$name}-$version/$name"
  if [[ -x "$out" ]]; then log "$name $version: cached at $out"; echo "$name=$out"; return; fi
  mkdir -p "$(dirname "$out")"
  local gobin; gobin=$(mktemp -d)
  log "$name $version: compiling with go install (several minutes the first time)"
  (GOBIN="$gobin" go install -v -trimpath -ldflags "-s -w" "$package" 2>&1) | progress "$name"
  [[ -x "$gobin/$binary" ]] || die "building $name $version failed (see the compiler output above)"
  mv "$gobin/$binary" "$out"; rmdir "$gobin"
  echo "$name=$out"
}

build_minio() { go_install minio "$MINIO_VERSION" "github.com/minio/minio@$MINIO_VERSION" minio; }

build_prometheus() {
  go_install "$1" "$PROMETHEUS_VERSION" "github.com/prometheus/prometheus/cmd/$1@$PROMETHEUS_VERSION" "$1" prometheus
}

build_toxiproxy() {
  go_install toxiproxy-server "$TOXIPROXY_VERSION" "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" \
    server toxiproxy
}

build_actionlint() {
  go_install actionlint "$ACTIONLINT_VERSION" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" actionlint
}

build_helm() {
  local major=${HELM_VERSION%%.*}
  go_install helm "$HELM_VERSION" "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" helm
}

build_helm3() { go_install helm3 "$HELM3_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM3_VERSION" helm; }

build_fake_gcs() {
  go_install fake-gcs-server "$FAKE_GCS_VERSION" "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION" fake-gcs-server
}

install_azurite() {
  local out="$CACHE/bin/azurite-$AZURITE_VERSION"
  if [[ ! -x "$out/node_modules/.bin/azurite-blob" ]]; then
    command -v npm >/dev/null 2>&1 || die "npm is not installed: install Node.js 20 or newer with npm, then rerun."
    log "azurite $AZURITE_VERSION: installing with npm"
    rm -rf "$out"; mkdir -p "$out"
    npm install --prefix "$out" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2 \
      || die "npm install azurite@$AZURITE_VERSION failed (see npm's output above)"
  fi
  log "azurite $AZURITE_VERSION: $out/node_modules/.bin/azurite-blob"
  echo "azurite-blob=$out/node_modules/.bin/azurite-blob"
}

# pip_tool NAME PACKAGE==VERSION: a PyPI command line tool in a virtualenv of its own under the cache.
pip_tool() {
  local name=$1 requirement=$2 python=${PYTHON:-python3}
  local out="$CACHE/tools/$name-${requirement##*==}"
  if [[ ! -f "$out/.ready" ]]; then
    log "$requirement: installing into a virtualenv of its own (a few minutes the first time)"
    rm -rf "$out"
    "$python" -m venv "$out" >&2
    "$out/bin/python" -m pip install -q --disable-pip-version-check "$requirement" >&2 \
      || die "pip install $requirement failed (see pip's output above)"
    touch "$out/.ready"
  fi
  log "$name: $out/bin/$name"
  echo "$name=$out/bin/$name"
}

fetch_prometheus_operator_crds() {
  local out="$CACHE/share/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  if [[ ! -f "$out/.ready" ]]; then
    local dir
    dir=$(cd "$(mktemp -d)" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [[ -d "$dir/example/prometheus-operator-crd" ]] || die "could not download prometheus-operator $PROMETHEUS_OPERATOR_VERSION through the Go module proxy"
    mkdir -p "$out"
    cp "$dir"/example/prometheus-operator-crd/*.yaml "$out/"
    touch "$out/.ready"
  fi
  log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs in $out"
  echo "prometheus-operator-crds=$out"
}

components=("$@")
(( ${#components[@]} > 0 )) || components=(etcd minio kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
# Several setups may run at once on one machine (CI beside a developer's run, worktrees): each component is built
# under a lock of its own group, so a second setup waits and then finds it cached, instead of racing to one file.
mkdir -p "$CACHE/locks"
lock_group() {
  case "$1" in
    kube-*|kubectl|kubelet) echo kubernetes ;;
    prometheus|promtool) echo prometheus ;;
    *) echo "$1" ;;
  esac
}
for c in "${components[@]}"; do
  exec {lock}>"$CACHE/locks/$(lock_group "$c").lock"
  flock -n "$lock" || { log "$c: another setup is building it; waiting for it"; flock "$lock"; }
  case "$c" in
    etcd) build_etcd ;;
    minio) build_minio ;;
    kube-apiserver|kube-controller-manager|kubectl|kubelet|kube-scheduler) build_kube "$c" ;;
    prometheus|promtool) build_prometheus "$c" ;;
    prometheus-operator-crds) fetch_prometheus_operator_crds ;;
    toxiproxy-server) build_toxiproxy ;;
    actionlint) build_actionlint ;;
    helm) build_helm ;;
    helm3) build_helm3 ;;
    fake-gcs-server) build_fake_gcs ;;
    azurite) install_azurite ;;
    az) pip_tool az "azure-cli==$AZURE_CLI_VERSION" ;;
    gsutil) pip_tool gsutil "gsutil==$GSUTIL_VERSION" ;;
    *) die "unknown component '$c' (known: etcd minio kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler prometheus promtool prometheus-operator-crds toxiproxy-server actionlint helm helm3 fake-gcs-server azurite az gsutil)" ;;
  esac
  exec {lock}>&-
done

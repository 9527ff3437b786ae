#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh machine, idempotently:
#   - Debian packages: PostgreSQL server and client (pg_dump, pg_restore, initdb), pgbench, age, zstd, and for
#     the real node containerd, runc, the CNI plugins and debootstrap
#   - PostgreSQL 14 to 18 for the version matrix (postgres-majors.sh), cached outside the clone
#   - the Go-built servers and tools (kube-apiserver, kube-scheduler, kubelet, kubectl, etcd, MinIO, Prometheus,
#     promtool, actionlint, Helm 4 and 3, fake-gcs-server), Azurite (npm), the Azure CLI and gsutil (PyPI), PySpark
#     (PyPI) with the Iceberg Spark runtime (Maven Central), cached outside the clone
#   - the Python environment in .venv (pip's cache lives outside the clone)
# Prints where everything is; fails with a message naming what is missing and how to fix it.
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf '[setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_apt=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" || ! -x "$pg_bin/pg_ctl" ]]; then need_apt+=(postgresql); fi
command -v pg_dump >/dev/null 2>&1 || need_apt+=(postgresql-client)
[[ -n "$pg_bin" && -x "$pg_bin/pgbench" ]] || need_apt+=(postgresql)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
# Stock clients the tests read cellar's encrypted backups with: age -d | zstd -d | pg_restore.
command -v age >/dev/null 2>&1 || need_apt+=(age)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
# The packaging test installs the wheel into a venv of the system Python, as the images do.
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
command -v sudo >/dev/null 2>&1 || command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
# The real node of the end-to-end tests (tests/harness/realnode.py): a container runtime, CNI plugins, the
# root filesystem cellar's test image is built on (tests/harness/image.py), and the shell linter actionlint uses.
command -v containerd >/dev/null 2>&1 || need_apt+=(containerd)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need_apt+=(containernetworking-plugins)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
# Apache Spark reads the Iceberg archives in the tests: it runs on Java 17, and Maven fetches its Iceberg runtime.
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# The libraries the builds of PostgreSQL 14 to 18 in the version matrix link against (postgres-majors.sh).
for lib in libicu72 libssl3 libxml2 liblz4-1 libzstd1 libgssapi-krb5-2 libreadline8; do
  dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$lib")
done
if (( ${#need_apt[@]} > 0 )); then
  if [[ $(id -u) -ne 0 ]]; then
    die "missing Debian packages: ${need_apt[*]}. Install them: sudo apt-get install -y ${need_apt[*]}"
  fi
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi
# A just-installed Debian PostgreSQL starts a cluster of its own; the tests start their own servers.
if [[ " ${need_apt[*]} " == *" postgresql "* ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
  for cluster in /etc/postgresql/*/main; do
    [[ -d "$cluster" ]] || continue
    v=$(basename "$(dirname "$cluster")"); pg_ctlcluster "$v" main stop >/dev/null 2>&1 || true
  done
fi

# Go 1.24+ is needed by Kubernetes 1.34; an older go fetches a newer toolchain through the module proxy.
go_version=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [[ "$(printf '%s\n1.24\n' "$go_version" | sort -V | head -n 1)" != "1.24" ]]; then
  export GOTOOLCHAIN=go1.25.5
  log "go $go_version is older than 1.24: using toolchain $GOTOOLCHAIN from the Go module proxy"
fi

command -v npm >/dev/null 2>&1 || need_node=1
if [[ -n "${need_node:-}" ]]; then
  [[ $(id -u) -eq 0 ]] || die "npm is not installed (Azurite, the Azure Blob Storage emulator, comes from npm): sudo apt-get install -y nodejs npm"
  log "installing Debian packages: nodejs npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >&2
fi
# The Go builds, and beside them the emulators and the clients that read back what cellar wrote to them, and
# PySpark with the Iceberg Spark runtime (npm, pip and Maven downloads, which overlap the compiling).
bash tests/harness/build-servers.sh azurite az gsutil spark >/tmp/cellar-setup-emulators.$$ 2>&1 &
emulators=$!
bash tests/harness/build-servers.sh etcd minio kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl \
  prometheus promtool prometheus-operator-crds toxiproxy-server actionlint helm helm3 fake-gcs-server >/dev/null
if ! wait "$emulators"; then
  cat /tmp/cellar-setup-emulators.$$ >&2; rm -f /tmp/cellar-setup-emulators.$$
  die "installing Azurite, the Azure CLI, gsutil or Spark failed (see above)"
fi
grep -v '=' /tmp/cellar-setup-emulators.$$ >&2 || true
rm -f /tmp/cellar-setup-emulators.$$

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is needed; $("$PYTHON" --version 2>&1) found. Set PYTHON=/path/to/python3.11"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cellar-installed
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  log "installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[dev]' >&2
  touch "$stamp"
fi
# Real PostgreSQL 14 to 18 (server and client tools) for the version matrix, cached outside the clone.
bash tests/harness/postgres-majors.sh >/dev/null
log "ready: PostgreSQL in ${pg_bin:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}, servers in ${CELLAR_CACHE:-$HOME/.cache/cellar}/bin, Python in .venv"

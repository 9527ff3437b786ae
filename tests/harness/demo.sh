#!/usr/bin/env bash
# The demo (README's first command): installs what is missing, then runs tests/harness/demo.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/harness/setup.sh
exec .venv/bin/python -m tests.harness.demo "$@"

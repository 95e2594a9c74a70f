#!/usr/bin/env bash
# Sets up the example app on a fresh machine and runs it (prints its URL).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[example,jwt,ratelimit,client,ikomia]"
exec .venv/bin/python -m example_app "$@"

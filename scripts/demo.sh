#!/usr/bin/env bash
# Sets up the example app on a fresh machine and runs it (prints its URL). Options are the
# example app's (python -m example_app --help), e.g. --port 8001 --stage-delay-ms 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="example,jwt,ratelimit,client,ikomia"
STAMP=".venv/.demo-installed"

step() { printf '== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating a virtual environment in .venv"
  "$PYTHON" -m venv .venv
fi
# Install again only when pyproject.toml changed since the last install.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  step "upgrading pip"
  .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip
  step "installing fastapi-ikstream[$EXTRAS]: pip lists each package as it goes"
  .venv/bin/python -m pip install --disable-pip-version-check -e ".[$EXTRAS]"
  touch "$STAMP"
  step "installed"
else
  step "packages already installed in .venv (delete $STAMP to install again)"
fi
step "starting the example app (Ctrl-C stops it)"
exec .venv/bin/python -m example_app "$@"

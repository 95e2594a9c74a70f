#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs the whole suite:
# lint, format check, type check, tests (with coverage), and the docs build.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# Debian packages: Chromium for the browser tests, redis-server for the Redis store tests.
if ! command -v chromium >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium redis-server >/dev/null
fi

# Python packages, in a virtual environment of the project's own.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,docs]"

# npm packages for the browser and Node tests (exact versions in tests/node/package-lock.json).
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

echo "== ruff check";          .venv/bin/ruff check fastapi_ikstream example_app bench tests
echo "== ruff format --check"; .venv/bin/ruff format --check fastapi_ikstream example_app bench tests
echo "== mypy --strict";       .venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider --cov --cov-report=term "$@"
echo "== mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"

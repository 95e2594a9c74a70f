#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs the whole suite:
# lint, format check, type check, tests (with coverage), and the docs build.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# Debian packages: Chromium for the browser tests, redis-server for the Redis store tests,
# Node.js and npm for the npm clients and the front-end recipes, curl for the README's steps.
missing=()
for pair in chromium:chromium redis-server:redis-server node:nodejs npm:npm curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# Python packages, in a virtual environment of the project's own.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,docs]"

# npm packages, at the versions of the lock files: the SSE clients (tests/node) and esbuild
# with React, Vue and Svelte for the front-end recipes (tests/frontend).
for dir in tests/node tests/frontend; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

echo "== ruff check";          .venv/bin/ruff check fastapi_ikstream example_app bench tests
echo "== ruff format --check"; .venv/bin/ruff format --check fastapi_ikstream example_app bench tests
echo "== mypy --strict";       .venv/bin/mypy   # the package and the example app
# The tests, with a lower bar: strict, except that a test or fixture need not annotate its
# parameters and return (pytest injects fixtures by name) nor call only typed functions.
# The bodies of unannotated tests are still checked (check_untyped_defs, part of strict).
echo "== mypy (tests)"
(cd tests && ../.venv/bin/mypy --config-file ../pyproject.toml \
  --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls .)
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider --cov --cov-report=term "$@"
echo "== mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"

#!/usr/bin/env bash
# Sets up .venv when missing, installs the pinned requirements, lints, and runs the whole test suite
# (printing its 15 slowest tests, so the next slow one shows in every log).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/python -m pytest --durations=15 "$@"

#!/usr/bin/env bash
# Sets up .venv when missing, installs the pinned requirements and opens the app on the shipped weights.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
exec .venv/bin/streamlit run app.py "$@"

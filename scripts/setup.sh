#!/usr/bin/env bash
# Creates .venv in the repository root and installs the project's requirements (idempotent).
# Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$req"
  touch "$stamp"
fi

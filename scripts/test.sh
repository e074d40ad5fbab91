#!/usr/bin/env bash
# Sets up .venv with the test tools, checks style, and runs the test suite (slow benchmarks skipped).
# Extra arguments go to pytest, e.g. scripts/test.sh --runslow -k kernel
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"

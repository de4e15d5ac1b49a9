#!/usr/bin/env bash
# The project's tests: set up, lint, type-check, then the test suite on a real private engine.
# Extra arguments go to pytest (e.g. `bash ci/test.sh -k images`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest"
bash ci/with-engine.sh .venv/bin/pytest "$@"

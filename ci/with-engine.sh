#!/usr/bin/env bash
# Run a command with the private engine up and the images built; stop the engine afterwards if
# this script started it. Usage: ci/with-engine.sh COMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
cli=.venv/bin/pytest-openshell

was_running=0
"$cli" -q engine status >/dev/null 2>&1 && was_running=1
stop_engine() {
    if ((was_running == 0)) && [[ -z ${OPENSHELL_KEEP_ENGINE:-} ]]; then
        "$cli" engine stop || true
    fi
}
trap stop_engine EXIT

"$cli" engine start
"$cli" images build --engine private
"$@"

#!/usr/bin/env bash
# Set everything up and run the conformance suite against the embedded reference gateway.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
set +e
bash ci/with-engine.sh .venv/bin/pytest -p no:cacheprovider conformance "$@"
code=$?
set -e
if ((code == 5)); then
    echo "[conformance] the suite has no tests yet: nothing failed, nothing was proven"
    exit 0
fi
exit $code

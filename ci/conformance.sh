#!/usr/bin/env bash
# Set everything up and run the conformance suite against the embedded reference gateway, with
# every scenario. Extra arguments go to pytest (later ones win: --openshell-scenarios=core, -n 2
# --dist loadgroup, -k ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec bash ci/with-engine.sh .venv/bin/pytest -p no:cacheprovider conformance \
    --openshell-gateway=reference --openshell-scenarios=all --openshell-workload "$@"

#!/usr/bin/env bash
# Set everything up and run the conformance suite against the embedded reference gateway, with
# every scenario, once per transport (CONFORMANCE_TRANSPORTS, default "nssh1 supervisor"). Extra
# arguments go to pytest (later ones win: --openshell-scenarios=core, -n 2 --dist loadgroup,
# -k ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
status=0
for transport in ${CONFORMANCE_TRANSPORTS:-nssh1 supervisor}; do
    echo "== conformance, transport ${transport}" >&2
    bash ci/with-engine.sh .venv/bin/pytest -p no:cacheprovider conformance \
        --openshell-gateway=reference --openshell-scenarios=all \
        --openshell-transport="${transport}" --openshell-workload "$@" || status=$?
done
exit "${status}"

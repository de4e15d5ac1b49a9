#!/usr/bin/env bash
# Set everything up and run the conformance suite against the embedded reference gateway, with
# every scenario and the workload, once per transport in ONE pytest run (CONFORMANCE_TRANSPORTS,
# default "nssh1 supervisor"; spaces or commas): the summary has a table per transport. Extra
# arguments go to pytest (later ones win: --openshell-scenarios=core, -n 2 --dist loadgroup,
# -k ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
transports="$(echo "${CONFORMANCE_TRANSPORTS:-nssh1 supervisor}" | tr -s ' ,' ',' | sed 's/^,//; s/,$//')"
echo "== conformance, transports ${transports}" >&2
exec bash ci/with-engine.sh .venv/bin/pytest -p no:cacheprovider conformance \
    --openshell-gateway=reference --openshell-scenarios=all \
    --openshell-transport="${transports}" --openshell-workload "$@"

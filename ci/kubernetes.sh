#!/usr/bin/env bash
# The real-cluster lane: run the conformance suite against the cluster of the current kube context
# (the kubernetes target: the gateway as a StatefulSet, sandboxes as Sandbox resources). With no
# usable context it prints one line saying why it did nothing and exits 0; that is not a pass, and
# nothing counts it as one. Extra arguments go to pytest (--openshell-kube-context=NAME, -k ...).
# The images must be in the cluster already (README, "Kubernetes": k3d image import ...).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
why=$("$python" - <<'PY' 2>&1 || true
try:
    from openshell_core.errors import OpenShellError
    from openshell_core.kube.cluster import connect
except ImportError as exc:
    print(f"the project is not installed ({exc}); run ci/setup.sh")
else:
    try:
        cluster = connect(None)
        cluster.check_reachable()
    except OpenShellError as exc:
        print(str(exc).splitlines()[0])
PY
)
if [ -n "$why" ]; then
    echo "ci/kubernetes.sh: did nothing (not a pass): $why"
    exit 0
fi
exec .venv/bin/pytest -p no:cacheprovider conformance --openshell-gateway=kubernetes \
    --openshell-scenarios=all "$@"

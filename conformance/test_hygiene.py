"""Property 12: objects without our labels are never touched; what the run makes carries its
label, so the run (or the sweep after a crashed one) can remove it. Files too: the gateway's
host-side files (its mTLS client key) live in the run's private directory, which goes with the run,
and a lock file lives no longer than the operation that took it."""

from __future__ import annotations

import stat

import pytest

from openshell_core import labels
from openshell_core.redaction import SECRET_FILE_NAMES

from ._support import Outcome

#: Every scenario, the negative controls included.
pytestmark = [pytest.mark.openshell_property(number=12), pytest.mark.openshell_traits()]


@pytest.mark.openshell_docker
def test_foreign_objects_beside_the_gateway_are_untouched(lifecycle: Outcome) -> None:
    workload = lifecycle.workload
    assert workload.foreign, "the foreign objects were not made"
    assert workload.foreign_objects() == workload.foreign


@pytest.mark.openshell_docker
def test_every_object_of_the_gateway_carries_the_runs_label(lifecycle: Outcome) -> None:
    engine, gateway = lifecycle.session.engine, lifecycle.gateway
    selector = [f"{labels.MANAGED_BY}={labels.MANAGER}", f"{labels.GATEWAY}={gateway.name}"]
    found = [
        *(c.get("Labels") for c in engine.list_containers(label_filters=selector)),
        *(v.get("Labels") for v in engine.list_volumes(label_filters=selector)),
        *(n.get("Labels") for n in engine.list_networks(label_filters=selector)),
    ]
    assert found, f"no object carries gateway {gateway.name}'s labels"
    run_id = lifecycle.session.run_id
    unlabelled = [found_labels for found_labels in found
                  if (found_labels or {}).get(labels.RUN_ID) != run_id]  # fmt: skip
    assert not unlabelled, f"objects without the run's label: {unlabelled}"


def test_the_gateways_host_files_live_in_the_runs_private_directory(lifecycle: Outcome) -> None:
    directory = lifecycle.session.run_dir
    home = lifecycle.gateway.config_home
    assert home.is_relative_to(directory), f"{home} is outside the run's directory {directory}"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700, "others can read the run's directory"
    readable = [str(path) for path in home.rglob("*")
                if path.name in SECRET_FILE_NAMES and path.stat().st_mode & 0o077]  # fmt: skip
    assert not readable, f"private keys others can read: {readable}"


def test_no_lock_file_of_the_gateway_outlives_its_operations(lifecycle: Outcome) -> None:
    gateway = lifecycle.gateway
    left = sorted(gateway.config_home.rglob(f".{gateway.name}.lock"))
    assert not left, f"lock files left behind: {left}"

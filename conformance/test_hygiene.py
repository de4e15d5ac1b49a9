"""Property 12: objects without our labels are never touched; what the run makes carries its
label, so the run (or the sweep after a crashed one) can remove it."""

from __future__ import annotations

import pytest

from openshell_core import labels

from ._support import Outcome

#: Every scenario, the negative controls included.
pytestmark = [pytest.mark.openshell_property(number=12), pytest.mark.openshell_traits()]


def test_foreign_objects_beside_the_gateway_are_untouched(lifecycle: Outcome) -> None:
    workload = lifecycle.workload
    assert workload.foreign, "the foreign objects were not made"
    assert workload.foreign_objects() == workload.foreign


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

"""Property 10: a failed resume keeps the volume (and the next start resumes); a failed fresh
deploy leaves nothing behind; the error says what failed."""

from __future__ import annotations

import pytest

from openshell_core.errors import OpenShellError
from pytest_openshell import Ability, OpenShellSession
from pytest_openshell.drivers import CanFailDeploy

from ._support import FAILED_RESUME, Outcome, check_sandboxes_listed

pytestmark = pytest.mark.openshell_property(number=10)


@pytest.mark.openshell_traits(FAILED_RESUME)
def test_a_failed_resume_removes_the_container_keeps_the_volume_and_says_why(
    lifecycle: Outcome,
) -> None:
    failed = lifecycle.run.failed_resume
    assert failed is not None, f"scenario {lifecycle.key} recorded no failed resume"
    assert failed.error is not None, "the resume that was made to fail succeeded"
    assert "health" in str(failed.error), f"the error does not say what failed: {failed.error}"
    assert failed.container is None, "the failed resume left its container"
    assert failed.volume is not None, "the failed resume lost the volume"
    network = failed.network
    if network is not None:
        # Kept only while sandboxes are on it: a failed start never pulls them off.
        attached = {info.get("Name", "") for info in (network.get("Containers") or {}).values()}
        assert attached, "the failed resume left an empty network behind"
        assert all(name.startswith("openshell-sandbox-") for name in attached), attached


@pytest.mark.openshell_traits(FAILED_RESUME)
def test_after_a_failed_resume_the_next_start_resumes_every_sandbox(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    check_sandboxes_listed(lifecycle, within=lifecycle.within)


@pytest.mark.openshell_abilities(Ability.FAIL_DEPLOY)
@pytest.mark.openshell_docker
def test_a_failed_fresh_deploy_leaves_nothing_behind(openshell: OpenShellSession) -> None:
    driver = openshell.driver
    assert isinstance(driver, CanFailDeploy)
    spec = openshell.gateway_spec("fail")
    with openshell.access.shared(), pytest.raises(OpenShellError) as failed:
        driver.deploy_failing(spec)
    assert "health" in str(failed.value)
    engine = openshell.engine
    name = f"openshell-cluster-{spec.name}"
    assert engine.inspect_container(name) is None
    assert engine.inspect_volume(name) is None
    assert engine.inspect_network(name) is None

"""The gateway-driver compliance suite: what any driver of ``pytest_openshell.drivers`` must do.

Every test runs for each driver in ``DRIVERS`` (the built-in reference driver, and the worked
example's CLI driver, ``examples/cli_driver.py``) against real gateways on the private engine. The
four verbs are the contract every driver keeps; each optional ability a driver declares (by its
protocol: ``isinstance``) must behave as that protocol says, and an ability it does not declare is
reported as a skip naming it. To hold a driver of your own to the contract, add it to ``DRIVERS``.
The ``kubernetes`` driver is held only to its declarations here (no cluster on this machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import OpenShellError
from openshell_core.host.api_client import GatewayClient
from openshell_core.host.metadata import gateway_dir
from openshell_core.images import ImageSet
from openshell_core.kube.cluster import Cluster
from openshell_core.kube.cluster import client as kube_client
from openshell_core.runs import RunLease, new_run_id, remove_run_objects, runs_dir
from pytest_openshell.drivers import (
    Ability,
    CanAutoBootstrap,
    CanFailDeploy,
    CanFailResume,
    CanForgetHostFiles,
    CanRecreate,
    GatewayDriver,
    GatewayHandle,
    GatewaySpec,
    ListsSandboxContainers,
    ReferenceDriver,
    ReportsDownReason,
    ReportsStateDigests,
    abilities_of,
)
from pytest_openshell.kube_driver import KubeDriver
from pytest_openshell.options import GatewayOptions
from pytest_openshell.session_parts import free_port

EXAMPLE = Path(__file__).parent.parent / "examples" / "cli_driver.py"
#: The gateway's handshake secret on its volume: a new one means a new gateway, the same one a resume.
HANDSHAKE_SECRET = "/var/lib/openshell/secrets/ssh-handshake"


@dataclass
class Rig:
    """What a driver is given by the plugin (the parts of ``OpenShellSession`` drivers use)."""

    engine: Engine
    run_id: str
    run_dir: Path

    @property
    def config_home(self) -> Path:
        path = self.run_dir / "config"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _reference(rig: Rig) -> GatewayDriver:
    return ReferenceDriver(rig.engine, rig.config_home)


def _cli(rig: Rig) -> GatewayDriver:
    spec = importlib.util.spec_from_file_location("cli_driver_compliance", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    driver: GatewayDriver = module.CliDriver(rig)
    return driver


def _kubernetes(rig: Rig) -> GatewayDriver:
    # A client of no cluster: the declarations are held here, the verbs need a cluster with its
    # controllers (tests/test_kube_gateway.py holds the parts the API emulator can check).
    return KubeDriver(Cluster(kube_client.ApiClient(), "compliance"), rig.config_home, rig.run_id)


#: Driver name -> how to make it, and the abilities it declares.
DRIVERS: dict[str, tuple[Callable[[Rig], GatewayDriver], frozenset[Ability]]] = {
    "reference": (_reference, frozenset(Ability)),
    "cli-example": (_cli, frozenset({Ability.SANDBOX_CONTAINERS, Ability.STATE_DIGESTS})),
    "kubernetes": (
        _kubernetes,
        frozenset(
            {
                Ability.RECREATE,
                Ability.FORGET_HOST_FILES,
                Ability.STATE_DIGESTS,
                Ability.DOWN_REASON,
                Ability.SANDBOX_CONTAINERS,
            }
        ),
    ),
}
#: Drivers whose gateways cannot be deployed on this machine (no cluster: only their declarations
#: are held to them here; ci/kubernetes.sh runs the suite on a cluster).
NOT_DEPLOYABLE_HERE = frozenset({"kubernetes"})


@dataclass
class Subject:
    """One driver under test, and the gateways it deployed (destroyed at the end)."""

    name: str
    driver: GatewayDriver
    rig: Rig
    images: ImageSet
    made: list[GatewayHandle]

    def spec(self) -> GatewaySpec:
        return GatewaySpec(
            name=f"dc{self.rig.run_id[:6]}{secrets.token_hex(3)}",
            port=free_port(),
            options=GatewayOptions(self.images),
            run_id=self.rig.run_id,
        )

    def deploy(self) -> GatewayHandle:
        gateway = self.driver.deploy(self.spec())
        self.made.append(gateway)
        return gateway


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test runs with every driver that declares the ability it checks (``needs_ability``):
    an ability a driver lacks is not a test of it, so it is neither run nor reported as skipped
    (``test_the_driver_is_a_gateway_driver_with_exactly_its_declared_abilities`` holds the
    declarations to the drivers)."""
    if "subject" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("needs_ability")
    names = [
        name
        for name in sorted(DRIVERS)
        if (marker is None or marker.args[0] in DRIVERS[name][1])
        and name not in NOT_DEPLOYABLE_HERE
    ]
    metafunc.parametrize("subject", names, indirect=True)


@pytest.fixture
def subject(
    request: pytest.FixtureRequest, engine: Engine, images: ImageSet, tmp_path: Path
) -> Iterator[Subject]:
    make, _ = DRIVERS[request.param]
    rig = Rig(engine, new_run_id(), tmp_path)
    subject = Subject(request.param, make(rig), rig, images, [])
    # A live lease on the run id: another run's sweep of dead runs leaves these objects alone.
    with RunLease(rig.run_id, runs_dir()).held():
        yield subject
        for gateway in subject.made:
            # A test may have left it half gone; the sweep below removes whatever remains.
            with contextlib.suppress(Exception):
                subject.driver.destroy(gateway)
        remove_run_objects(engine, {rig.run_id})


def answers(gateway: GatewayHandle) -> bool:
    try:
        with GatewayClient.for_gateway(gateway.name, env=gateway.env, timeout=5) as client:
            client.health()
    except OpenShellError:
        return False
    return True


def container_id(engine: Engine, gateway: GatewayHandle) -> str | None:
    found = engine.inspect_container(gateway.container_name)
    return None if found is None else str(found["Id"])


def running(engine: Engine, gateway: GatewayHandle) -> bool:
    found = engine.inspect_container(gateway.container_name)
    return bool(found and found["State"]["Running"])


def secret_digest(engine: Engine, gateway: GatewayHandle) -> str:
    return hashlib.sha256(
        engine.read_container_file(gateway.container_name, HANDSHAKE_SECRET)
    ).hexdigest()


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)


def objects_of(engine: Engine, gateway: GatewayHandle) -> list[str]:
    """Every container, volume and network labelled with the gateway's name."""
    selector = [f"{labels.MANAGED_BY}={labels.MANAGER}", f"{labels.GATEWAY}={gateway.name}"]
    return [
        *(str(c["Names"][0]) for c in engine.list_containers(label_filters=selector, all=True)),
        *(str(v["Name"]) for v in engine.list_volumes(label_filters=selector)),
        *(str(n["Name"]) for n in engine.list_networks(label_filters=selector)),
    ]


# -- the declaration ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_the_driver_is_a_gateway_driver_with_exactly_its_declared_abilities(
    name: str, engine: Engine, tmp_path: Path
) -> None:
    make, declared = DRIVERS[name]
    driver = make(Rig(engine, new_run_id(), tmp_path))
    assert isinstance(driver, GatewayDriver)
    assert abilities_of(driver) == declared


def test_an_object_without_the_four_verbs_is_not_a_gateway_driver() -> None:
    class Half:
        def deploy(self, spec: GatewaySpec) -> GatewayHandle:
            raise NotImplementedError

        def start(self, gateway: GatewayHandle, *, image: str | None = None) -> None: ...

    assert not isinstance(Half(), GatewayDriver)
    assert abilities_of(Half()) == frozenset()
    assert Ability.RECREATE.lacking(Half()) == (
        "the gateway driver Half lacks the ability 'recreate' (a recreate() method: protocol "
        "pytest_openshell.drivers.CanRecreate)"
    )


# -- the four verbs -----------------------------------------------------------------------------


def test_deploy_returns_a_handle_whose_api_answers(subject: Subject) -> None:
    gateway = subject.deploy()
    assert answers(gateway)
    assert running(subject.rig.engine, gateway)
    assert gateway.name == gateway.spec.name


def test_start_on_a_running_gateway_changes_nothing(subject: Subject) -> None:
    engine = subject.rig.engine
    gateway = subject.deploy()
    before = container_id(engine, gateway)
    subject.driver.start(gateway)
    assert container_id(engine, gateway) == before
    assert answers(gateway)


def test_stop_keeps_the_volume_and_start_resumes_the_same_container(subject: Subject) -> None:
    engine = subject.rig.engine
    gateway = subject.deploy()
    before = container_id(engine, gateway)
    subject.driver.stop(gateway)
    assert not running(engine, gateway)
    assert engine.inspect_volume(gateway.volume_name) is not None
    subject.driver.start(gateway)
    assert container_id(engine, gateway) == before
    assert answers(gateway)


def test_start_after_the_container_is_gone_makes_one_from_the_given_image(
    subject: Subject,
) -> None:
    engine = subject.rig.engine
    gateway = subject.deploy()
    engine.remove_container(gateway.container_name, force=True)
    subject.driver.start(gateway, image=gateway.upgrade_image)
    image = engine.inspect_image(gateway.upgrade_image)
    found = engine.inspect_container(gateway.container_name)
    assert image is not None and found is not None
    assert found["Image"] == image["Id"]
    assert answers(gateway)


def test_destroy_removes_every_object_and_the_host_files(subject: Subject) -> None:
    engine = subject.rig.engine
    gateway = subject.deploy()
    assert objects_of(engine, gateway)
    subject.driver.destroy(gateway)
    subject.made.remove(gateway)
    assert objects_of(engine, gateway) == []
    assert not gateway_dir(gateway.name, gateway.env).exists()


# -- the abilities, each as its protocol says ---------------------------------------------------


@pytest.mark.needs_ability(Ability.SANDBOX_CONTAINERS)
def test_sandbox_containers_names_the_containers_of_its_sandboxes(subject: Subject) -> None:
    driver = subject.driver
    assert isinstance(driver, ListsSandboxContainers)
    gateway = subject.deploy()
    assert driver.sandbox_containers(gateway) == []
    with GatewayClient.for_gateway(gateway.name, env=gateway.env) as client:
        made = client.create_sandbox("one")
        client.wait_ready("one", timeout=120)
        named = driver.sandbox_containers(gateway, running=True)
        assert len(named) == 1 and made.id in named[0], named
        client.stop_sandbox("one")
    wait_until(
        lambda: driver.sandbox_containers(gateway, running=True) == [],
        timeout=60,
        what="the stopped sandbox's container is no longer listed as running",
    )
    assert driver.sandbox_containers(gateway) == named


@pytest.mark.needs_ability(Ability.SANDBOX_CONTAINERS)
def test_sandbox_containers_lists_the_oldest_first(subject: Subject) -> None:
    """A scenario disrupts "the first" sandboxes: those made before it, not a workload's."""
    driver = subject.driver
    assert isinstance(driver, ListsSandboxContainers)
    gateway = subject.deploy()
    with GatewayClient.for_gateway(gateway.name, env=gateway.env) as client:
        first = client.create_sandbox("zz-made-first")
        client.wait_ready("zz-made-first", timeout=120)
        # The engine counts creation in whole seconds: the next one is made in a later second.
        second_started = int(time.time()) + 1
        wait_until(lambda: time.time() >= second_started, timeout=5, what="the next second")
        second = client.create_sandbox("aa-made-second")
        client.wait_ready("aa-made-second", timeout=120)
    named = driver.sandbox_containers(gateway, running=True)
    assert [first.id in named[0], second.id in named[1]] == [True, True], named


@pytest.mark.needs_ability(Ability.STATE_DIGESTS)
def test_state_digests_are_hex_digests_that_survive_a_stop_and_start(subject: Subject) -> None:
    driver = subject.driver
    assert isinstance(driver, ReportsStateDigests)
    gateway = subject.deploy()
    before = driver.state_digests(gateway)
    assert before and all(re.fullmatch(r"[0-9a-f]{64}", value) for value in before.values())
    driver.stop(gateway)
    assert driver.state_digests(gateway) == before  # readable while it is stopped, too
    driver.start(gateway)
    assert driver.state_digests(gateway) == before


@pytest.mark.needs_ability(Ability.DOWN_REASON)
def test_down_reason_is_none_while_it_runs_and_says_why_once_it_is_gone(
    subject: Subject,
) -> None:
    driver = subject.driver
    assert isinstance(driver, ReportsDownReason)
    gateway = subject.deploy()
    assert driver.down_reason(gateway) is None
    subject.rig.engine.remove_container(gateway.container_name, force=True)
    reason = driver.down_reason(gateway)
    assert reason is not None and gateway.container_name in reason


@pytest.mark.needs_ability(Ability.RECREATE)
def test_recreate_starts_a_fresh_gateway_under_the_same_name(subject: Subject) -> None:
    driver = subject.driver
    assert isinstance(driver, CanRecreate)
    engine = subject.rig.engine
    gateway = subject.deploy()
    before = secret_digest(engine, gateway)
    driver.recreate(gateway)
    assert secret_digest(engine, gateway) != before, "the old gateway's state was kept"
    assert answers(gateway)


@pytest.mark.needs_ability(Ability.FAIL_RESUME)
def test_start_failing_fails_and_leaves_the_volume_to_resume_from(subject: Subject) -> None:
    driver = subject.driver
    assert isinstance(driver, CanFailResume)
    engine = subject.rig.engine
    gateway = subject.deploy()
    driver.stop(gateway)
    with pytest.raises(OpenShellError):
        driver.start_failing(gateway)
    assert engine.inspect_volume(gateway.volume_name) is not None
    driver.start(gateway)
    assert answers(gateway)


@pytest.mark.needs_ability(Ability.FAIL_DEPLOY)
def test_deploy_failing_fails_and_leaves_nothing(subject: Subject) -> None:
    driver = subject.driver
    assert isinstance(driver, CanFailDeploy)
    spec = subject.spec()
    with pytest.raises(OpenShellError):
        driver.deploy_failing(spec)
    engine = subject.rig.engine
    name = f"openshell-cluster-{spec.name}"
    assert engine.inspect_container(name) is None
    assert engine.inspect_volume(name) is None


@pytest.mark.needs_ability(Ability.FORGET_HOST_FILES)
def test_forget_removes_the_host_files_and_nothing_in_docker(subject: Subject) -> None:
    driver = subject.driver
    assert isinstance(driver, CanForgetHostFiles)
    engine = subject.rig.engine
    gateway = subject.deploy()
    objects = objects_of(engine, gateway)
    driver.stop(gateway)
    driver.forget(gateway)
    assert not gateway_dir(gateway.name, gateway.env).exists()
    assert objects_of(engine, gateway) == objects


@pytest.mark.needs_ability(Ability.AUTO_BOOTSTRAP)
def test_auto_bootstrap_resumes_the_stopped_gateway_and_creates_a_sandbox(
    subject: Subject,
) -> None:
    driver = subject.driver
    assert isinstance(driver, CanAutoBootstrap)
    engine = subject.rig.engine
    gateway = subject.deploy()
    digest = secret_digest(engine, gateway)
    driver.stop(gateway)
    created = driver.auto_bootstrap(gateway)
    assert created
    with GatewayClient.for_gateway(gateway.name, env=gateway.env) as client:
        assert created in {info.name for info in client.list_sandboxes()}
    assert secret_digest(engine, gateway) == digest, "auto-bootstrap wiped the gateway"

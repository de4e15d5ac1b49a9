"""The Kubernetes compute driver against the in-process API emulator (``kube_emulator``).

What is checked here is the driver's side of the contract with a cluster: the exact objects it
makes, what it patches and deletes, how it finds its sandboxes again, and how it answers the API's
refusals (409, 410, 403, 404, an unreachable server). The agent-sandbox controller and the
kubelet are stand-ins (``kube_standins``): what they do is written from upstream's controller, and
is not under test. The rules every compute driver shares are in ``test_compute_compliance.py``,
which runs this driver too.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from kube_emulator import SANDBOX_CRD, KubeEmulator, Resource
from kube_standins import NAME_HASH_LABEL, SANDBOXES, SandboxControllerStandIn, name_hash

from openshell_core.errors import ClusterError, NotFoundError
from openshell_core.retry import poll_until
from openshell_core.sandbox import workspace
from openshell_core.server.compute import Ownership, RuntimeState, SandboxSpec
from openshell_core.server.compute_kubernetes import (
    KubernetesComputeDriver,
    KubernetesSettings,
    claim_name,
)
from openshell_core.wire import contract

NAMESPACE = "openshell"
SANDBOX = "default--box"
CLAIM = claim_name(SANDBOX)
OWNERSHIP = Ownership("gw-a", "openshell-gw-a")


def _spec(sandbox_id: str = "id-1", name: str = "box", **changes: Any) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id,
        name,
        "openshell-sandbox:v1",
        {contract.SANDBOX_ID_ENV: sandbox_id, contract.HANDSHAKE_SECRET_ENV: "s3cret"},
        **changes,
    )


@pytest.fixture
def cluster(kube: KubeEmulator) -> KubeEmulator:
    kube.create("namespaces", {"metadata": {"name": NAMESPACE}})
    return kube


@pytest.fixture
def controller(cluster: KubeEmulator) -> SandboxControllerStandIn:
    return SandboxControllerStandIn(cluster).install()


def _settings(kube: KubeEmulator, **changes: str) -> KubernetesSettings:
    return KubernetesSettings(NAMESPACE, api=kube.url, **changes)


@pytest.fixture
def driver(cluster: KubeEmulator, controller: SandboxControllerStandIn) -> KubernetesComputeDriver:
    return _settings(cluster).open(OWNERSHIP)


def _writes(kube: KubeEmulator) -> list[tuple[str, str, str, str]]:
    """The requests that changed something (an access review changes nothing)."""
    return [
        r
        for r in kube.requests
        if r[0] in {"create", "update", "patch", "delete"}
        and r[1] != "selfsubjectaccessreviews.authorization.k8s.io"
    ]


# -- the objects made ---------------------------------------------------------------------------

EXPECTED_LABELS = {
    "openshell.ai/managed-by": "pytest-openshell",
    "openshell.ai/gateway": "gw-a",
    "openshell.ai/sandbox-id": "id-1",
    "openshell.ai/node-name": "openshell-gw-a",
    "openshell.ai/role": "sandbox",
    "openshell.ai/sandbox-name": "box",
    "openshell.ai/sandbox-workspace": "default",
    "openshell.ai/gateway-id": "gw-a",
}


def test_a_sandbox_is_a_v1beta1_sandbox_object_of_upstreams_shape(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    driver.create(_spec())

    made = cluster.get(SANDBOXES, SANDBOX, NAMESPACE)
    assert made["apiVersion"] == "agents.x-k8s.io/v1beta1"
    assert made["metadata"]["labels"] == EXPECTED_LABELS
    assert made["metadata"]["annotations"] == {
        "openshell.ai/sandbox-id": "id-1",
        "openshell.ai/sandbox-name": "box",
        "openshell.ai/sandbox-workspace": "default",
    }
    assert made["spec"] == {
        "operatingMode": "Running",
        "podTemplate": {
            "metadata": {
                "labels": {
                    "openshell.ai/managed-by": "pytest-openshell",
                    "openshell.ai/gateway": "gw-a",
                    "openshell.ai/sandbox-id": "id-1",
                    "openshell.ai/node-name": "openshell-gw-a",
                    "openshell.ai/role": "sandbox",
                }
            },
            "spec": {
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "initContainers": [
                    {
                        "name": "workspace-init",
                        "image": "openshell-sandbox:v1",
                        "imagePullPolicy": "IfNotPresent",
                        "command": workspace.seed_command(),
                        "securityContext": {"runAsUser": 0},
                        "volumeMounts": [{"name": "workspace", "mountPath": "/workspace-pvc"}],
                    }
                ],
                "containers": [
                    {
                        "name": "agent",
                        "image": "openshell-sandbox:v1",
                        "imagePullPolicy": "IfNotPresent",
                        "env": [
                            {"name": "OPENSHELL_SANDBOX_ID", "value": "id-1"},
                            {"name": "OPENSHELL_SSH_HANDSHAKE_SECRET", "value": "s3cret"},
                        ],
                        "ports": [{"name": "supervisor", "containerPort": 2222}],
                        "volumeMounts": [{"name": "workspace", "mountPath": "/sandbox"}],
                    }
                ],
            },
        },
        "volumeClaimTemplates": [
            {
                "metadata": {
                    "name": "workspace",
                    "labels": {
                        "openshell.ai/managed-by": "pytest-openshell",
                        "openshell.ai/gateway": "gw-a",
                        "openshell.ai/sandbox-id": "id-1",
                        "openshell.ai/node-name": "openshell-gw-a",
                        "openshell.ai/role": "sandbox-workspace",
                        "openshell.ai/gateway-id": "gw-a",
                    },
                },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "2Gi"}},
                },
            }
        ],
    }


def test_the_seed_script_writes_the_sentinel_once_into_the_claim() -> None:
    script = workspace.seed_script()
    assert f"if [ ! -e /workspace-pvc/{contract.WORKSPACE_SENTINEL} ]" in script
    assert f"touch /workspace-pvc/{contract.WORKSPACE_SENTINEL}" in script


def test_the_controller_makes_the_claim_from_the_template_and_binds_the_pod_to_it(
    cluster: KubeEmulator, driver: KubernetesComputeDriver, controller: SandboxControllerStandIn
) -> None:
    driver.create(_spec())

    claim = cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)
    assert claim["metadata"]["labels"]["openshell.ai/role"] == "sandbox-workspace"
    pod = cluster.get("pods", SANDBOX, NAMESPACE)
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": CLAIM}} in pod["spec"][
        "volumes"
    ]
    assert controller.kubelet.files[CLAIM] >= {"README.md", contract.WORKSPACE_SENTINEL}


def test_v1alpha1_is_spoken_when_it_is_all_the_cluster_serves(
    cluster: KubeEmulator, controller: SandboxControllerStandIn
) -> None:
    cluster.withdraw(SANDBOXES)
    cluster.declare(Resource("agents.x-k8s.io", ("v1alpha1",), "sandboxes", "Sandbox", custom=True))
    driver = _settings(cluster).open(OWNERSHIP)

    driver.create(_spec())
    made = cluster.get(SANDBOXES, SANDBOX, NAMESPACE)
    assert made["apiVersion"] == "agents.x-k8s.io/v1alpha1"
    assert made["spec"]["replicas"] == 1 and "operatingMode" not in made["spec"]

    driver.stop("id-1")
    assert cluster.get(SANDBOXES, SANDBOX, NAMESPACE)["spec"]["replicas"] == 0
    assert driver.observe("id-1").state is RuntimeState.STOPPED


def test_a_sandbox_without_a_persistent_workspace_has_no_claim_template_nor_init(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    driver.create(_spec(persistent_workspace=False))

    spec = cluster.get(SANDBOXES, SANDBOX, NAMESPACE)["spec"]
    assert "volumeClaimTemplates" not in spec
    assert "initContainers" not in spec["podTemplate"]["spec"]


# -- stop, start, delete: what is patched, what is kept ------------------------------------------


def test_stop_suspends_the_sandbox_and_keeps_its_claim(
    cluster: KubeEmulator, driver: KubernetesComputeDriver, controller: SandboxControllerStandIn
) -> None:
    driver.create(_spec())
    claim_uid = cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)["metadata"]["uid"]
    controller.kubelet.files[CLAIM].add("mine.txt")

    driver.stop("id-1")

    assert cluster.get(SANDBOXES, SANDBOX, NAMESPACE)["spec"]["operatingMode"] == "Suspended"
    assert cluster.find("pods", SANDBOX, NAMESPACE) is None
    assert cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)["metadata"]["uid"] == claim_uid

    driver.start("id-1")

    assert cluster.get(SANDBOXES, SANDBOX, NAMESPACE)["spec"]["operatingMode"] == "Running"
    assert driver.observe("id-1").state is RuntimeState.RUNNING
    assert "mine.txt" in controller.kubelet.files[CLAIM]
    assert controller.kubelet.seeded[CLAIM] == 1


def test_a_sandbox_whose_pod_vanished_comes_back_on_the_same_claim(
    cluster: KubeEmulator, driver: KubernetesComputeDriver, controller: SandboxControllerStandIn
) -> None:
    driver.create(_spec())
    claim_uid = cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)["metadata"]["uid"]
    old_pod = cluster.get("pods", SANDBOX, NAMESPACE)["metadata"]["uid"]
    controller.kubelet.files[CLAIM].add("mine.txt")

    cluster.delete("pods", SANDBOX, NAMESPACE)

    pod = cluster.get("pods", SANDBOX, NAMESPACE)
    assert pod["metadata"]["uid"] != old_pod
    assert driver.observe("id-1").state is RuntimeState.RUNNING
    assert cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)["metadata"]["uid"] == claim_uid
    assert "mine.txt" in controller.kubelet.files[CLAIM]
    assert controller.kubelet.seeded[CLAIM] == 1


def test_start_replaces_an_ended_pod_so_the_controller_makes_a_new_one(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    driver.create(_spec())
    cluster.patch("pods", SANDBOX, {"status": {"phase": "Failed"}}, "merge", NAMESPACE)
    old_pod = cluster.get("pods", SANDBOX, NAMESPACE)["metadata"]["uid"]
    assert driver.observe("id-1").state is RuntimeState.STOPPED

    driver.start("id-1")

    assert cluster.get("pods", SANDBOX, NAMESPACE)["metadata"]["uid"] != old_pod
    assert driver.observe("id-1").state is RuntimeState.RUNNING


def test_delete_without_the_workspace_keeps_the_claim_and_a_new_sandbox_takes_it_back(
    cluster: KubeEmulator, driver: KubernetesComputeDriver, controller: SandboxControllerStandIn
) -> None:
    driver.create(_spec())
    claim_uid = cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)["metadata"]["uid"]

    driver.delete("id-1", workspace=False)

    assert cluster.find(SANDBOXES, SANDBOX, NAMESPACE) is None
    kept = cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)
    assert kept["metadata"]["uid"] == claim_uid
    assert not kept["metadata"].get("ownerReferences")
    assert kept["metadata"]["labels"][NAME_HASH_LABEL] == name_hash(SANDBOX)

    driver.create(_spec())

    claim = cluster.get("persistentvolumeclaims", CLAIM, NAMESPACE)
    assert claim["metadata"]["uid"] == claim_uid and claim["metadata"]["ownerReferences"]
    assert controller.kubelet.seeded[CLAIM] == 1


def test_delete_with_the_workspace_removes_only_labelled_claims(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    cluster.create("persistentvolumeclaims", {"metadata": {"name": "someone-elses"}}, NAMESPACE)
    driver.create(_spec())

    driver.delete("id-1", workspace=True)
    driver.delete("id-1", workspace=True)

    claims = [c["metadata"]["name"] for c in cluster.list("persistentvolumeclaims", NAMESPACE)]
    assert claims == ["someone-elses"]


# -- finding its sandboxes again ------------------------------------------------------------------


def test_a_new_driver_instance_adopts_the_sandboxes_labelled_with_its_gateway_id(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    driver.create(_spec("id-1", "one"))
    driver.create(_spec("id-2", "two"))
    _settings(cluster).open(Ownership("gw-b", "openshell-gw-b")).create(_spec("id-3", "three"))
    pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.list("pods", NAMESPACE)}
    driver.close()

    restarted = _settings(cluster).open(OWNERSHIP)
    owned = restarted.list_owned()
    for observed in owned:
        restarted.adopt(observed.sandbox_id)

    assert sorted(o.sandbox_id for o in owned) == ["id-1", "id-2"]
    assert all(o.state is RuntimeState.RUNNING and o.workspace for o in owned)
    assert {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.list("pods", NAMESPACE)
    } == (pods)


def test_the_gateway_id_can_be_configured_apart_from_the_gateway_label(
    cluster: KubeEmulator, controller: SandboxControllerStandIn
) -> None:
    driver = _settings(cluster, gateway_id="prod-1").open(OWNERSHIP)

    driver.create(_spec())

    labels = cluster.get(SANDBOXES, SANDBOX, NAMESPACE)["metadata"]["labels"]
    assert labels["openshell.ai/gateway-id"] == "prod-1"
    assert [o.sandbox_id for o in driver.list_owned()] == ["id-1"]


# -- idempotence and conflicts --------------------------------------------------------------------


def test_create_again_writes_nothing(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    driver.create(_spec())
    before = len(_writes(cluster))

    driver.create(_spec())

    assert _writes(cluster)[before:] == []
    assert len(cluster.list(SANDBOXES, NAMESPACE)) == 1


def test_a_name_taken_by_a_sandbox_not_ours_is_refused_and_left_alone(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    cluster.create(
        SANDBOXES,
        {
            "metadata": {"name": SANDBOX, "labels": {"app": "theirs"}},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "app", "image": "x"}]}}},
        },
        NAMESPACE,
    )
    theirs = cluster.get(SANDBOXES, SANDBOX, NAMESPACE)

    with pytest.raises(ClusterError) as refused:
        driver.create(_spec())

    assert str(refused.value) == (
        "a Sandbox named 'default--box' already exists in namespace 'openshell' and is not this "
        "sandbox's (its owner: nobody); it was left alone: delete it, or use another sandbox name"
    )
    assert cluster.get(SANDBOXES, SANDBOX, NAMESPACE) == theirs


def test_a_stop_racing_another_writer_reads_again_after_409_conflict(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    driver.create(_spec())

    def another_writer(kube: KubeEmulator) -> None:
        patch = {"metadata": {"annotations": {"touched": "yes"}}}
        kube.patch(SANDBOXES, SANDBOX, patch, "merge", NAMESPACE)

    cluster.before("patch", SANDBOXES, another_writer)

    driver.stop("id-1")

    patches = [r for r in cluster.requests if r[:2] == ("patch", SANDBOXES)]
    assert len(patches) == 2
    stopped = cluster.get(SANDBOXES, SANDBOX, NAMESPACE)
    assert stopped["spec"]["operatingMode"] == "Suspended"
    assert stopped["metadata"]["annotations"]["touched"] == "yes"


def test_a_watch_answered_410_gone_is_followed_by_a_fresh_read(
    cluster: KubeEmulator, driver: KubernetesComputeDriver, controller: SandboxControllerStandIn
) -> None:
    """The controller confirms the suspension late; meanwhile the history the driver's watch
    starts from was compacted away."""
    driver.create(_spec())
    controller.active = False

    def confirm_late_and_compact(kube: KubeEmulator) -> None:
        controller.reconcile(NAMESPACE, SANDBOX)
        kube.compact()

    cluster.before("watch", SANDBOXES, confirm_late_and_compact)

    driver.stop("id-1")

    reads = [r[0] for r in cluster.requests if r[1] == SANDBOXES and r[0] in {"list", "watch"}]
    assert reads[-3:] == ["list", "watch", "list"]
    assert cluster.find("pods", SANDBOX, NAMESPACE) is None


def test_a_watch_of_the_pods_answered_410_gone_reads_them_again_and_reports_a_change(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    """A pod is made while the history the watch of the pods starts from is compacted away: its
    event is lost, so the 410 itself must count as a change (and the watch carry on)."""

    def make_a_pod_and_compact(kube: KubeEmulator) -> None:
        driver.create(_spec())  # the controller makes its pod
        kube.compact()

    cluster.before("watch", "pods", make_a_pod_and_compact)
    changes: list[None] = []
    stop = threading.Event()
    watcher = threading.Thread(target=driver.watch, args=(lambda: changes.append(None), stop))
    watcher.start()
    try:
        poll_until(lambda: len(changes), bool, timeout=10, what="a change reported")
        poll_until(
            lambda: [
                r[0] for r in cluster.requests if r[1] == "pods" and r[0] in {"list", "watch"}
            ],
            lambda reads: reads[:4] == ["list", "watch", "list", "watch"],
            timeout=10,
            what="the pods read again and watched on",
        )
    finally:
        stop.set()
        watcher.join(30)
    assert not watcher.is_alive()


def test_start_and_stop_of_a_sandbox_it_cannot_find_raise_not_found(
    driver: KubernetesComputeDriver,
) -> None:
    with pytest.raises(NotFoundError):
        driver.stop("id-unknown")
    with pytest.raises(NotFoundError):
        driver.start("id-unknown")


# -- bad input: one line naming the fix, before anything is made -----------------------------------


def _refused_at_open(settings: KubernetesSettings) -> str:
    with pytest.raises(ClusterError) as refused:
        settings.open(OWNERSHIP)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_a_missing_sandbox_crd_is_refused_at_open_naming_the_fix(cluster: KubeEmulator) -> None:
    cluster.withdraw(SANDBOXES)

    message = _refused_at_open(_settings(cluster))

    assert message == (
        f"{cluster.url} serves no Sandbox API (agents.x-k8s.io v1beta1 or v1alpha1): install the "
        "agent-sandbox CRDs and controller (kubernetes-sigs/agent-sandbox) first"
    )
    assert _writes(cluster) == []


def test_rbac_forbidding_verbs_is_refused_at_open_naming_each(cluster: KubeEmulator) -> None:
    cluster.deny("create", SANDBOXES)
    cluster.deny("delete", "persistentvolumeclaims")

    message = _refused_at_open(_settings(cluster))

    assert message == (
        "RBAC forbids this gateway in namespace 'openshell': create sandboxes.agents.x-k8s.io, "
        "delete persistentvolumeclaims; grant them in the gateway's Role"
    )
    assert _writes(cluster) == []


def test_rbac_forbidding_a_verb_later_is_one_line_naming_it(
    cluster: KubeEmulator, driver: KubernetesComputeDriver
) -> None:
    cluster.deny("create", SANDBOXES)

    with pytest.raises(ClusterError) as refused:
        driver.create(_spec())

    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(
        "RBAC forbids this gateway to create Sandbox default--box in namespace 'openshell' "
        '(sandboxes.agents.x-k8s.io is forbidden: User "system:serviceaccount:default:emulator" '
        'cannot create resource "sandboxes"'
    )
    assert str(refused.value).endswith("): grant it in the gateway's Role")


def test_a_missing_namespace_is_refused_at_open_naming_the_fix(kube: KubeEmulator) -> None:
    message = _refused_at_open(_settings(kube))

    assert message == (
        f"namespace 'openshell' does not exist on {kube.url}: create it (kubectl create "
        "namespace openshell) or set OPENSHELL_KUBE_NAMESPACE to an existing one"
    )


def test_an_unreachable_api_server_is_refused_at_open_naming_the_fix() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    message = _refused_at_open(KubernetesSettings(NAMESPACE, api=url))

    assert message == (
        f"the Kubernetes API of {url} is unreachable (MaxRetryError): start the cluster, or "
        "point OPENSHELL_KUBE_API / KUBECONFIG at one that runs"
    )


def test_kube_emulator_fixture_serves_the_sandbox_crd(kube: KubeEmulator) -> None:
    assert kube.resource(SANDBOXES) == SANDBOX_CRD

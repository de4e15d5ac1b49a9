"""The gateway on a cluster: its rendered manifests, the checks before anything is created, and
the kubernetes target's lifecycle, against the in-process API emulator (tests/kube_emulator.py).

The emulator runs no controllers: where a StatefulSet's controller would make the gateway's
claim, :func:`statefulset_controller_stand_in` makes it (and nothing else).
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_emulator import SANDBOX_CRD, KubeEmulator, Resource
from kubernetes import client

from openshell_core import labels
from openshell_core.errors import ClusterError, UsageError
from openshell_core.gateway.names import node_name
from openshell_core.kube import manifests
from openshell_core.kube.cluster import Cluster, connect
from openshell_core.kube.manifests import KubeGatewaySpec
from openshell_core.wire import contract
from pytest_openshell.drivers import (
    GatewayHandle,
    GatewaySpec,
)
from pytest_openshell.kube_driver import SCENARIOS, KubeDriver, PortForward, run_namespace
from pytest_openshell.scenarios import BUILTIN, refused
from pytest_openshell.session_parts import free_port

ROOT = Path(__file__).resolve().parent.parent
NODES = Resource("", ("v1",), "nodes", "Node", namespaced=False)


@pytest.fixture
def emulator() -> Iterator[KubeEmulator]:
    api = KubeEmulator()
    api.declare(SANDBOX_CRD)
    api.declare(NODES)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def cluster(emulator: KubeEmulator) -> Iterator[Cluster]:
    configuration = client.Configuration()
    configuration.host = emulator.url
    api = client.ApiClient(configuration)
    yield Cluster(api, "emulator")
    api.close()


def spec(namespace: str = "openshell-t", **extra: Any) -> KubeGatewaySpec:
    return KubeGatewaySpec(
        name="gw1",
        namespace=namespace,
        image="openshell-gateway:v1",
        sandbox_image="openshell-sandbox:v1",
        run_id="run123",
        **extra,
    )


def writes(emulator: KubeEmulator) -> list[tuple[str, str, str, str]]:
    """Every request that would change the cluster (access reviews are questions)."""
    return [
        r
        for r in emulator.requests
        if r[0] in ("create", "update", "patch", "delete", "deletecollection")
        and "selfsubjectaccessreviews" not in r[1]
    ]


def by_kind(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in rendered}


# -- rendered manifests ---------------------------------------------------------------------------


def test_the_manifests_are_namespace_account_role_binding_service_and_statefulset() -> None:
    rendered = manifests.render(spec())
    assert [(m["kind"], m["metadata"]["name"]) for m in rendered] == [
        ("Namespace", "openshell-t"),
        ("ServiceAccount", "openshell-cluster-gw1"),
        ("Role", "openshell-cluster-gw1"),
        ("RoleBinding", "openshell-cluster-gw1"),
        ("Service", "openshell-cluster-gw1"),
        ("StatefulSet", "openshell-cluster-gw1"),
    ]
    for manifest in rendered:
        assert labels.is_ours(manifest["metadata"]["labels"])
        assert manifest["metadata"]["labels"][labels.RUN_ID] == "run123"
    assert rendered[0]["metadata"]["labels"][labels.ROLE] == manifests.NAMESPACE_ROLE


def test_the_statefulset_has_one_replica_and_a_retained_claim_at_the_state_dir() -> None:
    sts = by_kind(manifests.render(spec()))["StatefulSet"]["spec"]
    assert sts["replicas"] == 1
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "openshell-data"
    assert labels.is_ours(claim["metadata"]["labels"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (container,) = sts["template"]["spec"]["containers"]
    assert container["volumeMounts"] == [
        {"name": "openshell-data", "mountPath": contract.STATE_DIR}
    ]
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()
    assert spec().claim_name == "openshell-data-openshell-cluster-gw1-0"


def test_the_gateway_identity_is_the_node_name_of_the_gateway_name_not_the_pod() -> None:
    sts = by_kind(manifests.render(spec()))["StatefulSet"]["spec"]
    env = {e["name"]: e for e in sts["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.NODE_NAME_ENV]["value"] == node_name("gw1") == "openshell-gw1"
    assert env[contract.COMPUTE_DRIVER_ENV]["value"] == "kubernetes"
    assert env[contract.KUBE_NAMESPACE_ENV]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert "openshell-cluster-gw1.openshell-t.svc" in env[contract.EXTRA_SANS_ENV]["value"]
    assert spec().pod_name == "openshell-cluster-gw1-0"


def test_the_role_grants_sandboxes_pods_claims_and_events_in_its_namespace_only() -> None:
    role = by_kind(manifests.render(spec()))["Role"]
    assert role["metadata"]["namespace"] == "openshell-t"
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted[("agents.x-k8s.io", "sandboxes")] >= {"create", "delete", "patch", "watch"}
    assert granted[("", "pods")] == {"get", "list", "watch", "delete"}
    assert granted[("", "persistentvolumeclaims")] == {"get", "list", "watch", "patch", "delete"}
    assert granted[("", "events")] == {"get", "list", "watch"}
    binding = by_kind(manifests.render(spec()))["RoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "openshell-cluster-gw1", "namespace": "openshell-t"}
    ]


def test_the_service_is_cluster_ip_unless_the_user_names_a_node_port() -> None:
    plain = by_kind(manifests.render(spec()))["Service"]["spec"]
    assert plain["type"] == "ClusterIP"
    assert plain["ports"][0]["port"] == contract.GATEWAY_PORT
    named = by_kind(manifests.render(spec(service_port=30999)))["Service"]["spec"]
    assert named["type"] == "NodePort"
    assert named["ports"][0]["nodePort"] == 30999


def test_the_manifests_dump_as_yaml_documents() -> None:
    documents = list(yaml.safe_load_all(manifests.to_yaml(manifests.render(spec()))))
    assert documents == manifests.render(spec())


@pytest.mark.parametrize("name", ["GW", "gw_1", "-gw", "g" * 35])
def test_a_gateway_name_that_cannot_name_kubernetes_objects_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match="cannot name Kubernetes objects"):
        KubeGatewaySpec(name=name, namespace="ns", image="i", sandbox_image="s")


def test_the_cli_prints_the_manifests(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/pytest-openshell"), "kube", "manifests", "--name", "gw1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["Namespace", "ServiceAccount", "Role", "RoleBinding", "Service", "StatefulSet"]


# -- bad input: one line naming the fix, before anything is created -------------------------------


def one_line(error: ClusterError) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def test_no_kube_config_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as caught:
        connect(None, config_file=str(tmp_path / "missing"))
    assert "no Kubernetes context" in one_line(caught.value)
    assert "k3d cluster create" in str(caught.value)


def write_kubeconfig(path: Path, server: str, *, current: str | None = "emu") -> Path:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emu", "cluster": {"server": server}}],
        "users": [{"name": "emu", "user": {"token": "t"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
    }
    if current:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return path


def test_an_unknown_context_names_the_known_ones(tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:1")
    with pytest.raises(ClusterError) as caught:
        connect("other", config_file=str(config))
    assert one_line(caught.value) == (
        "no Kubernetes context 'other' in the kube config; known: emu"
    )


def test_an_unreachable_api_server_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:1")
    unreachable = connect(None, config_file=str(config))
    with pytest.raises(ClusterError) as caught:
        unreachable.preflight("openshell-t")
    assert "does not answer" in one_line(caught.value)
    assert "--openshell-kube-context" in str(caught.value)


def test_a_namespace_we_do_not_own_is_refused_and_left_alone(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    emulator.create("namespaces", {"metadata": {"name": "theirs", "labels": {"team": "x"}}})
    with pytest.raises(ClusterError) as caught:
        cluster.preflight("theirs")
    assert one_line(caught.value) == (
        "namespace 'theirs' exists and is not ours (no label "
        "openshell.ai/managed-by=pytest-openshell); name another with "
        "--openshell-kube-namespace, or leave it out for a fresh one"
    )
    assert writes(emulator) == []
    assert emulator.get("namespaces", "theirs")["metadata"]["labels"] == {"team": "x"}


def test_a_missing_sandbox_crd_is_refused_before_anything_is_created(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    emulator.withdraw(SANDBOX_CRD.key)
    with pytest.raises(ClusterError) as caught:
        cluster.preflight("openshell-t")
    assert "serves no Sandbox resource" in one_line(caught.value)
    assert "agent-sandbox" in str(caught.value)
    assert writes(emulator) == []


def test_the_sandbox_version_served_is_found(cluster: Cluster) -> None:
    assert cluster.preflight("openshell-t").sandbox_version == "v1beta1"


def test_rbac_forbidding_a_verb_is_refused_naming_it(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    emulator.deny("delete", "persistentvolumeclaims")
    with pytest.raises(ClusterError) as caught:
        cluster.preflight("openshell-t")
    assert one_line(caught.value).startswith(
        "the credentials of context emulator may not delete persistentvolumeclaims in "
        "namespace openshell-t; grant it"
    )
    assert writes(emulator) == []


def test_rbac_forbidding_namespace_create_is_refused_when_a_fresh_one_is_needed(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    emulator.deny("create", "namespaces")
    with pytest.raises(ClusterError, match="may not create namespaces cluster-wide"):
        cluster.preflight("openshell-t")
    assert writes(emulator) == []


# -- the lifecycle's objects -----------------------------------------------------------------------


def statefulset_controller_stand_in(emulator: KubeEmulator) -> None:
    """Stand-in for the StatefulSet controller, claims only: each StatefulSet created gets the
    claim of its pod -0 from its template (as the controller makes it), nothing else."""

    def react(api: KubeEmulator, kind: str, sts: dict[str, Any]) -> None:
        if kind != "ADDED":
            return
        namespace = sts["metadata"]["namespace"]
        for template in sts["spec"]["volumeClaimTemplates"]:
            name = f"{template['metadata']['name']}-{sts['metadata']['name']}-0"
            if api.find("persistentvolumeclaims", name, namespace) is None:
                meta = {**template["metadata"], "name": name, "namespace": namespace}
                api.create(
                    "persistentvolumeclaims",
                    {"metadata": meta, "spec": template["spec"]},
                    namespace,
                )

    emulator.add_controller("statefulsets.apps", react)


def deployed(emulator: KubeEmulator, cluster: Cluster) -> KubeGatewaySpec:
    statefulset_controller_stand_in(emulator)
    made = spec()
    cluster.preflight(made.namespace)
    cluster.ensure_namespace(made.namespace, made.run_id)
    cluster.apply(made)
    return made


def test_deploy_creates_the_labelled_namespace_and_every_object(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    made = deployed(emulator, cluster)
    assert labels.is_ours(emulator.get("namespaces", made.namespace)["metadata"]["labels"])
    for key in ("serviceaccounts", "services", "roles.rbac.authorization.k8s.io"):
        assert labels.is_ours(
            emulator.get(key, made.object_name, made.namespace)["metadata"]["labels"]
        )
    sts = emulator.get("statefulsets.apps", made.object_name, made.namespace)
    assert sts["spec"]["replicas"] == 1
    assert cluster.claims(made) == [made.claim_name]


def test_applying_twice_changes_nothing(emulator: KubeEmulator, cluster: Cluster) -> None:
    made = deployed(emulator, cluster)
    before = emulator.get("statefulsets.apps", made.object_name, made.namespace)
    cluster.apply(made)
    after = emulator.get("statefulsets.apps", made.object_name, made.namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_scale_to_zero_keeps_the_claim(emulator: KubeEmulator, cluster: Cluster) -> None:
    made = deployed(emulator, cluster)
    cluster.scale(made, 0)
    sts = emulator.get("statefulsets.apps", made.object_name, made.namespace)
    assert sts["spec"]["replicas"] == 0
    assert cluster.claims(made) == [made.claim_name]


def test_a_statefulset_delete_keeps_the_claim_and_start_applies_it_again(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    made = deployed(emulator, cluster)
    cluster.delete_statefulset(made)
    assert emulator.find("statefulsets.apps", made.object_name, made.namespace) is None
    assert cluster.claims(made) == [made.claim_name]
    cluster.apply(made)
    assert emulator.find("statefulsets.apps", made.object_name, made.namespace) is not None
    assert cluster.claims(made) == [made.claim_name]


def test_only_destroy_deletes_the_claim_and_it_leaves_unlabelled_objects(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    made = deployed(emulator, cluster)
    foreign = {"metadata": {"name": "theirs", "labels": {labels.GATEWAY: made.name}}}
    emulator.create("persistentvolumeclaims", foreign, made.namespace)
    cluster.destroy(made)
    assert cluster.claims(made) == []
    assert emulator.find("persistentvolumeclaims", "theirs", made.namespace) is not None
    for key in ("serviceaccounts", "services", "statefulsets.apps"):
        assert emulator.find(key, made.object_name, made.namespace) is None


def test_the_rollout_patches_the_image_of_the_same_statefulset(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    made = deployed(emulator, cluster)
    upgraded = KubeGatewaySpec(**{**made.__dict__, "image": "openshell-gateway:v2"})
    cluster.set_image(upgraded)
    sts = emulator.get("statefulsets.apps", made.object_name, made.namespace)
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "openshell-gateway:v2"
    assert cluster.claims(made) == [made.claim_name]


def test_the_namespace_sweep_deletes_only_labelled_namespaces_of_dead_runs(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    ours = manifests.namespace_labels
    for name, own in [
        ("dead", ours("deadrun")),
        ("live", ours("liverun")),
        ("plain", {}),
        ("half", {labels.RUN_ID: "deadrun"}),  # a run id but not our manager label
        ("nonamespace", {labels.MANAGED_BY: labels.MANAGER, labels.RUN_ID: "deadrun"}),
    ]:
        emulator.create("namespaces", {"metadata": {"name": name, "labels": own}})
    assert cluster.sweep_namespaces(keep_runs={"liverun"}) == ["dead"]
    left = {n["metadata"]["name"] for n in emulator.list("namespaces")}
    assert {"live", "plain", "half", "nonamespace", "default"} <= left
    assert "dead" not in left


def test_delete_namespace_refuses_one_without_our_labels(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    emulator.create("namespaces", {"metadata": {"name": "theirs"}})
    assert cluster.delete_namespace("theirs") is False
    assert emulator.find("namespaces", "theirs") is not None


# -- the kubernetes target ---------------------------------------------------------------------------


def driver(cluster: Cluster, tmp_path: Path) -> KubeDriver:
    return KubeDriver(cluster, tmp_path, "run123abc456def")


def test_each_process_of_a_run_has_its_own_namespace() -> None:
    assert run_namespace("ABCDEF123456789", "gw0") == "openshell-abcdef123456-gw0"
    assert run_namespace("ABCDEF123456789") != run_namespace("ABCDEF123456789", "gw1")


def test_the_driver_preflight_sweeps_namespaces_of_dead_runs_only(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    emulator.create(
        "namespaces", {"metadata": {"name": "left", "labels": manifests.namespace_labels("gone")}}
    )
    emulator.create("namespaces", {"metadata": {"name": "plain"}})
    driver(cluster, tmp_path).preflight()
    assert emulator.find("namespaces", "left") is None
    assert emulator.find("namespaces", "plain") is not None


def test_the_scenarios_of_the_kubernetes_target_declare_consistent_traits() -> None:
    assert refused(SCENARIOS) == []
    assert [s.key for s in SCENARIOS] == [
        "pod-delete",
        "scale-to-zero",
        "statefulset-delete-keep-claim",
        "image-rollout",
        "sandbox-pod-delete",
        "node-drain",
    ]


def test_scenarios_about_docker_objects_are_skipped_with_the_reason_on_kubernetes(
    cluster: Cluster, tmp_path: Path
) -> None:
    made = driver(cluster, tmp_path)
    engine: Any = type("NoEngine", (), {"can_restart": True, "host": "-", "source": "-"})()
    skipped = {s.key: s.missing_capabilities(engine, made) for s in BUILTIN}
    assert skipped["kill"] == [
        "scenario 'kill': its steps or traits are about Docker objects (containers, the "
        "daemon), and this gateway runs on kubernetes"
    ]
    assert skipped["destroy"] == []
    assert skipped["docker-restart"] and skipped["sandbox-reschedule"]


def test_node_drain_is_skipped_with_the_reason_on_one_node(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    emulator.create("nodes", {"metadata": {"name": "k3d-one-server-0"}})
    drain = next(s for s in SCENARIOS if s.key == "node-drain")
    engine: Any = type("NoEngine", (), {"can_restart": True, "host": "-", "source": "-"})()
    assert drain.missing_capabilities(engine, driver(cluster, tmp_path)) == [
        "scenario 'node-drain': node-drain needs two schedulable nodes and the cluster has 1 "
        "(k3d cluster create --agents 1 makes two)"
    ]
    emulator.create("nodes", {"metadata": {"name": "k3d-one-agent-0"}})
    assert drain.missing_capabilities(engine, driver(cluster, tmp_path)) == []


def test_ci_kubernetes_without_a_context_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "ci" / "kubernetes.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")},
    )
    assert result.returncode == 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ci/kubernetes.sh: did nothing")


def pod_controller_stand_in(emulator: KubeEmulator, *, waiting: str) -> None:
    """Stand-in for the StatefulSet controller and the kubelet, pods only: each StatefulSet
    created gets its pod -0, whose container waits for ``waiting`` (an image the node cannot
    pull)."""

    def react(api: KubeEmulator, kind: str, sts: dict[str, Any]) -> None:
        if kind != "ADDED":
            return
        meta = sts["spec"]["template"]["metadata"]
        pod = {
            "metadata": {**meta, "name": f"{sts['metadata']['name']}-0"},
            "spec": {"containers": sts["spec"]["template"]["spec"]["containers"]},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": manifests.CONTAINER,
                        "image": sts["spec"]["template"]["spec"]["containers"][0]["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": waiting}},
                    }
                ],
            },
        }
        api.create("pods", pod, sts["metadata"]["namespace"])

    emulator.add_controller("statefulsets.apps", react)


def gateway_spec(name: str = "gw1") -> GatewaySpec:
    return GatewaySpec(name=name, port=1, run_id="run123abc456def")


def test_deploy_fails_fast_naming_the_image_import_when_the_cluster_cannot_pull_it(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    pod_controller_stand_in(emulator, waiting="ErrImagePull")
    made = driver(cluster, tmp_path)
    with pytest.raises(ClusterError) as caught:
        made.deploy(gateway_spec())
    assert one_line(caught.value) == (
        "pod openshell-cluster-gw1-0: ErrImagePull; import it into the cluster "
        "(k3d image import openshell-gateway:v1)"
    )


def test_the_run_namespace_is_made_labelled_by_the_driver_and_deleted_by_close(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    pod_controller_stand_in(emulator, waiting="ErrImagePull")
    made = driver(cluster, tmp_path)
    with pytest.raises(ClusterError):
        made.deploy(gateway_spec())
    namespace = emulator.get("namespaces", made.target_namespace)
    assert namespace["metadata"]["labels"] == manifests.namespace_labels(made.run_id)
    made.close()
    assert emulator.find("namespaces", made.target_namespace) is None


def test_a_namespace_the_user_named_is_used_and_never_deleted(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    pod_controller_stand_in(emulator, waiting="ErrImagePull")
    emulator.create(
        "namespaces", {"metadata": {"name": "mine", "labels": manifests.namespace_labels(None)}}
    )
    made = KubeDriver(cluster, tmp_path, "run123abc456def", namespace="mine")
    with pytest.raises(ClusterError):
        made.deploy(gateway_spec())
    assert emulator.find("statefulsets.apps", "openshell-cluster-gw1", "mine") is not None
    made.close()
    assert emulator.find("namespaces", "mine") is not None


def test_the_driver_refuses_before_creating_anything_when_a_verb_is_forbidden(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    emulator.deny("create", "statefulsets.apps")
    with pytest.raises(ClusterError, match=r"may not create statefulsets\.apps in namespace"):
        driver(cluster, tmp_path).deploy(gateway_spec())
    assert writes(emulator) == []


def test_down_reason_says_when_the_statefulset_is_gone_or_scaled_to_zero(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    made = deployed(emulator, cluster)
    handle = GatewayHandle(gateway_spec(), tmp_path, extra={"kube": made})
    kube_driver = driver(cluster, tmp_path)
    assert kube_driver.down_reason(handle) is None
    cluster.scale(made, 0)
    assert kube_driver.down_reason(handle) == (
        "the StatefulSet openshell-cluster-gw1 is scaled to zero"
    )
    cluster.delete_statefulset(made)
    assert kube_driver.down_reason(handle) == (
        "the StatefulSet openshell-cluster-gw1 does not exist"
    )


def test_the_reader_pod_mounts_the_claim_read_only_and_is_labelled_as_ours() -> None:
    reader = manifests.reader_pod(spec())
    assert reader["metadata"]["name"] == "openshell-cluster-gw1-reader"
    assert labels.is_ours(reader["metadata"]["labels"])
    assert reader["metadata"]["labels"][labels.ROLE] == manifests.READER_ROLE
    assert reader["spec"]["volumes"] == [
        {
            "name": "openshell-data",
            "persistentVolumeClaim": {
                "claimName": "openshell-data-openshell-cluster-gw1-0",
                "readOnly": True,
            },
        }
    ]
    (container,) = reader["spec"]["containers"]
    assert container["volumeMounts"][0]["readOnly"] is True
    assert container["image"] == "openshell-gateway:v1"


def test_the_port_forward_relays_each_connection_both_ways_and_passes_the_end_on(
    cluster: Cluster,
) -> None:
    """The relay of :class:`PortForward`, with a real TCP echo server standing in for the
    API server's port-forward stream (the emulator has no streaming)."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    opened: list[int] = []

    def opener() -> socket.socket:
        opened.append(1)
        return socket.create_connection(server.getsockname())

    forward = PortForward(cluster, spec(), free_port(), opener=opener)
    forward.start()
    try:
        for word in (b"first", b"second"):
            with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as client:
                client.sendall(word)
                client.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := client.recv(1024):
                    received += chunk
                assert received == word
        assert len(opened) == 2  # one stream per connection
    finally:
        forward.stop()
        server.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", forward.port), timeout=2):
        pass


def test_a_run_that_keeps_its_gateways_keeps_its_namespace(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    pod_controller_stand_in(emulator, waiting="ErrImagePull")
    made = driver(cluster, tmp_path)
    with pytest.raises(ClusterError):
        made.deploy(gateway_spec())
    made.close(keep=True)
    assert emulator.find("namespaces", made.target_namespace) is not None


def test_destroy_deletes_the_gateways_sandboxes_and_no_one_elses(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    made = deployed(emulator, cluster)
    mine = labels.ownership(gateway=made.name, role=contract.SANDBOX_ROLE)
    other = labels.ownership(gateway="other", role=contract.SANDBOX_ROLE)
    for name, own in [
        ("s-mine", mine),
        ("s-other", other),
        ("s-plain", {labels.GATEWAY: made.name}),
    ]:
        emulator.create(
            SANDBOX_CRD.key, {"metadata": {"name": name, "labels": own}}, made.namespace
        )
    assert cluster.sandboxes(made) == ["s-mine"]
    handle = GatewayHandle(gateway_spec(), tmp_path, extra={"kube": made})
    driver(cluster, tmp_path).destroy(handle)
    left = {s["metadata"]["name"] for s in emulator.list(SANDBOX_CRD.key, made.namespace)}
    assert left == {"s-other", "s-plain"}
    assert cluster.claims(made) == []


def ready_pod(made: KubeGatewaySpec, image: str, **meta: Any) -> dict[str, Any]:
    """The gateway's pod as the kubelet reports it once Ready (a stand-in for the kubelet)."""
    return {
        "metadata": {"name": made.pod_name, "labels": made.labels, **meta},
        "spec": {"containers": [{"name": manifests.CONTAINER, "image": image}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_the_wait_for_the_gateway_pod_wants_it_ready_on_the_image_asked_for(
    emulator: KubeEmulator, cluster: Cluster
) -> None:
    made = deployed(emulator, cluster)
    emulator.create("pods", ready_pod(made, "openshell-gateway:v1"), made.namespace)
    assert cluster.wait_pod_ready(made, timeout=5) is not None
    upgraded = KubeGatewaySpec(**{**made.__dict__, "image": "openshell-gateway:v2"})
    with pytest.raises(ClusterError) as caught:
        cluster.wait_pod_ready(upgraded, timeout=1)
    assert one_line(caught.value) == (
        "pod openshell-cluster-gw1-0 was not Ready on openshell-gateway:v2 within 1 s (phase "
        "Running); see `kubectl describe pod -n openshell-t openshell-cluster-gw1-0`"
    )


def test_a_pod_on_its_way_out_is_not_ready(emulator: KubeEmulator, cluster: Cluster) -> None:
    made = deployed(emulator, cluster)
    leaving = ready_pod(made, made.image, deletionTimestamp="2026-12-03T12:00:00Z")
    emulator.create("pods", leaving, made.namespace)
    with pytest.raises(ClusterError):
        cluster.wait_pod_ready(made, timeout=1)


def test_a_namespace_the_user_named_and_we_made_carries_no_run_id_so_no_sweep_takes_it(
    emulator: KubeEmulator, cluster: Cluster, tmp_path: Path
) -> None:
    pod_controller_stand_in(emulator, waiting="ErrImagePull")
    made = KubeDriver(cluster, tmp_path, "run123abc456def", namespace="named")
    with pytest.raises(ClusterError):
        made.deploy(gateway_spec())
    made.close()
    assert emulator.get("namespaces", "named")["metadata"]["labels"] == (
        manifests.namespace_labels(None)
    )
    assert cluster.sweep_namespaces(keep_runs=set()) == []

"""The ``kubernetes`` target: the reference gateway as a StatefulSet on the cluster of a kube
context (``pytest --openshell-gateway=kubernetes``), and the scenarios of that world.

Each run gets a fresh namespace ``openshell-{run id}`` (labelled as ours and with the run id),
deleted at the end of the run and swept by a later run when this one crashed; or the namespace
``--openshell-kube-namespace`` names, which must be ours or absent. Every check of
:meth:`~openshell_core.kube.cluster.Cluster.preflight` runs before anything is created.

Host access: the driver holds a port-forward from ``127.0.0.1:{spec.port}`` to the gateway pod's
TLS port (re-aimed at the new pod after each restart), or, with ``--openshell-kube-endpoint
HOST:PORT``, the user's own route to the Service (a node port, a load balancer); the CLI,
ssh-proxy and the SDK use it through the gateway's host-side metadata as with Docker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from openshell_core.errors import ClusterError, OpenShellError
from openshell_core.host.metadata import (
    GatewayMetadata,
    remove_gateway_files,
    write_metadata,
    write_mtls,
)
from openshell_core.kube.cluster import Cluster, pod_ready
from openshell_core.kube.manifests import KubeGatewaySpec
from openshell_core.retry import poll_until
from openshell_core.runs import live_runs, runs_dir
from openshell_core.wire import contract
from pytest_openshell.drivers import (
    Ability,
    CanForgetHostFiles,
    CanRecreate,
    ChoosesTransport,
    GatewayDriver,
    GatewayHandle,
    GatewaySpec,
    ListsSandboxContainers,
    ReportsDownReason,
    ReportsStateDigests,
)
from pytest_openshell.scenarios import (
    GatewayFate,
    HeldSessionFate,
    SandboxFate,
    Scenario,
    ScenarioRun,
    StateOutcome,
    Traits,
)

log = logging.getLogger("openshell.plugin")

TARGET = "kubernetes"
#: Seconds the gateway pod may take to become Ready (an image import or a claim binding is slow).
POD_TIMEOUT = 300.0


def run_namespace(run_id: str, worker: str = "main") -> str:
    """The fresh namespace of a run's process (each xdist worker has its own: a worker that ends
    deletes its namespace while the others still use theirs)."""
    return f"openshell-{run_id[:12].lower()}-{worker.lower().replace('_', '-')}"


@dataclass
class KubeDriver(
    GatewayDriver,
    CanRecreate,
    CanForgetHostFiles,
    ReportsStateDigests,
    ReportsDownReason,
    ListsSandboxContainers,
    ChoosesTransport,
):
    """Drives gateways on a cluster. ``namespace`` None: a fresh one for the run, made on the
    first deploy and deleted by :meth:`close`."""

    cluster: Cluster
    config_home: Path
    run_id: str
    namespace: str | None = None
    worker: str = "main"
    #: ``HOST:PORT`` the user reaches the Service by; None: a port-forward the driver holds
    endpoint: str | None = None
    pod_timeout: float = POD_TIMEOUT
    _made_namespace: str | None = None
    _forwards: dict[str, PortForward] = field(default_factory=dict)
    _checked: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_CONFIG_HOME": str(self.config_home)}

    @property
    def target_namespace(self) -> str:
        return self.namespace or run_namespace(self.run_id, self.worker)

    #: Where its gateways run (scenarios about Docker objects are skipped on other platforms).
    platform = "kubernetes"

    @property
    def transports(self) -> tuple[str, ...]:
        """Its gateway is deployed from manifests that name no transport: the default one."""
        return (contract.DEFAULT_TRANSPORT,)

    def preflight(self) -> None:
        """Every check, once, before the run's first object is created; then the namespaces
        that dead runs left are swept (only namespaces with our labels and a dead run's id)."""
        if self._checked:
            return
        self.cluster.preflight(self.target_namespace)
        self._checked = True
        keep = live_runs(runs_dir()) | {self.run_id}
        swept = self.cluster.sweep_namespaces(keep_runs=keep)
        if swept:
            log.info("swept the namespaces of dead runs: %s", ", ".join(swept))

    def kube_spec(self, spec: GatewaySpec, image: str | None = None) -> KubeGatewaySpec:
        return KubeGatewaySpec(
            name=spec.name,
            namespace=self.target_namespace,
            image=image or spec.image,
            sandbox_image=spec.sandbox_image,
            run_id=spec.run_id,
            service_port=int(self.endpoint.rsplit(":", 1)[1]) if self.endpoint else None,
            extra_sans=(self.endpoint.rsplit(":", 1)[0],) if self.endpoint else (),
        )

    # -- the four verbs -------------------------------------------------------------------------

    def deploy(self, spec: GatewaySpec) -> GatewayHandle:
        self.preflight()
        kube = self.kube_spec(spec)
        namespace_existed = self.cluster.namespace_labels(kube.namespace) is not None
        # A namespace the user named outlives the run: it carries no run id, so no sweep takes it.
        self.cluster.ensure_namespace(kube.namespace, None if self.namespace else self.run_id)
        if not namespace_existed and self.namespace is None:
            self._made_namespace = kube.namespace
        self.cluster.apply(kube)
        gateway = GatewayHandle(spec, self.config_home, extra={"kube": kube})
        self._come_up(gateway)
        return gateway

    def start(self, gateway: GatewayHandle, *, image: str | None = None) -> None:
        """``gateway start``: the StatefulSet back at one replica (made again when it was
        deleted; on ``image`` when given), then the port-forward aimed at its pod."""
        # Without an image: the one it last ran (as a resume on Docker uses the recorded one).
        kube = _kube(gateway) if image is None else replace(_kube(gateway), image=image)
        found = self.cluster.statefulset(kube)
        if found is None:
            self.cluster.apply(kube)
        elif image is not None:
            self.cluster.set_image(kube)
        else:
            self.cluster.scale(kube, 1)
        gateway.extra["kube"] = kube
        self._come_up(gateway)

    def stop(self, gateway: GatewayHandle) -> None:
        """Scale to zero: the pod goes, the claim and the host-side files stay."""
        kube = _kube(gateway)
        self.cluster.scale(kube, 0)
        self._unforward(gateway)
        self.cluster.wait_pod_gone(kube, timeout=self.pod_timeout)

    def destroy(self, gateway: GatewayHandle) -> None:
        """Everything of the gateway goes, and is waited for: a deploy under the same name
        right after must not find the old pod holding the old claim."""
        kube = _kube(gateway)
        self._unforward(gateway)
        self.cluster.destroy(kube)
        self.cluster.wait_pod_gone(kube, timeout=self.pod_timeout)
        poll_until(
            lambda: self.cluster.claims(kube),
            lambda claims: claims == [],
            timeout=self.pod_timeout,
            what=f"the claims of gateway {gateway.name} deleted",
        )
        remove_gateway_files(gateway.name, self.env)

    # -- abilities ------------------------------------------------------------------------------

    def recreate(self, gateway: GatewayHandle) -> None:
        """``--recreate``: everything of the gateway goes, its claim too, and a fresh one comes."""
        kube = _kube(gateway)
        self.destroy(gateway)
        self.cluster.apply(kube)
        self._come_up(gateway)

    def forget(self, gateway: GatewayHandle) -> None:
        remove_gateway_files(gateway.name, self.env)

    def state_digests(self, gateway: GatewayHandle) -> dict[str, str]:
        """Digests of the secret state on the claim: read through the gateway's pod, or, while
        it is scaled to zero, through a reader pod that mounts the claim read-only."""
        kube = _kube(gateway)
        paths = {name: f"{contract.STATE_DIR}/{name}" for name in contract.GATEWAY_SECRET_STATE}
        if self.cluster.pod(kube) is not None:
            files = {path: self.cluster.read_file(kube, path) for path in paths.values()}
        else:
            files = self.cluster.read_claim(kube, paths.values(), timeout=self.pod_timeout)
        return {name: hashlib.sha256(files[path]).hexdigest() for name, path in paths.items()}

    def down_reason(self, gateway: GatewayHandle) -> str | None:
        kube = _kube(gateway)
        found = self.cluster.statefulset(kube)
        if found is None:
            return f"the StatefulSet {kube.object_name} does not exist"
        if not (found.get("spec") or {}).get("replicas"):
            return f"the StatefulSet {kube.object_name} is scaled to zero"
        return None

    def sandbox_containers(self, gateway: GatewayHandle, *, running: bool = False) -> list[str]:
        """The gateway's sandbox pods (only Ready ones with ``running``)."""
        pods = self.cluster.pods(_kube(gateway), role=contract.SANDBOX_ROLE)
        return sorted(str(p["metadata"]["name"]) for p in pods if not running or pod_ready(p))

    # -- host access ----------------------------------------------------------------------------

    def _come_up(self, gateway: GatewayHandle) -> None:
        kube = _kube(gateway)
        self.cluster.wait_pod_ready(kube, timeout=self.pod_timeout)
        if self.endpoint is None:
            self._unforward(gateway)
            forward = PortForward(self.cluster, kube, gateway.port)
            forward.start()
            self._forwards[gateway.name] = forward
            url = f"https://127.0.0.1:{gateway.port}"
        else:
            url = f"https://{self.endpoint}"
        pki = {
            name: self.cluster.read_file(kube, f"{contract.STATE_DIR}/{contract.pki_file(name)}")
            for name in (contract.CA_CERT_FILE, contract.CLIENT_CERT_FILE, contract.CLIENT_KEY_FILE)
        }
        write_mtls(
            gateway.name,
            ca_cert=pki[contract.CA_CERT_FILE],
            cert=pki[contract.CLIENT_CERT_FILE],
            key=pki[contract.CLIENT_KEY_FILE],
            env=self.env,
        )
        port = int(url.rsplit(":", 1)[1])
        write_metadata(
            dataclasses.replace(GatewayMetadata.local(gateway.name, port), gateway_endpoint=url),
            self.env,
        )

    def _unforward(self, gateway: GatewayHandle) -> None:
        forward = self._forwards.pop(gateway.name, None)
        if forward is not None:
            forward.stop()

    def close(self, *, keep: bool = False) -> None:
        """End the port-forwards; delete the run's namespace when this driver made it, unless
        the run keeps its gateways (``--openshell-keep``)."""
        for forward in self._forwards.values():
            forward.stop()
        self._forwards.clear()
        if self._made_namespace is not None and not keep:
            self.cluster.delete_namespace(self._made_namespace)
            self._made_namespace = None


def _kube(gateway: GatewayHandle) -> KubeGatewaySpec:
    kube = gateway.extra.get("kube")
    if not isinstance(kube, KubeGatewaySpec):
        raise OpenShellError(f"gateway {gateway.name} was not deployed by the kubernetes driver")
    return kube


class PortForward:
    """``127.0.0.1:{port}`` -> the gateway pod's TLS port, through the API server's port-forward
    (one stream per accepted connection), as ``kubectl port-forward`` does."""

    def __init__(
        self,
        cluster: Cluster,
        kube: KubeGatewaySpec,
        port: int,
        *,
        opener: Callable[[], socket.socket] | None = None,
    ) -> None:
        self.cluster, self.kube, self.port = cluster, kube, port
        #: opens one stream to the pod's port (default: the API server's port-forward)
        self.opener = opener or self._open_port_forward
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True, name=f"kube-pf-{self.port}").start()

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(local,), daemon=True).start()

    def _open_port_forward(self) -> socket.socket:
        from kubernetes.stream import portforward  # noqa: PLC0415

        forward = portforward(
            self.cluster.core.connect_get_namespaced_pod_portforward,
            self.kube.pod_name,
            self.kube.namespace,
            ports=str(contract.GATEWAY_PORT),
        )
        remote: socket.socket = forward.socket(contract.GATEWAY_PORT)
        return remote

    def _serve(self, local: socket.socket) -> None:
        try:
            remote = self.opener()
        except Exception as exc:
            log.warning("port-forward to %s failed: %s", self.kube.pod_name, exc)
            local.close()
            return

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
                sink.shutdown(socket.SHUT_WR)  # pass the end on; the other way may go on

        back = threading.Thread(target=pump, args=(remote, local), daemon=True)
        back.start()
        pump(local, remote)
        # The way back ends once the pod's side has passed the end on (bounded: a pod that
        # never answers the end must not hold the thread for ever).
        back.join(timeout=30)
        for end in (local, remote):
            with contextlib.suppress(OSError):
                end.close()


# -- scenarios ------------------------------------------------------------------------------------


def _driver(run: ScenarioRun) -> KubeDriver:
    if not isinstance(run.driver, KubeDriver):
        raise OpenShellError(
            f"scenario {run.scenario.key!r} runs only with --openshell-gateway=kubernetes"
        )
    return run.driver


def _delete_gateway_pod(run: ScenarioRun) -> None:
    driver = _driver(run)
    driver.cluster.delete_pod(_kube(run.gateway).namespace, _kube(run.gateway).pod_name)


def _start(run: ScenarioRun) -> None:
    run.driver.start(run.gateway)


def _stop(run: ScenarioRun) -> None:
    run.driver.stop(run.gateway)


def _delete_statefulset(run: ScenarioRun) -> None:
    driver = _driver(run)
    kube = _kube(run.gateway)
    driver.cluster.delete_statefulset(kube)
    driver.cluster.wait_pod_gone(kube, timeout=driver.pod_timeout)


def _nothing(run: ScenarioRun) -> None:
    """The rollout is the disruption: it replaces the pod itself."""


def _roll_out_upgrade(run: ScenarioRun) -> None:
    run.image = run.gateway.upgrade_image
    run.driver.start(run.gateway, image=run.image)


def _delete_sandbox_pod(run: ScenarioRun) -> None:
    """Behind the gateway's back: delete one running sandbox pod (its claim stays)."""
    driver = _driver(run)
    running = driver.sandbox_containers(run.gateway, running=True)
    if running:
        driver.cluster.delete_pod(_kube(run.gateway).namespace, running[0], grace=0)
        run.sandbox_fates[running[0]] = SandboxFate.RECREATED


def _await_sandbox_pods(run: ScenarioRun) -> None:
    driver = _driver(run)
    wanted = set(run.sandbox_fates)
    poll_until(
        lambda: set(driver.sandbox_containers(run.gateway, running=True)),
        lambda ready: wanted <= ready,
        timeout=driver.pod_timeout,
        what=f"the sandbox pods {sorted(wanted)} Ready again",
    )


def _drain_our_pods(run: ScenarioRun) -> None:
    """A drain of the gateway pod's node limited to our pods: the node itself is not ours, so it
    is never cordoned; the gateway's StatefulSet is told to avoid it, and our pods on it go."""
    driver = _driver(run)
    kube = _kube(run.gateway)
    pod = driver.cluster.pod(kube) or {}
    node = (pod.get("spec") or {}).get("nodeName")
    run.notes["drained_node"] = node
    if not node:
        return
    driver.cluster.apps.patch_namespaced_stateful_set(
        kube.object_name,
        kube.namespace,
        {"spec": {"template": {"spec": {"affinity": _avoid(node)}}}},
    )
    for sandbox in driver.cluster.pods(kube, role=contract.SANDBOX_ROLE):
        if (sandbox.get("spec") or {}).get("nodeName") == node:
            driver.cluster.delete_pod(kube.namespace, str(sandbox["metadata"]["name"]))
            run.sandbox_fates[str(sandbox["metadata"]["name"])] = SandboxFate.RECREATED
    driver.cluster.delete_pod(kube.namespace, kube.pod_name)


def _avoid(node: str) -> dict[str, Any]:
    term = {
        "matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [node]}
        ]
    }
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def _two_nodes(driver: object) -> str | None:
    if not isinstance(driver, KubeDriver):
        return "node-drain runs only with --openshell-gateway=kubernetes"
    nodes = driver.cluster.nodes()
    if len(nodes) < 2:
        return (
            f"node-drain needs two schedulable nodes and the cluster has {len(nodes)} "
            "(k3d cluster create --agents 1 makes two)"
        )
    return None


_POD_REPLACED = Traits(
    gateway=GatewayFate.RECREATED,
    sandboxes=SandboxFate.KEPT,
    state=StateOutcome.SURVIVES,
    held_session=HeldSessionFate.CARRIES_ON,
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "pod-delete",
        "kubectl delete pod of the gateway (the StatefulSet makes it again), then gateway start",
        _delete_gateway_pod,
        _start,
        traits=_POD_REPLACED,
        core=True,
    ),
    Scenario(
        "scale-to-zero",
        "the gateway's StatefulSet scaled to 0 (gateway stop), then to 1 (gateway start)",
        _stop,
        _start,
        traits=_POD_REPLACED,
        core=True,
    ),
    Scenario(
        "statefulset-delete-keep-claim",
        "kubectl delete statefulset of the gateway (its claim stays), then gateway start",
        _delete_statefulset,
        _start,
        traits=_POD_REPLACED,
        core=True,
    ),
    Scenario(
        "image-rollout",
        "the gateway's StatefulSet rolled out onto the upgrade image, on the same claim",
        _nothing,
        _roll_out_upgrade,
        traits=_POD_REPLACED,
        core=True,
    ),
    Scenario(
        "sandbox-pod-delete",
        "a sandbox pod deleted behind the gateway's back (its Sandbox and claim stay)",
        _delete_sandbox_pod,
        _await_sandbox_pods,
        traits=Traits(
            gateway=GatewayFate.KEPT,
            sandboxes=SandboxFate.KEPT,
            some_sandboxes=frozenset({SandboxFate.RECREATED}),
            state=StateOutcome.SURVIVES,
            held_session=HeldSessionFate.ENDS,
            abilities=frozenset({Ability.SANDBOX_CONTAINERS}),
        ),
        core=True,
    ),
    Scenario(
        "node-drain",
        "our pods on the gateway pod's node evicted and the gateway kept off that node (the node "
        "itself is not ours and is never cordoned); needs two schedulable nodes",
        _drain_our_pods,
        _start,
        traits=Traits(
            gateway=GatewayFate.RECREATED,
            sandboxes=SandboxFate.KEPT,
            some_sandboxes=frozenset({SandboxFate.RECREATED}),
            state=StateOutcome.SURVIVES,
            held_session=HeldSessionFate.ENDS,
            abilities=frozenset({Ability.SANDBOX_CONTAINERS}),
        ),
        precondition=_two_nodes,
    ),
)


def make_driver(
    *,
    context: str | None,
    namespace: str | None,
    endpoint: str | None,
    config_home: Path,
    run_id: str,
    worker: str = "main",
    connect: Callable[[str | None], Cluster] | None = None,
) -> KubeDriver:
    """The driver of the ``kubernetes`` target; :class:`ClusterError` when no context can be had."""
    from openshell_core.kube.cluster import connect as connect_context  # noqa: PLC0415

    cluster = (connect or connect_context)(context)
    if namespace:
        from openshell_core.kube.manifests import validate_namespace  # noqa: PLC0415

        validate_namespace(namespace)
    return KubeDriver(
        cluster, config_home, run_id, namespace=namespace, endpoint=endpoint, worker=worker
    )


__all__ = ["SCENARIOS", "TARGET", "ClusterError", "KubeDriver", "make_driver"]

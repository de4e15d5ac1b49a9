"""The Kubernetes objects of a gateway on a cluster, rendered as plain dicts (``kubectl apply``
takes them as YAML: :func:`to_yaml`, or ``pytest-openshell kube manifests``).

A gateway called ``{name}`` in namespace ``{ns}`` is:

- a ``Namespace`` (only when we create it; labelled as ours, so a sweep may delete it),
- a ``ServiceAccount``, a ``Role`` and a ``RoleBinding`` ``openshell-cluster-{name}``: what the
  gateway's Kubernetes compute driver does to ``Sandbox`` resources, pods, claims and events in
  ``{ns}``, and nothing cluster-wide,
- a ``StatefulSet`` ``openshell-cluster-{name}`` with one replica and the claim template
  ``openshell-data`` mounted at ``/var/lib/openshell`` (the gateway's whole state: store, PKI,
  handshake secret, as on the Docker volume). Its claim
  ``openshell-data-openshell-cluster-{name}-0`` is retained when the StatefulSet is deleted or
  scaled down; only ``destroy`` and ``--recreate`` delete it.
- a ``Service`` ``openshell-cluster-{name}`` on the gateway's TLS port (``ClusterIP``; ``NodePort``
  when the user names a node port to reach it by).

Identity: the pod is ``openshell-cluster-{name}-0`` whatever node it lands on and however often it
is deleted (a StatefulSet's ordinal names are stable), and it is always the claim's only user. The
gateway's node identity is not the pod's hostname but ``node_name(name)`` (``openshell-{name}``
normalised, as in Docker), passed in ``OPENSHELL_NODE_NAME``: the same gateway name gives the same
identity in Docker and on a cluster, and the pod name never reaches the sandboxes' labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from openshell_core import labels
from openshell_core.errors import UsageError
from openshell_core.gateway.names import container_name, node_name
from openshell_core.wire import contract

#: The claim template's name, as upstream's chart calls it; the claim of pod ``-0`` is
#: ``{DATA_CLAIM}-{statefulset}-0``.
DATA_CLAIM: Final = "openshell-data"
CONTAINER: Final = "openshell-gateway"
PORT_NAME: Final = "grpc"
#: The role label of a namespace this project made (a sweep deletes only those).
NAMESPACE_ROLE: Final = "namespace"
SANDBOX_GROUP: Final = "agents.x-k8s.io"
#: A StatefulSet's pods carry ``controller-revision-hash: {statefulset}-{10 characters}``, a label
#: value of at most 63: so the StatefulSet's name may have 52 at most, the gateway name 34.
MAX_NAME_LENGTH: Final = 52 - len(contract.GATEWAY_OBJECT_PREFIX)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

Manifest = dict[str, Any]


def validate_kube_name(name: str) -> str:
    """Return ``name`` when it can name a gateway's Kubernetes objects; else :class:`UsageError`."""
    if not _DNS_LABEL.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise UsageError(
            f"gateway name {name!r} cannot name Kubernetes objects: use at most "
            f"{MAX_NAME_LENGTH} lowercase letters, digits and '-', starting and ending with a "
            "letter or digit"
        )
    return name


def validate_namespace(namespace: str) -> str:
    if not _DNS_LABEL.fullmatch(namespace) or len(namespace) > 63:
        raise UsageError(
            f"namespace {namespace!r} is not a Kubernetes namespace name: at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit"
        )
    return namespace


@dataclass(frozen=True)
class KubeGatewaySpec:
    """Everything a gateway on a cluster is rendered from.

    :param service_port: a node port the user reaches the gateway by (the Service becomes a
        ``NodePort``); None: ``ClusterIP``, reached through a port-forward.
    :param extra_sans: host names the user reaches it by, for the server certificate.
    """

    name: str
    namespace: str
    image: str
    sandbox_image: str
    run_id: str | None = None
    storage: str = "1Gi"
    storage_class: str | None = None
    service_port: int | None = None
    extra_sans: tuple[str, ...] = ()
    faults: str = ""

    def __post_init__(self) -> None:
        validate_kube_name(self.name)
        validate_namespace(self.namespace)

    @property
    def object_name(self) -> str:
        """The StatefulSet, Service, ServiceAccount, Role and RoleBinding."""
        return container_name(self.name)

    @property
    def pod_name(self) -> str:
        return f"{self.object_name}-0"

    @property
    def claim_name(self) -> str:
        return f"{DATA_CLAIM}-{self.object_name}-0"

    @property
    def node_name(self) -> str:
        return node_name(self.name)

    @property
    def labels(self) -> dict[str, str]:
        """Ownership labels of every object of the gateway (its claim included)."""
        extra = {"gateway": self.name, "role": contract.GATEWAY_ROLE}
        if self.run_id:
            extra["run_id"] = self.run_id
        return labels.ownership(**extra)

    @property
    def selector(self) -> dict[str, str]:
        return {labels.GATEWAY: self.name, labels.ROLE: contract.GATEWAY_ROLE}


def namespace_labels(run_id: str | None) -> dict[str, str]:
    """The labels of a namespace we create: ours, and the run's when a test run made it."""
    extra = {"role": NAMESPACE_ROLE}
    if run_id:
        extra["run_id"] = run_id
    return labels.ownership(**extra)


def namespace(name: str, run_id: str | None) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": validate_namespace(name), "labels": namespace_labels(run_id)},
    }


def _meta(spec: KubeGatewaySpec, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or spec.object_name,
        "namespace": spec.namespace,
        "labels": dict(spec.labels),
    }


def service_account(spec: KubeGatewaySpec) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec)}


def role(spec: KubeGatewaySpec) -> Manifest:
    """What the gateway's compute driver does in its namespace: upstream's chart grants the
    ``Sandbox`` verbs and reads of events and pods; here pods are also listed, watched and
    deleted (a sandbox whose pod vanished is noticed; a stuck one replaced), and claims patched
    and deleted (a workspace is released from its ``Sandbox`` before a delete that keeps it, and
    goes with ``sandbox delete``)."""
    read = ["get", "list", "watch"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(spec),
        "rules": [
            {
                "apiGroups": [SANDBOX_GROUP],
                "resources": ["sandboxes", "sandboxes/status"],
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": [*read, "delete"]},
            {
                "apiGroups": [""],
                "resources": ["persistentvolumeclaims"],
                "verbs": [*read, "patch", "delete"],
            },
            {"apiGroups": [""], "resources": ["events"], "verbs": read},
        ],
    }


def role_binding(spec: KubeGatewaySpec) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(spec),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": spec.object_name,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": spec.object_name, "namespace": spec.namespace}
        ],
    }


def _environment(spec: KubeGatewaySpec) -> list[dict[str, Any]]:
    service = spec.object_name
    sans = [
        service,
        f"{service}.{spec.namespace}",
        f"{service}.{spec.namespace}.svc",
        f"{service}.{spec.namespace}.svc.cluster.local",
        *spec.extra_sans,
    ]
    env: list[dict[str, Any]] = [
        {"name": contract.GATEWAY_NAME_ENV, "value": spec.name},
        {"name": contract.NODE_NAME_ENV, "value": spec.node_name},
        {"name": contract.SANDBOX_IMAGE_ENV, "value": spec.sandbox_image},
        {"name": contract.GATEWAY_PORT_ENV, "value": str(contract.GATEWAY_PORT)},
        {"name": contract.GATEWAY_IMAGE_ENV, "value": spec.image},
        {"name": contract.COMPUTE_DRIVER_ENV, "value": contract.KUBERNETES_COMPUTE_DRIVER},
        {
            "name": contract.KUBE_NAMESPACE_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": contract.EXTRA_SANS_ENV, "value": ",".join(sans)},
    ]
    if spec.run_id:
        env.append({"name": contract.RUN_ID_ENV, "value": spec.run_id})
    if spec.faults:
        env.append({"name": contract.FAULTS_ENV, "value": spec.faults})
    return env


#: The image's own health check, as the pod's readiness probe (store open, secrets and PKI made,
#: TLS port listening).
HEALTH_COMMAND: Final = ("python3", "-m", "openshell_core.server.healthcheck")


def stateful_set(spec: KubeGatewaySpec, *, replicas: int = 1) -> Manifest:
    claim: dict[str, Any] = {
        "metadata": {"name": DATA_CLAIM, "labels": dict(spec.labels)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage}},
        },
    }
    if spec.storage_class:
        claim["spec"]["storageClassName"] = spec.storage_class
    pod_labels = dict(spec.labels)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(spec),
        "spec": {
            "serviceName": spec.object_name,
            "replicas": replicas,
            "selector": {"matchLabels": spec.selector},
            # Explicit, though it is the default: the claim outlives the StatefulSet.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": spec.object_name,
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": spec.image,
                            # The offline-built images are imported into the cluster, never pulled.
                            "imagePullPolicy": "IfNotPresent",
                            "env": _environment(spec),
                            "ports": [
                                {
                                    "name": PORT_NAME,
                                    "containerPort": contract.GATEWAY_PORT,
                                    "protocol": "TCP",
                                }
                            ],
                            "readinessProbe": {
                                "exec": {"command": list(HEALTH_COMMAND)},
                                "periodSeconds": 2,
                                "failureThreshold": 3,
                            },
                            "volumeMounts": [{"name": DATA_CLAIM, "mountPath": contract.STATE_DIR}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }


def service(spec: KubeGatewaySpec) -> Manifest:
    port: dict[str, Any] = {
        "name": PORT_NAME,
        "port": contract.GATEWAY_PORT,
        "targetPort": PORT_NAME,
        "protocol": "TCP",
    }
    if spec.service_port is not None:
        port["nodePort"] = spec.service_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec),
        "spec": {
            "type": "ClusterIP" if spec.service_port is None else "NodePort",
            "selector": spec.selector,
            "ports": [port],
        },
    }


#: The role label of the short-lived pod that reads a stopped gateway's claim.
READER_ROLE: Final = "reader"


def reader_pod(spec: KubeGatewaySpec) -> Manifest:
    """A pod that mounts the gateway's claim read-only and does nothing, so that its files can be
    read while the gateway is scaled to zero (as a never-started reader container reads a stopped
    gateway's volume on Docker). Labelled as ours, with its own role; deleted after use."""
    own = {**spec.labels, labels.ROLE: READER_ROLE}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{spec.object_name}-reader",
            "namespace": spec.namespace,
            "labels": own,
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": READER_ROLE,
                    "image": spec.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "600"],
                    "volumeMounts": [
                        {"name": DATA_CLAIM, "mountPath": contract.STATE_DIR, "readOnly": True}
                    ],
                }
            ],
            "volumes": [
                {
                    "name": DATA_CLAIM,
                    "persistentVolumeClaim": {"claimName": spec.claim_name, "readOnly": True},
                }
            ],
        },
    }


def render(spec: KubeGatewaySpec, *, with_namespace: bool = True) -> list[Manifest]:
    """Every object of the gateway, in the order they are applied (namespace first)."""
    made = [
        service_account(spec),
        role(spec),
        role_binding(spec),
        service(spec),
        stateful_set(spec),
    ]
    return [namespace(spec.namespace, spec.run_id), *made] if with_namespace else made


def to_yaml(manifests: list[Manifest]) -> str:
    """The manifests as one multi-document YAML text, for ``kubectl apply -f -``."""
    import yaml  # noqa: PLC0415 - only the YAML dump needs it

    return yaml.safe_dump_all(manifests, sort_keys=False)

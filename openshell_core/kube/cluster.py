"""A gateway's lifecycle on a Kubernetes cluster, through the official ``kubernetes`` client.

Everything that can be refused is checked first (:meth:`Cluster.preflight`): a context, an API
server that answers, a namespace that is ours or absent, the ``Sandbox`` resource, and every verb
the lifecycle uses. Each refusal is one line naming the fix, raised before anything is created.
Only objects labelled ``openshell.ai/managed-by=pytest-openshell`` are ever modified or deleted,
and the gateway's claim only by :meth:`Cluster.destroy` (``destroy``, ``--recreate``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Final

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException

from openshell_core import labels
from openshell_core.errors import ClusterError, ReadinessTimeout
from openshell_core.kube import manifests
from openshell_core.kube.manifests import KubeGatewaySpec, Manifest
from openshell_core.retry import poll_until

log = logging.getLogger("openshell.kube")

# The client's models are typed loosely (every field optional, dict bodies refused by the stubs):
# the objects are handled as the JSON they are.
client: Any = kubernetes.client
config: Any = kubernetes.config

#: The ``Sandbox`` API versions the compute driver speaks, preferred first.
SANDBOX_VERSIONS: Final = ("v1beta1", "v1alpha1")
#: Seconds a request to the API server may take before it counts as unreachable.
REQUEST_TIMEOUT: Final = 10.0
#: What a pod waiting for this reason will never get past without the user.
_HOPELESS_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff"}
)


@dataclass(frozen=True)
class Access:
    """One verb on one resource that the lifecycle needs (``namespace`` None: cluster-wide)."""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""

    def describe(self) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {what}" + (f".{self.group}" if self.group else "")


#: What deploy, start, stop, destroy and the port-forward do in the gateway's namespace.
NAMESPACED_ACCESS: Final = (
    *(Access(v, "serviceaccounts") for v in ("create", "get", "delete")),
    *(Access(v, "services") for v in ("create", "get", "delete")),
    *(
        Access(v, r, "rbac.authorization.k8s.io")
        for r in ("roles", "rolebindings")
        for v in ("create", "get", "delete")
    ),
    *(Access(v, "statefulsets", "apps") for v in ("create", "get", "patch", "delete")),
    *(Access(v, "pods") for v in ("get", "list", "delete")),
    Access("create", "pods", subresource="portforward"),
    Access("create", "pods", subresource="exec"),
    *(Access(v, "persistentvolumeclaims") for v in ("get", "list", "delete")),
    *(Access(v, "sandboxes", manifests.SANDBOX_GROUP) for v in ("get", "list", "delete")),
)
#: What a fresh namespace per run needs, cluster-wide.
NAMESPACE_ACCESS: Final = tuple(
    Access(v, "namespaces") for v in ("create", "get", "list", "delete")
)


def contexts(config_file: str | None = None) -> tuple[list[str], str | None]:
    """The kube config's context names and the current one ([] and None: no kube config)."""
    try:
        found, active = config.list_kube_config_contexts(config_file=config_file)
    except (config.ConfigException, FileNotFoundError, TypeError):
        return [], None
    return [str(c["name"]) for c in found or []], (str(active["name"]) if active else None)


def connect(context: str | None, *, config_file: str | None = None) -> Cluster:
    """A client of the cluster of ``context`` (None: the kube config's current context).

    :raises ClusterError: no kube config, no current context, or no context of that name.
    """
    names, active = contexts(config_file)
    if not names:
        raise ClusterError(
            "no Kubernetes context: no kube config found (KUBECONFIG or ~/.kube/config); create "
            "a cluster (k3d cluster create openshell) or point KUBECONFIG at one"
        )
    chosen = context or active
    if chosen is None:
        raise ClusterError(
            "no current Kubernetes context in the kube config; pass --openshell-kube-context "
            f"(known: {', '.join(names)}) or run `kubectl config use-context NAME`"
        )
    if chosen not in names:
        raise ClusterError(
            f"no Kubernetes context {chosen!r} in the kube config; known: {', '.join(names)}"
        )
    api = config.new_client_from_config(config_file=config_file, context=chosen)
    return Cluster(api, chosen)


def _reason(exc: ApiException) -> str:
    return f"{exc.status} {exc.reason}".strip()


class Cluster:
    """The cluster of one context: checks, the gateway's objects, namespaces we own."""

    def __init__(self, api: Any, context: str) -> None:
        self.api = api
        self.context = context
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._sandbox_version: str | None = None

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    # -- checks, before anything is created ---------------------------------------------------

    def _get(self, path: str) -> dict[str, Any]:
        """GET ``path`` as plain JSON (discovery and ``/version`` answers vary by server)."""
        method, url, headers, _, _ = self.api.param_serialize(
            "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
        )
        answer = self.api.call_api(
            method, url, header_params=headers, _request_timeout=REQUEST_TIMEOUT
        )
        data = answer.read()
        if answer.status >= 400:
            raise ApiException(status=answer.status, reason=answer.reason, body=data)
        found = json.loads(data or b"{}")
        return dict(found or {})

    def check_reachable(self) -> None:
        """:raises ClusterError: the API server does not answer, or refuses our credentials."""
        try:
            self._get("/version")
        except ApiException as exc:
            if exc.status in (401, 403):
                raise ClusterError(
                    f"the Kubernetes API server at {self.host} (context {self.context}) refuses "
                    f"our credentials ({_reason(exc)}); refresh them in the kube config"
                ) from None
            raise ClusterError(
                f"the Kubernetes API server at {self.host} (context {self.context}) answered "
                f"{_reason(exc)} to GET /version; check that it is healthy"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(
                f"the Kubernetes API server at {self.host} (context {self.context}) does not "
                f"answer ({type(exc).__name__}); start the cluster (k3d cluster start) or choose "
                "another context with --openshell-kube-context"
            ) from None

    def sandbox_version(self) -> str:
        """The ``Sandbox`` API version the cluster serves (``v1beta1`` preferred), found once.

        :raises ClusterError: the cluster has no ``Sandbox`` resource.
        """
        if self._sandbox_version is None:
            self._sandbox_version = self._find_sandbox_version()
        return self._sandbox_version

    def _find_sandbox_version(self) -> str:
        for version in SANDBOX_VERSIONS:
            path = f"/apis/{manifests.SANDBOX_GROUP}/{version}"
            try:
                found = self._get(path)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise ClusterError(
                    f"the cluster (context {self.context}) answered {_reason(exc)} to GET {path}; "
                    "check that the API server is healthy"
                ) from None
            names = {str(r.get("name")) for r in found.get("resources") or []}
            if "sandboxes" in names:
                return version
        raise ClusterError(
            f"the cluster (context {self.context}) serves no Sandbox resource "
            f"({manifests.SANDBOX_GROUP} {' or '.join(SANDBOX_VERSIONS)}); install the "
            "agent-sandbox controller and its CRDs (kubernetes-sigs/agent-sandbox) first"
        )

    def namespace_labels(self, name: str) -> dict[str, str] | None:
        """The labels of namespace ``name`` (None: it does not exist)."""
        try:
            found = self.core.read_namespace(name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterError(
                f"cannot read namespace {name!r} ({_reason(exc)}); use a context that may"
            ) from None
        return dict(found.metadata.labels or {})

    def check_namespace(self, name: str) -> bool:
        """Whether namespace ``name`` exists (then it is ours).

        :raises ClusterError: it exists without our label.
        """
        found = self.namespace_labels(name)
        if found is not None and not labels.is_ours(found):
            raise ClusterError(
                f"namespace {name!r} exists and is not ours (no label "
                f"{labels.MANAGED_BY}={labels.MANAGER}); name another with "
                "--openshell-kube-namespace, or leave it out for a fresh one"
            )
        return found is not None

    def allowed(self, access: Access, namespace: str | None) -> bool:
        attributes: dict[str, Any] = {"verb": access.verb, "resource": access.resource}
        if access.group:
            attributes["group"] = access.group
        if access.subresource:
            attributes["subresource"] = access.subresource
        if namespace:
            attributes["namespace"] = namespace
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        review = client.AuthorizationV1Api(self.api).create_self_subject_access_review(
            body, _request_timeout=REQUEST_TIMEOUT
        )
        status = review.status
        return bool(status is not None and status.allowed)

    def check_access(self, namespace: str, *, create_namespace: bool) -> None:
        """:raises ClusterError: for the first verb our credentials may not use."""
        needed: list[tuple[Access, str | None]] = [(a, namespace) for a in NAMESPACED_ACCESS]
        if create_namespace:
            needed = [(a, None) for a in NAMESPACE_ACCESS] + needed
        for access, where in needed:
            if not self.allowed(access, where):
                scope = f"in namespace {where}" if where else "cluster-wide"
                raise ClusterError(
                    f"the credentials of context {self.context} may not {access.describe()} "
                    f"{scope}; grant it (e.g. a RoleBinding to the 'admin' ClusterRole"
                    + (", and namespace create/delete" if create_namespace else "")
                    + ") or use a context that may"
                )

    def preflight(self, namespace: str) -> Preflight:
        """Every check, in order; nothing is created by any of them."""
        self.check_reachable()
        version = self.sandbox_version()
        exists = self.check_namespace(namespace)
        self.check_access(namespace, create_namespace=not exists)
        return Preflight(version, namespace_exists=exists)

    # -- namespaces ---------------------------------------------------------------------------

    def ensure_namespace(self, name: str, run_id: str | None) -> None:
        """Create namespace ``name``, labelled as ours, unless it exists (and is ours)."""
        if self.check_namespace(name):
            return
        self._create(manifests.namespace(name, run_id))

    def delete_namespace(self, name: str) -> bool:
        """Delete namespace ``name`` when it carries our labels (True when deleted)."""
        found = self.namespace_labels(name)
        if (
            found is None
            or not labels.is_ours(found)
            or (found.get(labels.ROLE) != manifests.NAMESPACE_ROLE)
        ):
            return False
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(name)
            log.info("deleted namespace %s", name)
            return True
        return False

    def sweep_namespaces(self, *, keep_runs: Collection[str]) -> list[str]:
        """Delete the namespaces that runs not in ``keep_runs`` made (after a crashed run). The
        label selector asks for ours, and each answer's labels are checked again: a namespace
        without them is never touched."""
        selector = (
            f"{labels.MANAGED_BY}={labels.MANAGER},{labels.ROLE}={manifests.NAMESPACE_ROLE},"
            f"{labels.RUN_ID}"
        )
        found = self.core.list_namespace(label_selector=selector, _request_timeout=REQUEST_TIMEOUT)
        swept = []
        for item in found.items:
            own = dict(item.metadata.labels or {})
            run = own.get(labels.RUN_ID)
            if (
                not labels.is_ours(own)
                or own.get(labels.ROLE) != manifests.NAMESPACE_ROLE
                or not run
                or run in keep_runs
            ):
                continue
            if self.delete_namespace(str(item.metadata.name)):
                swept.append(str(item.metadata.name))
        return sorted(swept)

    # -- the gateway's objects ----------------------------------------------------------------

    def _create(self, manifest: Manifest) -> None:
        """Create one object; one that exists already is left as it is when it is ours."""
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace = meta.get("namespace")
        makers: dict[str, Callable[..., Any]] = {
            "Namespace": self.core.create_namespace,
            "ServiceAccount": lambda body: self.core.create_namespaced_service_account(
                namespace, body
            ),
            "Service": lambda body: self.core.create_namespaced_service(namespace, body),
            "Role": lambda body: self.rbac.create_namespaced_role(namespace, body),
            "RoleBinding": lambda body: self.rbac.create_namespaced_role_binding(namespace, body),
            "StatefulSet": lambda body: self.apps.create_namespaced_stateful_set(namespace, body),
        }
        try:
            makers[kind](manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise ClusterError(
                    f"creating {kind} {meta['name']} failed ({_reason(exc)})"
                ) from None
            log.info("%s %s exists already", kind, meta["name"])

    def apply(self, spec: KubeGatewaySpec) -> None:
        """Create the gateway's objects that are missing (the namespace must exist)."""
        for manifest in manifests.render(spec, with_namespace=False):
            self._create(manifest)

    def statefulset(self, spec: KubeGatewaySpec) -> dict[str, Any] | None:
        try:
            found = self.apps.read_namespaced_stateful_set(spec.object_name, spec.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self.api.sanitize_for_serialization(found))

    def _ours(self, found: dict[str, Any] | None) -> bool:
        return found is not None and labels.is_ours((found.get("metadata") or {}).get("labels"))

    def scale(self, spec: KubeGatewaySpec, replicas: int) -> None:
        if not self._ours(self.statefulset(spec)):
            raise ClusterError(
                f"StatefulSet {spec.object_name} in {spec.namespace} is missing or not ours"
            )
        self.apps.patch_namespaced_stateful_set(
            spec.object_name, spec.namespace, {"spec": {"replicas": replicas}}
        )

    def set_image(self, spec: KubeGatewaySpec) -> None:
        """Roll the StatefulSet onto ``spec.image`` (the pod is replaced on the same claim)."""
        if not self._ours(self.statefulset(spec)):
            raise ClusterError(
                f"StatefulSet {spec.object_name} in {spec.namespace} is missing or not ours"
            )
        patch = manifests.stateful_set(spec)
        self.apps.patch_namespaced_stateful_set(
            spec.object_name,
            spec.namespace,
            {"spec": {"template": patch["spec"]["template"], "replicas": 1}},
        )

    def delete_statefulset(self, spec: KubeGatewaySpec) -> None:
        """Delete the StatefulSet and its pod; the claim stays (its retention policy)."""
        if not self._ours(self.statefulset(spec)):
            return
        self.apps.delete_namespaced_stateful_set(
            spec.object_name, spec.namespace, propagation_policy="Background"
        )

    def pod(self, spec: KubeGatewaySpec) -> dict[str, Any] | None:
        try:
            found = self.core.read_namespaced_pod(spec.pod_name, spec.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self.api.sanitize_for_serialization(found))

    def delete_pod(self, namespace: str, name: str, *, grace: int = 0) -> bool:
        """Delete pod ``name`` when it is ours (True when deleted)."""
        try:
            found = self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        if not labels.is_ours(found.metadata.labels):
            return False
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)
        return True

    def claims(self, spec: KubeGatewaySpec) -> list[str]:
        """The names of the gateway's claims (its data claim; sandboxes' workspaces are the
        compute driver's)."""
        found = self.core.list_namespaced_persistent_volume_claim(
            spec.namespace, label_selector=f"{labels.GATEWAY}={spec.name}"
        )
        return sorted(
            str(c.metadata.name)
            for c in found.items
            if labels.is_ours(c.metadata.labels)
            and (c.metadata.labels or {}).get(labels.GATEWAY) == spec.name
        )

    def pods(self, spec: KubeGatewaySpec, *, role: str) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_pod(
            spec.namespace, label_selector=f"{labels.GATEWAY}={spec.name},{labels.ROLE}={role}"
        )
        return [
            dict(self.api.sanitize_for_serialization(p))
            for p in found.items
            if labels.is_ours(p.metadata.labels)
            and (p.metadata.labels or {}).get(labels.GATEWAY) == spec.name
            and (p.metadata.labels or {}).get(labels.ROLE) == role
        ]

    def sandboxes(self, spec: KubeGatewaySpec) -> list[str]:
        """The names of the gateway's ``Sandbox`` resources (labelled as ours and its)."""
        found = self.custom.list_namespaced_custom_object(
            manifests.SANDBOX_GROUP,
            self.sandbox_version(),
            spec.namespace,
            "sandboxes",
            label_selector=f"{labels.MANAGED_BY}={labels.MANAGER},{labels.GATEWAY}={spec.name}",
        )
        return sorted(
            str(item["metadata"]["name"])
            for item in found.get("items") or []
            if labels.is_ours(item["metadata"].get("labels"))
            and item["metadata"]["labels"].get(labels.GATEWAY) == spec.name
        )

    def destroy(self, spec: KubeGatewaySpec) -> None:
        """Delete every object of the gateway, its claim and its sandboxes (with their workspace
        claims) included: ``destroy``, ``--recreate``. Only objects labelled as ours."""
        self.delete_statefulset(spec)
        version = self.sandbox_version()
        for name in self.sandboxes(spec):
            with contextlib.suppress(ApiException):
                self.custom.delete_namespaced_custom_object(
                    manifests.SANDBOX_GROUP, version, spec.namespace, "sandboxes", name
                )
        deleters: list[tuple[Callable[[], Any], Callable[[str, str], Any]]] = [
            (
                lambda: self.core.read_namespaced_service(spec.object_name, spec.namespace),
                self.core.delete_namespaced_service,
            ),
            (
                lambda: self.rbac.read_namespaced_role_binding(spec.object_name, spec.namespace),
                self.rbac.delete_namespaced_role_binding,
            ),
            (
                lambda: self.rbac.read_namespaced_role(spec.object_name, spec.namespace),
                self.rbac.delete_namespaced_role,
            ),
            (
                lambda: self.core.read_namespaced_service_account(spec.object_name, spec.namespace),
                self.core.delete_namespaced_service_account,
            ),
        ]
        for read, delete in deleters:
            try:
                found = read()
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            if labels.is_ours(found.metadata.labels):
                delete(spec.object_name, spec.namespace)
        for claim in self.claims(spec):
            self.core.delete_namespaced_persistent_volume_claim(claim, spec.namespace)

    def wait_pod_ready(self, spec: KubeGatewaySpec, *, timeout: float) -> dict[str, Any] | None:
        """The gateway's pod once it is Ready; fails fast when it cannot become so."""

        def hopeless() -> str | None:
            pod = self.pod(spec)
            for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _HOPELESS_WAITING:
                    fix = (
                        f"import it into the cluster (k3d image import {spec.image})"
                        if "Image" in waiting["reason"]
                        else f"see `kubectl logs -n {spec.namespace} {spec.pod_name}`"
                    )
                    return f"pod {spec.pod_name}: {waiting['reason']}; {fix}"
            return None

        try:
            # Ready on the wanted image: right after a rollout starts, the old pod still is Ready.
            return poll_until(
                lambda: self.pod(spec),
                lambda pod: pod_ready(pod) and pod_image(pod) == spec.image,
                timeout=timeout,
                what=f"pod {spec.pod_name} Ready on {spec.image}",
                fail_fast=hopeless,
            )
        except ReadinessTimeout:
            pod = self.pod(spec)
            phase = ((pod or {}).get("status") or {}).get("phase") or "absent"
            raise ClusterError(
                hopeless()
                or f"pod {spec.pod_name} was not Ready on {spec.image} within {timeout:.0f} s "
                f"(phase {phase}); see `kubectl describe pod -n {spec.namespace} {spec.pod_name}`"
            ) from None

    def wait_pod_gone(self, spec: KubeGatewaySpec, *, timeout: float) -> None:
        poll_until(
            lambda: self.pod(spec),
            lambda pod: pod is None,
            timeout=timeout,
            what=f"pod {spec.pod_name} gone",
        )

    def read_file(
        self, spec: KubeGatewaySpec, path: str, *, pod: str | None = None, container: str = ""
    ) -> bytes:
        """A file of the running gateway pod (``cat`` through the exec API)."""
        from kubernetes.stream import stream  # noqa: PLC0415

        text = stream(
            self.core.connect_get_namespaced_pod_exec,
            pod or spec.pod_name,
            spec.namespace,
            container=container or manifests.CONTAINER,
            command=["cat", path],
            stderr=False,
            stdin=False,
            stdout=True,
            tty=False,
        )
        return str(text).encode()

    def read_claim(
        self, spec: KubeGatewaySpec, paths: Collection[str], *, timeout: float
    ) -> dict[str, bytes]:
        """Files of the gateway's claim while no gateway pod holds it, through a reader pod
        (:func:`~openshell_core.kube.manifests.reader_pod`) made for this and deleted after."""
        reader = manifests.reader_pod(spec)
        name = reader["metadata"]["name"]
        try:
            self.core.create_namespaced_pod(spec.namespace, reader)
        except ApiException as exc:
            if exc.status != 409:
                raise ClusterError(f"creating pod {name} failed ({_reason(exc)})") from None
        try:
            poll_until(
                lambda: self._pod_named(spec.namespace, name),
                lambda pod: ((pod or {}).get("status") or {}).get("phase") == "Running",
                timeout=timeout,
                what=f"pod {name} running",
            )
            return {
                path: self.read_file(spec, path, pod=name, container=manifests.READER_ROLE)
                for path in paths
            }
        finally:
            self.delete_pod(spec.namespace, name)

    def _pod_named(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self.api.sanitize_for_serialization(found))

    def nodes(self) -> list[str]:
        """The schedulable nodes (not cordoned) of the cluster."""
        found = self.core.list_node(_request_timeout=REQUEST_TIMEOUT)
        return sorted(
            str(n.metadata.name) for n in found.items if not (n.spec and n.spec.unschedulable)
        )


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the ``Sandbox`` version served, whether the namespace exists."""

    sandbox_version: str
    namespace_exists: bool


def pod_image(pod: dict[str, Any] | None) -> str | None:
    """The image of the gateway container of ``pod`` (as its spec names it)."""
    for container in ((pod or {}).get("spec") or {}).get("containers") or []:
        if container.get("name") == manifests.CONTAINER:
            return str(container.get("image"))
    return None


def pod_ready(pod: dict[str, Any] | None) -> bool:
    """Ready, and not on its way out (a deleted pod may still say Ready for a moment)."""
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    log.info("%s took %.1f s", what, time.monotonic() - started)

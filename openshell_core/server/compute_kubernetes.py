"""The Kubernetes compute driver: each sandbox an ``agents.x-k8s.io`` ``Sandbox`` (the
kubernetes-sigs/agent-sandbox CRD, whose controller makes its pod and claims), as upstream's
``openshell-driver-kubernetes`` represents it. The only module of the gateway that knows
Kubernetes.

Objects of a sandbox, in the driver's namespace:

* ``Sandbox`` ``{api workspace}--{name}`` (upstream's shared-namespace name), labelled with the
  ownership labels, upstream's ``openshell.ai/sandbox-id``, ``-name``, ``-workspace``,
  ``openshell.ai/gateway-id`` and ``openshell.ai/managed-by``; ``v1beta1`` when the cluster serves
  it, else ``v1alpha1``;
* its pod template: one ``agent`` container (the sandbox image, the spec's environment, the
  workspace claim at ``/sandbox``) and the ``workspace-init`` init container, which seeds the claim
  from the image's ``/sandbox`` once and writes the sentinel;
* its ``workspace`` volume claim template: the controller makes the claim ``workspace-{Sandbox
  name}``, owned by the Sandbox, and binds it to every pod it makes for it (so a pod that vanished
  comes back on the same claim).

Stop and start patch the Sandbox as upstream does: ``spec.operatingMode`` ``Suspended`` /
``Running`` (``v1beta1``) or ``spec.replicas`` 0 / 1 (``v1alpha1``); the controller deletes the pod
and keeps the claim. Deleting a sandbox but not its workspace first releases the claim from the
Sandbox (the garbage collector would delete it with its owner); the controller adopts it again by
its name when the Sandbox is made again.

Everything the driver looks up it finds by label (as upstream: managed-by, sandbox id, gateway
id); nothing without this project's ``managed-by`` label is modified or deleted. At open, before
anything is made, :meth:`KubernetesComputeDriver.preflight` checks the API server answers, the
namespace exists, the Sandbox CRD is served, and RBAC allows every verb the driver uses: each
failure a one-line :class:`~openshell_core.errors.ClusterError` naming the fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from openshell_core import labels
from openshell_core.errors import ClusterError, NotFoundError, OpenShellError, UsageError
from openshell_core.sandbox import workspace
from openshell_core.server.compute import Observation, Ownership, RuntimeState, SandboxSpec
from openshell_core.wire import contract

log = logging.getLogger("openshell.server.compute")

Obj = dict[str, Any]

NAME: Final = contract.KUBERNETES_COMPUTE_DRIVER
GROUP: Final = "agents.x-k8s.io"
#: The Sandbox API versions the driver speaks, preferred first (as upstream).
VERSIONS: Final = ("v1beta1", "v1alpha1")
PLURAL: Final = "sandboxes"
KIND: Final = "Sandbox"
#: Set by the controller when the pod's name is not the Sandbox's.
POD_NAME_ANNOTATION: Final = f"{GROUP}/pod-name"
SUSPENDED_CONDITION: Final = "Suspended"
AGENT_CONTAINER: Final = "agent"
INIT_CONTAINER: Final = "workspace-init"
#: The volume claim template's name, and the pod volume the controller binds to its claim.
WORKSPACE_CLAIM: Final = "workspace"
CLAIM_SIZE: Final = "2Gi"
#: Seconds any one API call may take (upstream: 30).
API_TIMEOUT: Final = 30.0
#: Seconds a stop waits for the controller to confirm (upstream: the pod's grace period + 30).
STOP_TIMEOUT: Final = 60.0
#: Seconds each watch of the sandbox pods is asked to last: also how long the watch may take to
#: notice it was told to stop.
WATCH_WINDOW: Final = 5
#: Seconds before the pods are watched again after the API server failed to answer.
WATCH_RETRY: Final = 1.0
#: Pod phases in which the sandbox counts as running (Pending: scheduled, on its way).
_RUNNING_PHASES: Final = frozenset({"Running", "Pending"})
#: Where a pod's service account names its namespace.
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: What the driver does, per resource: checked with access reviews before anything is made.
REQUIRED_ACCESS: Final = (
    (GROUP, PLURAL, ("get", "list", "watch", "create", "patch", "delete")),
    ("", "pods", ("get", "list", "watch", "delete")),
    ("", "persistentvolumeclaims", ("get", "list", "patch", "delete")),
)


def kube_name(spec: SandboxSpec) -> str:
    """The Sandbox's name: upstream's ``{workspace}--{name}`` in a shared namespace."""
    return f"{spec.api_workspace}--{spec.name}"


def claim_name(sandbox_name: str) -> str:
    """The claim the controller makes from the ``workspace`` template (template-Sandbox)."""
    return f"{WORKSPACE_CLAIM}-{sandbox_name}"


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesSettings:
    """Where the API server is and the namespace the sandboxes live in.

    :param api: a plain URL (``kubectl proxy``, tests) or ``""``: the pod's service account when
        the gateway runs in a pod, else the kubeconfig.
    :param gateway_id: ``openshell.ai/gateway-id`` of this gateway's sandboxes; ``""``: the
        gateway's ownership label.
    """

    namespace: str
    api: str = ""
    context: str = ""
    gateway_id: str = ""
    driver: str = NAME

    def open(self, ownership: Ownership) -> KubernetesComputeDriver:
        driver = KubernetesComputeDriver(
            self.client(),
            namespace=self.namespace,
            ownership=ownership,
            gateway_id=self.gateway_id or ownership.gateway_label,
            where=self.api or self.context or "the configured cluster",
        )
        try:
            driver.preflight()
        except BaseException:
            driver.close()
            raise
        return driver

    def client(self) -> Any:
        """The official client's ``ApiClient`` for the configured API server."""
        if self.api:
            configuration = client.Configuration()
            configuration.host = self.api.rstrip("/")
            return client.ApiClient(configuration)
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                return client.ApiClient()
            return config.new_client_from_config(  # type: ignore[no-untyped-call]
                context=self.context or None
            )
        except config.ConfigException as exc:
            raise ClusterError(
                f"no Kubernetes API to reach ({exc}): run the gateway in a pod with a service "
                f"account, or set KUBECONFIG (and {contract.KUBE_CONTEXT_ENV}) or "
                f"{contract.KUBE_API_ENV}"
            ) from None


def settings_from_env(env: Mapping[str, str], *, gateway_name: str) -> KubernetesSettings:
    """:raises UsageError: no namespace is configured and the gateway runs in no pod."""
    namespace = env.get(contract.KUBE_NAMESPACE_ENV, "").strip()
    if not namespace and SERVICE_ACCOUNT_NAMESPACE.is_file():
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    if not namespace:
        raise UsageError(
            f"{contract.KUBE_NAMESPACE_ENV} is not set and the gateway runs in no pod: set it to "
            "the namespace of the gateway's sandboxes"
        )
    return KubernetesSettings(
        namespace=namespace,
        api=env.get(contract.KUBE_API_ENV, "").strip(),
        context=env.get(contract.KUBE_CONTEXT_ENV, "").strip(),
        gateway_id=env.get(contract.KUBE_GATEWAY_ID_ENV, "").strip(),
    )


# -- the driver ---------------------------------------------------------------------------------


class KubernetesComputeDriver:
    """Sandboxes as agent-sandbox ``Sandbox`` objects in one namespace."""

    name = NAME

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        ownership: Ownership,
        gateway_id: str,
        where: str = "the configured cluster",
        supervisor_port: int = contract.SUPERVISOR_PORT,
    ) -> None:
        self._client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._auth = client.AuthorizationV1Api(api_client)
        self._apis = client.ApisApi(api_client)
        self._version_api = client.VersionApi(api_client)
        self.namespace = namespace
        self._ownership = ownership
        self.gateway_id = gateway_id
        self._where = where
        self._port = supervisor_port
        #: The served Sandbox version, found by :meth:`preflight` (or at first use).
        self._version: str | None = None

    # -- preflight: every check before anything is made --

    def preflight(self) -> None:
        """Check that the cluster can run this gateway's sandboxes; :class:`ClusterError` (one
        line, naming the fix) when it cannot."""
        self._call(self._version_api.get_code, what="reach the API server")
        try:
            self._call(self._core.read_namespace, self.namespace, what="read the namespace")
        except NotFoundError:
            raise ClusterError(
                f"namespace {self.namespace!r} does not exist on {self._where}: create it "
                f"(kubectl create namespace {self.namespace}) or set "
                f"{contract.KUBE_NAMESPACE_ENV} to an existing one"
            ) from None
        except _Forbidden:
            pass  # a namespaced Role cannot grant reading namespaces: the reviews below check
        self.version()
        denied = [
            f"{verb} {resource}{'.' + group if group else ''}"
            for group, resource, verbs in REQUIRED_ACCESS
            for verb in verbs
            if not self._allowed(group, resource, verb)
        ]
        if denied:
            raise ClusterError(
                f"RBAC forbids this gateway in namespace {self.namespace!r}: "
                f"{', '.join(denied)}; grant them in the gateway's Role"
            )

    def version(self) -> str:
        """The Sandbox API version the cluster serves (v1beta1 preferred), found once."""
        if self._version is None:
            for version in VERSIONS:
                try:
                    self._call(
                        self._custom.list_namespaced_custom_object,
                        GROUP,
                        version,
                        self.namespace,
                        PLURAL,
                        limit=1,
                        what=f"list {PLURAL}.{GROUP}/{version}",
                    )
                except NotFoundError:
                    continue
                self._version = version
                log.info("Sandbox API %s/%s on %s", GROUP, version, self._where)
                break
            else:
                raise ClusterError(
                    f"{self._where} serves no {KIND} API ({GROUP} {' or '.join(VERSIONS)}): "
                    "install the agent-sandbox CRDs and controller "
                    "(kubernetes-sigs/agent-sandbox) first"
                )
        return self._version

    def _allowed(self, group: str, resource: str, verb: str) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": self.namespace,
                    "group": group,
                    "resource": resource,
                    "verb": verb,
                }
            },
        }
        answer = self._dict(
            self._call(self._auth.create_self_subject_access_review, review, what="review access")
        )
        return bool((answer.get("status") or {}).get("allowed"))

    # -- the protocol --

    def create(self, spec: SandboxSpec) -> None:
        found = self._find(spec.sandbox_id)
        if found is not None:
            self._start(found)
            return
        body = self.render(spec)
        name = body["metadata"]["name"]
        try:
            self._call(
                self._custom.create_namespaced_custom_object,
                GROUP,
                self.version(),
                self.namespace,
                PLURAL,
                body,
                what=f"create {KIND} {name}",
            )
        except _AlreadyExists:
            self._refuse_foreign(name, spec.sandbox_id)
            return
        log.info("created %s %s/%s", KIND, self.namespace, name)

    def start(self, sandbox_id: str) -> None:
        self._start(self._require(sandbox_id))

    def stop(self, sandbox_id: str) -> None:
        found = self._require(sandbox_id)
        if self._running_mode(found):
            found = self._patch_mode(found, running=False)
        self._await_stopped(found)

    def delete(self, sandbox_id: str, *, workspace: bool) -> None:
        found = self._find(sandbox_id)
        claims = self._claims(sandbox_id)
        if found is not None:
            if not workspace:
                for claim in claims:
                    self._release(claim, found)
            self._delete_sandbox(found)
        if workspace:
            for claim in claims:
                self._delete(
                    self._core.delete_namespaced_persistent_volume_claim,
                    claim["metadata"]["name"],
                    claim["metadata"]["uid"],
                    what="delete claim",
                )

    def adopt(self, sandbox_id: str) -> None:
        # A pod's address is routable from the gateway's pod as long as both run: there is no
        # path this gateway instance must re-establish, only the Sandbox to find.
        self._require(sandbox_id)

    def observe(self, sandbox_id: str) -> Observation:
        found = self._find(sandbox_id)
        claimed = bool(self._claims(sandbox_id))
        if found is None:
            return Observation(sandbox_id, RuntimeState.ABSENT, "missing", claimed)
        return self._observation(found, self._pod(found), claimed)

    def list_owned(self, gateway_label: str | None = None) -> list[Observation]:
        owner = gateway_label or self.gateway_id
        sandboxes = self._list_sandboxes(
            f"{labels.MANAGED_BY}={labels.MANAGER},{contract.GATEWAY_ID_LABEL}={owner},"
            f"{labels.SANDBOX_ID}"
        )
        pods = {
            pod["metadata"]["name"]: pod
            for pod in self._list_core(
                self._core.list_namespaced_pod, f"{labels.SANDBOX_ID}", what="list pods"
            )
        }
        claimed = {
            claim["metadata"]["labels"][labels.SANDBOX_ID]
            for claim in self._list_core(
                self._core.list_namespaced_persistent_volume_claim,
                f"{labels.MANAGED_BY}={labels.MANAGER},{labels.SANDBOX_ID}",
                what="list claims",
            )
        }
        observed = []
        for found in sandboxes:
            sandbox_id = found["metadata"]["labels"][labels.SANDBOX_ID]
            pod = pods.get(_pod_name(found))
            observed.append(self._observation(found, pod, sandbox_id in claimed))
        return observed

    def endpoint(self, sandbox_id: str) -> tuple[str, int]:
        pod = self._pod(self._require(sandbox_id))
        address = ((pod or {}).get("status") or {}).get("podIP")
        if not address:
            raise NotFoundError("address of the pod of sandbox", sandbox_id)
        return str(address), self._port

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """``changed()`` at each change of a pod of this gateway's sandboxes (made, its status
        changed, deleted), from a watch of the pods under this gateway's labels, asked for
        :data:`WATCH_WINDOW` seconds at a time, each from the resourceVersion the last one
        reached, so that no change falls between two. A 410 Gone (that version was compacted
        away) is answered by reading the pods again, and a ``changed()``: one may have been
        missed."""
        selector = ",".join(
            f"{key}={value}"
            for key, value in {
                labels.MANAGED_BY: labels.MANAGER,
                labels.GATEWAY: self._ownership.gateway_label,
                labels.ROLE: contract.SANDBOX_ROLE,
            }.items()
        )
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    listed = self._dict(
                        self._call(
                            self._core.list_namespaced_pod,
                            self.namespace,
                            label_selector=selector,
                            what="list pods",
                        )
                    )
                    version = str(listed["metadata"]["resourceVersion"])
                pods = watch.Watch()  # type: ignore[no-untyped-call]
                stream = pods.stream(  # type: ignore[no-untyped-call]
                    self._core.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=WATCH_WINDOW,
                    _request_timeout=WATCH_WINDOW + API_TIMEOUT,
                )
                for event in stream:
                    if event["type"] != "BOOKMARK":
                        changed()
                    if stop.is_set():
                        break
                version = pods.resource_version or version
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch of the sandbox pods expired (410 Gone): reading them again")
                    version = None
                    changed()
                    continue
                log.info("watching the sandbox pods: %s", self._error(exc, "watch pods"))
                stop.wait(WATCH_RETRY)
            except (OpenShellError, HTTPError) as exc:
                log.info("watching the sandbox pods: %s", exc)
                stop.wait(WATCH_RETRY)

    def workspace_name(self, sandbox_id: str) -> str:
        claims = self._claims(sandbox_id)
        name = claims[0]["metadata"]["name"] if claims else "(none yet)"
        return (
            f"persistent volume claim {name} of sandbox {sandbox_id} in namespace {self.namespace}"
        )

    def close(self) -> None:
        self._client.close()

    # -- the Sandbox object --

    def render(self, spec: SandboxSpec) -> Obj:
        """The Sandbox object for ``spec``, as created (at the served version)."""
        version = self.version()
        name = kube_name(spec)
        if len(name) > 63:
            raise UsageError(
                f"the {KIND} name {name!r} is longer than 63 characters: use a shorter sandbox name"
            )
        sandbox_labels = {
            **self._ownership.labels(spec.sandbox_id, contract.SANDBOX_ROLE),
            contract.SANDBOX_NAME_LABEL: spec.name,
            contract.SANDBOX_WORKSPACE_LABEL: spec.api_workspace,
            contract.GATEWAY_ID_LABEL: self.gateway_id,
        }
        agent: Obj = {
            "name": AGENT_CONTAINER,
            "image": spec.image,
            "imagePullPolicy": "IfNotPresent",
            "env": [{"name": k, "value": v} for k, v in sorted(spec.environment.items())],
            "ports": [{"name": "supervisor", "containerPort": self._port}],
        }
        pod_spec: Obj = {
            "automountServiceAccountToken": False,
            # The supervisor's exit is the sandbox's end: the gateway starts it again.
            "restartPolicy": "Never",
            "containers": [agent],
        }
        body: Obj = {
            "apiVersion": f"{GROUP}/{version}",
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": sandbox_labels,
                "annotations": {
                    labels.SANDBOX_ID: spec.sandbox_id,
                    contract.SANDBOX_NAME_LABEL: spec.name,
                    contract.SANDBOX_WORKSPACE_LABEL: spec.api_workspace,
                },
            },
            "spec": {
                "podTemplate": {
                    "metadata": {
                        "labels": self._ownership.labels(spec.sandbox_id, contract.SANDBOX_ROLE)
                    },
                    "spec": pod_spec,
                },
            },
        }
        if version == VERSIONS[0]:
            body["spec"]["operatingMode"] = "Running"
        else:
            body["spec"]["replicas"] = 1
        if spec.persistent_workspace:
            agent["volumeMounts"] = [{"name": WORKSPACE_CLAIM, "mountPath": contract.WORKSPACE_DIR}]
            pod_spec["initContainers"] = [
                {
                    "name": INIT_CONTAINER,
                    "image": spec.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": workspace.seed_command(reseed=spec.reseed),
                    "securityContext": {"runAsUser": 0},
                    "volumeMounts": [{"name": WORKSPACE_CLAIM, "mountPath": workspace.INIT_MOUNT}],
                }
            ]
            body["spec"]["volumeClaimTemplates"] = [
                {
                    "metadata": {
                        "name": WORKSPACE_CLAIM,
                        "labels": {
                            **self._ownership.labels(spec.sandbox_id, contract.WORKSPACE_ROLE),
                            contract.GATEWAY_ID_LABEL: self.gateway_id,
                        },
                    },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": CLAIM_SIZE}},
                    },
                }
            ]
        return body

    # -- helpers: lookups --

    def _find(self, sandbox_id: str) -> Obj | None:
        found = self._list_sandboxes(
            f"{labels.MANAGED_BY}={labels.MANAGER},{labels.SANDBOX_ID}={sandbox_id},"
            f"{contract.GATEWAY_ID_LABEL}={self.gateway_id}"
        )
        return found[0] if found else None

    def _require(self, sandbox_id: str) -> Obj:
        found = self._find(sandbox_id)
        if found is None:
            raise NotFoundError(f"{KIND} of sandbox", sandbox_id)
        return found

    def _list_sandboxes(self, selector: str) -> list[Obj]:
        answer = self._call(
            self._custom.list_namespaced_custom_object,
            GROUP,
            self.version(),
            self.namespace,
            PLURAL,
            label_selector=selector,
            what=f"list {PLURAL}",
        )
        return list(answer.get("items") or [])

    def _list_core(self, method: Callable[..., Any], selector: str, *, what: str) -> list[Obj]:
        answer = self._dict(self._call(method, self.namespace, label_selector=selector, what=what))
        return list(answer.get("items") or [])

    def _claims(self, sandbox_id: str) -> list[Obj]:
        return self._list_core(
            self._core.list_namespaced_persistent_volume_claim,
            f"{labels.MANAGED_BY}={labels.MANAGER},{labels.SANDBOX_ID}={sandbox_id}",
            what="list claims",
        )

    def _pod(self, sandbox: Obj) -> Obj | None:
        try:
            pod = self._call(
                self._core.read_namespaced_pod,
                _pod_name(sandbox),
                self.namespace,
                what="read pod",
            )
        except NotFoundError:
            return None
        return self._dict(pod)

    def _observation(self, sandbox: Obj, pod: Obj | None, claimed: bool) -> Observation:
        meta = sandbox["metadata"]
        sandbox_id = meta["labels"][labels.SANDBOX_ID]
        state, detail = self._state(sandbox, pod)
        return Observation(
            sandbox_id,
            state,
            detail,
            claimed,
            dict(meta.get("labels") or {}),
            failure=_pod_failure(pod) if self._running_mode(sandbox) else "",
        )

    def _state(self, sandbox: Obj, pod: Obj | None) -> tuple[RuntimeState, str]:
        if not self._running_mode(sandbox):
            return RuntimeState.STOPPED, "suspended"
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return RuntimeState.STOPPED, "pod missing"
        phase = str((pod.get("status") or {}).get("phase") or "Pending")
        if phase in _RUNNING_PHASES:
            return RuntimeState.RUNNING, phase
        return RuntimeState.STOPPED, phase

    @staticmethod
    def _running_mode(sandbox: Obj) -> bool:
        spec = sandbox.get("spec") or {}
        if "operatingMode" in spec:
            return str(spec["operatingMode"]) != "Suspended"
        return int(spec.get("replicas", 1)) > 0

    # -- helpers: changes --

    def _start(self, sandbox: Obj) -> None:
        if not self._running_mode(sandbox):
            self._patch_mode(sandbox, running=True)
            return
        pod = self._pod(sandbox)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if pod is not None and phase not in _RUNNING_PHASES and _owned_by(pod, sandbox):
            # The supervisor ended (the pod never restarts): the controller makes a new pod, on
            # the same claim, once this one is gone.
            log.info("replacing the ended pod %s (%s)", pod["metadata"]["name"], phase)
            self._delete(
                self._core.delete_namespaced_pod,
                pod["metadata"]["name"],
                pod["metadata"]["uid"],
                what="delete pod",
            )

    def _patch_mode(self, sandbox: Obj, *, running: bool) -> Obj:
        """Patch the operating state as upstream does, guarded by the resourceVersion read; on a
        409 Conflict (someone wrote in between) read again and retry."""
        for _ in range(5):
            mode: Obj = (
                {"operatingMode": "Running" if running else "Suspended"}
                if "replicas" not in (sandbox.get("spec") or {})
                else {"replicas": int(running)}
            )
            patch = {
                "metadata": {"resourceVersion": sandbox["metadata"]["resourceVersion"]},
                "spec": mode,
            }
            try:
                return dict(
                    self._call(
                        self._custom.patch_namespaced_custom_object,
                        GROUP,
                        self.version(),
                        self.namespace,
                        PLURAL,
                        sandbox["metadata"]["name"],
                        patch,
                        what=f"patch {KIND} {sandbox['metadata']['name']}",
                        conflict_ok=True,
                    )
                )
            except _Conflict:
                sandbox = self._require(sandbox["metadata"]["labels"][labels.SANDBOX_ID])
                if self._running_mode(sandbox) == running:
                    return sandbox
        raise ClusterError(
            f"{KIND} {sandbox['metadata']['name']} kept changing while it was patched: "
            "another writer is busy with it; stop it and retry"
        )

    def _await_stopped(self, sandbox: Obj) -> None:
        """Wait for the controller to confirm the suspension (condition ``Suspended`` True, or
        the pod gone), on a watch of the Sandbox from the resourceVersion last read; a 410 Gone
        (that version was compacted away) is answered by reading again and watching on."""
        name = sandbox["metadata"]["name"]
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            listed = self._call(
                self._custom.list_namespaced_custom_object,
                GROUP,
                self.version(),
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                what=f"read {KIND} {name}",
            )
            items = listed.get("items") or []
            if not items or self._suspended(items[0]):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(
                    f"{KIND} {name} did not stop within {STOP_TIMEOUT:.0f}s: is the "
                    "agent-sandbox controller running? (kubectl get pods -A | grep agent-sandbox)"
                )
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                self._custom.list_namespaced_custom_object,
                GROUP,
                self.version(),
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=max(1, int(remaining)),
                _request_timeout=remaining + API_TIMEOUT,
            )
            if self._watch_until(stream, self._suspended):
                return

    def _watch_until(self, stream: Iterator[Obj], done: Callable[[Obj], bool]) -> bool:
        """True once an event shows ``done`` (or the object deleted); False when the watch ended
        or expired (410 Gone: the caller reads again)."""
        try:
            for event in stream:
                if event["type"] == "DELETED" or done(event["object"]):
                    return True
        except ApiException as exc:
            if exc.status != 410:
                raise self._error(exc, "watch") from None
            log.info("watch expired (410 Gone): reading again")
        return False

    def _suspended(self, sandbox: Obj) -> bool:
        if self._running_mode(sandbox):
            return False
        conditions = (sandbox.get("status") or {}).get("conditions") or []
        if any(
            c.get("type") == SUSPENDED_CONDITION and str(c.get("status")).lower() == "true"
            for c in conditions
        ):
            return True
        return self._pod(sandbox) is None

    def _release(self, claim: Obj, sandbox: Obj) -> None:
        """Take the Sandbox out of the claim's owners, so that deleting it keeps the claim."""
        owners = claim["metadata"].get("ownerReferences") or []
        kept = [o for o in owners if o.get("uid") != sandbox["metadata"]["uid"]]
        if len(kept) == len(owners):
            return
        self._call(
            self._core.patch_namespaced_persistent_volume_claim,
            claim["metadata"]["name"],
            self.namespace,
            {
                "metadata": {
                    "resourceVersion": claim["metadata"]["resourceVersion"],
                    "ownerReferences": kept or None,
                }
            },
            _content_type="application/merge-patch+json",
            what=f"release claim {claim['metadata']['name']}",
        )

    def _delete_sandbox(self, sandbox: Obj) -> None:
        self._delete(
            lambda name, namespace, body, **kw: self._custom.delete_namespaced_custom_object(
                GROUP, self.version(), namespace, PLURAL, name, body=body, **kw
            ),
            sandbox["metadata"]["name"],
            sandbox["metadata"]["uid"],
            what=f"delete {KIND}",
        )

    def _delete(self, method: Callable[..., Any], name: str, uid: str, *, what: str) -> None:
        """Delete exactly the object read (uid precondition); gone already is fine."""
        with contextlib.suppress(NotFoundError, _Conflict):
            self._call(
                method,
                name,
                self.namespace,
                body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
                what=f"{what} {name}",
                conflict_ok=True,
            )

    def _refuse_foreign(self, name: str, sandbox_id: str) -> None:
        """A create answered 409: fine when the Sandbox is this sandbox's (a create raced us),
        an error naming the owner when it is not (it is never touched)."""
        existing = self._call(
            self._custom.get_namespaced_custom_object,
            GROUP,
            self.version(),
            self.namespace,
            PLURAL,
            name,
            what=f"read {KIND} {name}",
        )
        found = existing["metadata"].get("labels") or {}
        if (
            labels.is_ours(found)
            and found.get(labels.SANDBOX_ID) == sandbox_id
            and found.get(contract.GATEWAY_ID_LABEL) == self.gateway_id
        ):
            return
        owner = found.get(contract.GATEWAY_ID_LABEL) or found.get(labels.MANAGED_BY) or "nobody"
        raise ClusterError(
            f"a {KIND} named {name!r} already exists in namespace {self.namespace!r} and is not "
            f"this sandbox's (its owner: {owner}); it was left alone: delete it, or use another "
            "sandbox name"
        )

    # -- helpers: calls and errors --

    def _call(
        self,
        method: Callable[..., Any],
        *args: Any,
        what: str,
        conflict_ok: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One API call with a timeout; its errors as this project's."""
        try:
            return method(*args, _request_timeout=API_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 409 and conflict_ok:
                raise _Conflict(str(exc.body)) from None
            raise self._error(exc, what) from None
        except HTTPError as exc:
            raise ClusterError(
                f"the Kubernetes API of {self._where} is unreachable ({type(exc).__name__}): "
                f"start the cluster, or point {contract.KUBE_API_ENV} / KUBECONFIG at one "
                "that runs"
            ) from None

    def _error(self, exc: Any, what: str) -> Exception:
        status = int(exc.status or 0)
        message = _status_message(exc)
        if status == 404:
            return NotFoundError(what, message)
        if status == 403:
            return _Forbidden(
                f"RBAC forbids this gateway to {what} in namespace {self.namespace!r} "
                f"({message}): grant it in the gateway's Role"
            )
        if status == 409 and '"AlreadyExists"' in str(exc.body):
            return _AlreadyExists(f"cannot {what}: {message}")
        if status == 409:
            return ClusterError(f"cannot {what}: {message}")
        return ClusterError(f"the Kubernetes API refused to {what} ({status}: {message})")

    def _dict(self, value: Any) -> Obj:
        """A model object of the client as the API's JSON (camelCase) dict."""
        if isinstance(value, dict):
            return value
        return dict(self._client.sanitize_for_serialization(value))


class _Forbidden(ClusterError):
    """RBAC refused a call."""


class _AlreadyExists(ClusterError):
    """A create found the name taken."""


class _Conflict(Exception):
    """A 409 the caller handles (a stale resourceVersion or uid precondition)."""


def _pod_name(sandbox: Obj) -> str:
    annotations = sandbox["metadata"].get("annotations") or {}
    return str(annotations.get(POD_NAME_ANNOTATION) or sandbox["metadata"]["name"])


def _owned_by(obj: Obj, owner: Obj) -> bool:
    uid = owner["metadata"]["uid"]
    return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


def _status_message(exc: Any) -> str:
    """The ``message`` of the Status the API answered, else the reason."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _pod_failure(pod: Obj | None) -> str:
    """Why the pod's runtime failed, or "". A sandbox pod is never restarted in place
    (``restartPolicy: Never``), so a container that ended with a non-zero code has failed for good:
    the gateway reports the sandbox in Error at once, rather than after the several restarts a
    Docker restart policy makes. A pod that ended cleanly (the supervisor stopped) is not
    failing."""
    if pod is None or (pod.get("status") or {}).get("phase") != "Failed":
        return ""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (status.get("state") or {}).get("terminated") or {}
        code = int(ended.get("exitCode") or 0)
        if code != 0:
            why = ended.get("message") or ended.get("reason") or "no reason given"
            return (
                f"pod {pod['metadata']['name']}: container {status.get('name')} exited with "
                f"code {code} ({str(why).strip().splitlines()[-1][:200]})"
            )
    return ""

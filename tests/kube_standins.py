"""STAND-INS for what a cluster runs beside its API server, for the emulator (``kube_emulator``):
the agent-sandbox controller and, for pods, the kubelet. Each is the least that makes a
``Sandbox`` behave as on a cluster, written from kubernetes-sigs/agent-sandbox's
``controllers/sandbox_controller.go``; nothing here is under test.

* :class:`SandboxControllerStandIn`: for a Sandbox in ``Running`` mode (``v1beta1``
  ``operatingMode``, ``v1alpha1`` ``replicas``) makes the claims of its ``volumeClaimTemplates``
  (``{template}-{sandbox}``, owned by the Sandbox, tracked by the name-hash label; an unowned claim
  carrying that label is adopted) and a pod named as the Sandbox from its pod template, owned by
  it, with each template's volume bound to its claim; in ``Suspended`` mode deletes the pod and
  sets the ``Suspended`` condition. A pod deleted while its Sandbox runs is made again.
* :class:`KubeletStandIn`: a made pod runs at once (phase ``Running``, an address in
  198.18.0.0/15); its ``workspace-init`` init container's command is the project's seed script,
  so running it is what that script does: copy the image's files into the claim unless the
  sentinel is there (always, for the reseed script).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from kube_emulator import ApiError, KubeEmulator

from openshell_core.sandbox import workspace
from openshell_core.server import compute_kubernetes

Obj = dict[str, Any]
SANDBOXES = f"{compute_kubernetes.PLURAL}.{compute_kubernetes.GROUP}"
NAME_HASH_LABEL = "agents.x-k8s.io/sandbox-name-hash"
#: What every sandbox image used here holds in its /sandbox (what seeding copies).
IMAGE_FILES = frozenset({"README.md"})


def name_hash(name: str) -> str:
    """FNV-1a of the name, as the controller's tracking label."""
    value = 0x811C9DC5
    for byte in name.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{value:08x}"


def _owner(sandbox: Obj) -> Obj:
    return {
        "apiVersion": sandbox["apiVersion"],
        "kind": sandbox["kind"],
        "name": sandbox["metadata"]["name"],
        "uid": sandbox["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass
class KubeletStandIn:
    """Runs pods at once; holds each claim's files (by claim name) and how often it was seeded."""

    files: dict[str, set[str]] = field(default_factory=dict)
    seeded: dict[str, int] = field(default_factory=dict)
    _addresses: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def run(self, pod: Obj) -> Obj:
        """The pod's status once its init containers ran and its containers started."""
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"].get("volumes") or []
            if "persistentVolumeClaim" in v
        }
        for init in pod["spec"].get("initContainers") or []:
            for mount in init.get("volumeMounts") or []:
                claim = claims.get(mount["name"])
                if claim is not None:
                    self._seed(claim, init["command"])
        n = next(self._addresses)
        return {"phase": "Running", "podIP": f"198.18.{n // 250}.{n % 250 + 1}"}

    def _seed(self, claim: str, command: list[str]) -> None:
        files = self.files.setdefault(claim, set())
        if command == workspace.seed_command(reseed=True) or (
            command == workspace.seed_command() and workspace.SENTINEL not in files
        ):
            files |= IMAGE_FILES | {workspace.SENTINEL}
            self.seeded[claim] = self.seeded.get(claim, 0) + 1


@dataclass
class SandboxControllerStandIn:
    """The agent-sandbox controller's reactions, registered on the emulator."""

    kube: KubeEmulator
    kubelet: KubeletStandIn = field(default_factory=KubeletStandIn)
    #: False: the controller is down (changes wait for :meth:`reconcile`).
    active: bool = True

    def install(self) -> SandboxControllerStandIn:
        self.kube.add_controller(SANDBOXES, self._on_sandbox)
        self.kube.add_controller("pods", self._on_pod)
        return self

    def _on_sandbox(self, kube: KubeEmulator, kind: str, sandbox: Obj) -> None:
        if self.active and kind != "DELETED":
            self.reconcile(sandbox["metadata"]["namespace"], sandbox["metadata"]["name"])

    def _on_pod(self, kube: KubeEmulator, kind: str, pod: Obj) -> None:
        owners = pod["metadata"].get("ownerReferences") or []
        if self.active and kind == "DELETED" and owners:
            self.reconcile(pod["metadata"]["namespace"], owners[0]["name"])

    def reconcile(self, namespace: str, name: str) -> None:
        sandbox = self.kube.find(SANDBOXES, name, namespace)
        if sandbox is None:
            return
        spec = sandbox["spec"]
        running = (
            spec.get("operatingMode", "Running") != "Suspended"
            if "replicas" not in spec
            else spec["replicas"] > 0
        )
        for template in spec.get("volumeClaimTemplates") or []:
            self._claim(sandbox, template)
        pod = self.kube.find("pods", name, namespace)
        if running and pod is None:
            self._make_pod(sandbox)
        elif not running and pod is not None:
            self.kube.delete("pods", name, namespace)
        suspended = "True" if not running else "False"
        conditions = [{"type": "Suspended", "status": suspended}]
        if (sandbox.get("status") or {}).get("conditions") != conditions:
            self.kube.patch(
                SANDBOXES, name, {"status": {"conditions": conditions}}, "merge", namespace
            )

    def _claim(self, sandbox: Obj, template: Obj) -> None:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        claim_name = f"{template['metadata']['name']}-{name}"
        found = self.kube.find("persistentvolumeclaims", claim_name, namespace)
        if found is None:
            meta = copy.deepcopy(template["metadata"])
            meta.update(name=claim_name, ownerReferences=[_owner(sandbox)])
            meta.setdefault("labels", {})[NAME_HASH_LABEL] = name_hash(name)
            self.kube.create(
                "persistentvolumeclaims",
                {"metadata": meta, "spec": template["spec"]},
                namespace,
            )
        elif not found["metadata"].get("ownerReferences"):
            if found["metadata"].get("labels", {}).get(NAME_HASH_LABEL) != name_hash(name):
                raise ApiError(500, "StandIn", f"cannot adopt unowned claim {claim_name}")
            self.kube.patch(
                "persistentvolumeclaims",
                claim_name,
                {"metadata": {"ownerReferences": [_owner(sandbox)]}},
                "merge",
                namespace,
            )

    def _make_pod(self, sandbox: Obj) -> None:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        template = copy.deepcopy(sandbox["spec"]["podTemplate"])
        pod_spec = template["spec"]
        claims = [
            {
                "name": t["metadata"]["name"],
                "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{name}"},
            }
            for t in sandbox["spec"].get("volumeClaimTemplates") or []
        ]
        pod_spec["volumes"] = [*(pod_spec.get("volumes") or []), *claims]
        meta = template.get("metadata") or {}
        pod = {
            "metadata": {
                "name": name,
                "labels": {**(meta.get("labels") or {}), NAME_HASH_LABEL: name_hash(name)},
                "ownerReferences": [_owner(sandbox)],
            },
            "spec": pod_spec,
        }
        pod["status"] = self.kubelet.run(pod)
        self.kube.create("pods", pod, namespace)

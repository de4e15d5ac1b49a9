"""The emulator answers as a Kubernetes API server does, for what the project's code relies on
(each behaviour checked through the official ``kubernetes`` client)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kube_emulator import KubeEmulator, Resource
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "agents.x-k8s.io", "v1beta1", "sandboxes"


def _sandbox(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1},
    }


def test_a_namespace_is_created_and_read_back(kube_client: Any) -> None:
    core = client.CoreV1Api(kube_client)

    core.create_namespace({"metadata": {"name": "team-a"}})

    assert core.read_namespace("team-a").status.phase == "Active"


def test_created_objects_carry_server_metadata(kube_client: Any) -> None:
    core = client.CoreV1Api(kube_client)

    made = core.create_namespaced_persistent_volume_claim(
        "default", {"metadata": {"name": "claim"}, "spec": {}}
    )

    assert made.metadata.uid and made.metadata.resource_version
    assert made.metadata.namespace == "default"
    assert made.metadata.creation_timestamp is not None


def test_lists_filter_by_label_selector(kube_client: Any) -> None:
    core = client.CoreV1Api(kube_client)
    for name, role in [("a", "workspace"), ("b", "other"), ("c", "workspace")]:
        core.create_namespaced_persistent_volume_claim(
            "default", {"metadata": {"name": name, "labels": {"role": role}}, "spec": {}}
        )

    def names(selector: str) -> list[str]:
        found = core.list_namespaced_persistent_volume_claim("default", label_selector=selector)
        return [item.metadata.name for item in found.items]

    assert names("role=workspace") == ["a", "c"]
    assert names("role!=workspace") == ["b"]
    assert names("role in (other,none)") == ["b"]
    assert names("role,!missing") == ["a", "b", "c"]
    assert names("missing") == []


def test_custom_objects_round_trip_and_merge_patch_removes_null_keys(kube_client: Any) -> None:
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s", a="1"))

    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s", {"metadata": {"labels": {"a": None}}}
    )

    assert patched["metadata"]["labels"] == {}
    assert patched["metadata"]["generation"] == 1
    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "s",
        [{"op": "replace", "path": "/spec/replicas", "value": 0}],
        _content_type="application/json-patch+json",
    )
    assert patched["spec"]["replicas"] == 0 and patched["metadata"]["generation"] == 2


def test_creating_an_existing_object_is_409_already_exists(kube_client: Any) -> None:
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))

    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))

    assert caught.value.status == 409 and '"AlreadyExists"' in caught.value.body


def test_replacing_with_a_stale_resource_version_is_409_conflict(kube_client: Any) -> None:
    custom = client.CustomObjectsApi(kube_client)
    old = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s", {"spec": {"replicas": 0}}
    )

    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s", old)

    assert caught.value.status == 409 and '"Conflict"' in caught.value.body


def test_an_undeclared_crd_is_404_and_absent_from_discovery(
    kube: KubeEmulator, kube_client: Any
) -> None:
    kube.withdraw(f"{PLURAL}.{GROUP}")
    custom = client.CustomObjectsApi(kube_client)

    with pytest.raises(ApiException) as caught:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)

    assert caught.value.status == 404
    groups = client.ApisApi(kube_client).get_api_versions().groups
    assert GROUP not in [group.name for group in groups]


def test_discovery_names_the_served_versions(kube: KubeEmulator, kube_client: Any) -> None:
    kube.withdraw(f"{PLURAL}.{GROUP}")
    kube.declare(Resource(GROUP, ("v1alpha1",), PLURAL, "Sandbox", custom=True))

    group = client.ApisApi(kube_client).get_api_versions().groups
    found = next(g for g in group if g.name == GROUP)

    assert [v.version for v in found.versions] == ["v1alpha1"]


def test_a_denied_verb_is_403_and_the_access_review_agrees(
    kube: KubeEmulator, kube_client: Any
) -> None:
    kube.deny("create", f"{PLURAL}.{GROUP}")
    custom = client.CustomObjectsApi(kube_client)

    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))

    assert caught.value.status == 403 and "cannot create resource" in caught.value.body
    review = client.AuthorizationV1Api(kube_client).create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": "create", "group": GROUP, "resource": PLURAL}}}
    )
    assert review.status.allowed is False


def test_a_namespaced_create_needs_the_namespace(kube_client: Any) -> None:
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(kube_client).create_namespaced_pod("nowhere", {"metadata": {"name": "p"}})

    assert caught.value.status == 404


def test_deleting_an_owner_collects_its_dependents(kube_client: Any) -> None:
    core = client.CoreV1Api(kube_client)
    custom = client.CustomObjectsApi(kube_client)
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": "Sandbox",
        "name": "s",
        "uid": owner["metadata"]["uid"],
    }
    core.create_namespaced_pod(
        "default", {"metadata": {"name": "p", "ownerReferences": [reference]}}
    )
    core.create_namespaced_pod("default", {"metadata": {"name": "free"}})

    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s")

    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["free"]


def test_a_watch_streams_changes_after_its_resource_version(kube_client: Any) -> None:
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("before"))
    since = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    writer = threading.Thread(
        target=custom.create_namespaced_custom_object,
        args=(GROUP, VERSION, "default", PLURAL, _sandbox("after")),
    )
    writer.start()

    events = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        resource_version=since,
        timeout_seconds=5,
    )
    first = next(events)
    writer.join()

    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "after")


def test_a_watch_from_a_compacted_resource_version_is_410_gone(
    kube: KubeEmulator, kube_client: Any
) -> None:
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))
    since = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s", {"spec": {"replicas": 0}}
    )
    kube.compact()

    with pytest.raises(ApiException) as caught:
        for _ in watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            resource_version=since,
            timeout_seconds=5,
        ):
            pass

    assert caught.value.status == 410


def test_a_strategic_merge_patch_of_a_custom_object_is_415(kube_client: Any) -> None:
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sandbox("s"))

    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "s",
            {"spec": {"replicas": 0}},
            _content_type="application/strategic-merge-patch+json",
        )

    assert caught.value.status == 415


def test_deleting_a_namespace_deletes_its_objects(kube_client: Any) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespace({"metadata": {"name": "gone"}})
    core.create_namespaced_persistent_volume_claim("gone", {"metadata": {"name": "c"}, "spec": {}})

    core.delete_namespace("gone")

    assert core.list_persistent_volume_claim_for_all_namespaces().items == []

"""An in-process Kubernetes API emulator, for contract tests of the project's Kubernetes code.

It is an API server and nothing more: objects are stored, listed, watched, patched and deleted as
the real one does it, over HTTP, for the official ``kubernetes`` client; no controller runs (no
pod appears for a ``Sandbox``, no claim binds). A test that needs a controller's effect registers
a small stand-in with :meth:`KubeEmulator.add_controller`, named as such where it is defined.

What it holds to, because the project's code depends on it (each checked in
``tests/test_kube_emulator.py``):

* paths of the core group (``/api/v1``) and named groups (``/apis/{group}/{version}``), namespaced
  and cluster-scoped, with discovery documents for what is declared (an undeclared resource, e.g. a
  missing CRD, answers 404 ``NotFound`` as a real server does);
* metadata the server owns: ``uid``, ``resourceVersion`` (one counter for all), ``generation``,
  ``creationTimestamp``, ``namespace``, ``generateName``;
* label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``) and the field selector
  ``metadata.name``, on list, watch and delete-collection;
* errors as ``Status`` objects: 404 NotFound, 409 AlreadyExists, 409 Conflict (stale
  ``resourceVersion``), 403 Forbidden (:meth:`KubeEmulator.deny`), 415 for a strategic merge patch
  of a custom resource, 422 Invalid for a nameless object;
* JSON merge patch (RFC 7386), JSON patch (RFC 6902: add, remove, replace, test) and, for built-in
  kinds, strategic merge patch treated as a merge patch (lists are replaced whole: a known
  simplification);
* watches from a ``resourceVersion`` with ``ERROR`` 410 ``Expired`` once the history was compacted
  (:meth:`KubeEmulator.compact`), ``timeoutSeconds``, selectors;
* namespaces that must exist for namespaced creates, and whose deletion removes their objects;
  the garbage collector's cascade through ``ownerReferences`` (a controller on every cluster);
* ``SelfSubjectAccessReview`` answered from the same deny table as the requests.

Why not PyPI ``kmock`` (0.8), tried first with ``kubernetes`` 37: ``POST /api/v1/namespaces``
answers 500 (its path parser reads ``namespaces`` as a namespace segment), list and watch ignore
``labelSelector`` (so a created claim is listed under any selector, and nothing can be filtered),
no ``resourceVersion``, ``uid`` or ``namespace`` is stamped on created objects (so neither 409
Conflict nor 410 Gone can arise), patches are a plain dict merge (``null`` does not remove a key,
JSON patch is not applied as such), ``PUT`` merges instead of replacing, and a group's preferred
version is taken from an unordered set. Fixing those would have replaced most of its handlers
behind a layer, so the project keeps this single module instead: standard library only.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

#: Seconds a watch without ``timeoutSeconds`` stays open (real servers: 30-60 minutes).
DEFAULT_WATCH_SECONDS = 30.0


@dataclass(frozen=True)
class Resource:
    """A resource type the emulator serves.

    :param versions: the served versions, the preferred (and stored) one first.
    """

    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool = True
    custom: bool = False

    @property
    def key(self) -> str:
        """``plural`` or ``plural.group``, as ``kubectl`` and RBAC messages spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


#: What a fresh cluster serves without any CRD.
BUILTIN: tuple[Resource, ...] = (
    Resource("", ("v1",), "namespaces", "Namespace", namespaced=False),
    Resource("", ("v1",), "pods", "Pod"),
    Resource("", ("v1",), "persistentvolumeclaims", "PersistentVolumeClaim"),
    Resource("", ("v1",), "services", "Service"),
    Resource("", ("v1",), "secrets", "Secret"),
    Resource("", ("v1",), "configmaps", "ConfigMap"),
    Resource("", ("v1",), "serviceaccounts", "ServiceAccount"),
    Resource("", ("v1",), "events", "Event"),
    Resource("apps", ("v1",), "statefulsets", "StatefulSet"),
    Resource("apps", ("v1",), "deployments", "Deployment"),
    Resource("rbac.authorization.k8s.io", ("v1",), "roles", "Role"),
    Resource("rbac.authorization.k8s.io", ("v1",), "rolebindings", "RoleBinding"),
    Resource(
        "authorization.k8s.io",
        ("v1",),
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        namespaced=False,
    ),
)

#: The agent-sandbox CRD (kubernetes-sigs/agent-sandbox) at the version it serves today.
SANDBOX_CRD = Resource("agents.x-k8s.io", ("v1beta1",), "sandboxes", "Sandbox", custom=True)

ControllerFn = Callable[["KubeEmulator", str, Obj], None]


class ApiError(Exception):
    """A request the emulator refuses, answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{resource.key} "{name}" not found',
        {"name": name, "group": resource.group, "kind": resource.plural},
    )


NO_SUCH_RESOURCE = ApiError(404, "NotFound", "the server could not find the requested resource")


@dataclass
class Event:
    resource_version: int
    kind: str  # ADDED, MODIFIED, DELETED
    resource: str
    obj: Obj


@dataclass
class KubeEmulator:
    """The API server: its store, its history of changes, and the HTTP server in front."""

    user: str = "system:serviceaccount:default:emulator"
    resources: dict[str, Resource] = field(default_factory=dict)
    #: (resource key, namespace or "", name) -> stored object (the preferred version's shape).
    store: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)
    #: Watches from a resourceVersion at or below this one answer 410 Expired.
    compacted: int = 0
    revision: int = 0
    #: (verb, resource key) pairs RBAC forbids.
    denied: set[tuple[str, str]] = field(default_factory=set)
    #: Every request, as (verb, resource key or path, namespace, name), for assertions.
    requests: list[tuple[str, str, str, str]] = field(default_factory=list)
    _controllers: list[tuple[str, ControllerFn]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None
    _closing: bool = False

    def __post_init__(self) -> None:
        for resource in BUILTIN:
            self.declare(resource)
        for namespace in ("default", "kube-system", "kube-public"):
            self.create("namespaces", {"metadata": {"name": namespace}})

    # -- set-up by tests --

    def declare(self, resource: Resource) -> None:
        """Serve ``resource`` (installing a CRD, for a custom one)."""
        self.resources[resource.key] = resource

    def withdraw(self, key: str) -> None:
        """Stop serving a resource (a CRD uninstalled); its objects go with it."""
        resource = self.resources.pop(key)
        with self._changed:
            for store_key in [k for k in self.store if k[0] == resource.key]:
                del self.store[store_key]

    def deny(self, verb: str, key: str) -> None:
        """RBAC forbids ``verb`` (get, list, watch, create, update, patch, delete) on ``key``."""
        self.denied.add((verb, key))

    def compact(self) -> None:
        """Forget the history so far: a watch from an older resourceVersion gets 410 Gone."""
        with self._changed:
            self.compacted = self.revision
            self.history.clear()

    def add_controller(self, key: str, react: ControllerFn) -> None:
        """Call ``react(emulator, event kind, object)`` after each change of a ``key`` object,
        in the writing request (a stand-in for a controller: it sees every change at once)."""
        self._controllers.append((key, react))

    # -- the store, for the HTTP side and for stand-ins --

    def resource(self, key: str) -> Resource:
        found = self.resources.get(key)
        if found is None:
            raise NO_SUCH_RESOURCE
        return found

    def get(self, key: str, name: str, namespace: str = "") -> Obj:
        resource = self.resource(key)
        found = self.store.get((key, namespace if resource.namespaced else "", name))
        if found is None:
            raise not_found(resource, name)
        return copy.deepcopy(found)

    def find(self, key: str, name: str, namespace: str = "") -> Obj | None:
        try:
            return self.get(key, name, namespace)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(
        self,
        key: str,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[Obj]:
        resource = self.resource(key)
        match = _selector(label_selector)
        name = _name_field(field_selector)
        with self._changed:
            return [
                copy.deepcopy(obj)
                for (rkey, ns, obj_name), obj in sorted(self.store.items())
                if rkey == resource.key
                and (not namespace or ns == namespace)
                and (name is None or obj_name == name)
                and match(obj)
            ]

    def create(self, key: str, obj: Obj, namespace: str = "") -> Obj:
        resource = self.resource(key)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name") or ""
        if not name:
            raise ApiError(422, "Invalid", f"{resource.kind}: metadata.name: Required value")
        namespace = (namespace or meta.get("namespace", "")) if resource.namespaced else ""
        if resource.namespaced:
            if not namespace:
                raise ApiError(400, "BadRequest", "a namespaced object needs a namespace")
            if ("namespaces", "", namespace) not in self.store:
                raise not_found(self.resources["namespaces"], namespace)
            meta["namespace"] = namespace
        with self._changed:
            if (resource.key, namespace, name) in self.store:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource.key} "{name}" already exists',
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta["generation"] = 1
            obj["apiVersion"] = resource.api_version(resource.versions[0])
            obj["kind"] = resource.kind
            if resource.key == "namespaces":
                obj["status"] = {"phase": "Active"}
            stored = self._commit("ADDED", resource, namespace, name, obj)
        self._react("ADDED", resource, stored)
        return copy.deepcopy(stored)

    def replace(self, key: str, name: str, obj: Obj, namespace: str = "") -> Obj:
        """``PUT``: the whole object, refused with 409 Conflict when its resourceVersion is
        stale."""
        current = self.get(key, name, namespace)
        return self._update(key, name, namespace, current, copy.deepcopy(obj))

    def patch(self, key: str, name: str, body: Any, kind: str, namespace: str = "") -> Obj:
        """``PATCH`` with ``kind`` one of ``merge``, ``json``, ``strategic``."""
        resource = self.resource(key)
        current = self.get(key, name, namespace)
        if not isinstance(body, list if kind == "json" else dict):
            raise ApiError(400, "BadRequest", f"the body of a {kind} patch does not decode")
        if kind == "json":
            patched = _json_patch(current, body)
        elif kind == "strategic" and resource.custom:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml",
            )
        elif kind in {"merge", "strategic"}:
            patched = _merge_patch(current, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {kind}")
        stale = (body.get("metadata") or {}).get("resourceVersion") if kind != "json" else None
        if stale is None:
            patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                "resourceVersion"
            ]
        return self._update(key, name, namespace, current, patched)

    def delete(self, key: str, name: str, namespace: str = "") -> Obj:
        resource = self.resource(key)
        namespace = namespace if resource.namespaced else ""
        with self._changed:
            found = self.store.get((resource.key, namespace, name))
            if found is None:
                raise not_found(resource, name)
            gone = self._remove(resource, namespace, name)
        self._react("DELETED", resource, gone)
        self._collect_garbage({gone["metadata"]["uid"]})
        if resource.key == "namespaces":
            for rkey, ns, obj_name in [k for k in list(self.store) if k[1] == name]:
                if (rkey, ns, obj_name) in self.store:
                    self.delete(rkey, obj_name, ns)
        return gone

    # -- internals of the store --

    def _update(self, key: str, name: str, namespace: str, current: Obj, new: Obj) -> Obj:
        resource = self.resource(key)
        meta = new.setdefault("metadata", {})
        wanted = meta.get("resourceVersion")
        with self._changed:
            latest = self.store.get((resource.key, namespace if resource.namespaced else "", name))
            if latest is None:
                raise not_found(resource, name)
            if wanted and wanted != latest["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource.key} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try "
                    "again",
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            for owned in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                if owned in latest["metadata"]:
                    meta[owned] = latest["metadata"][owned]
            if new.get("spec") != latest.get("spec"):
                meta["generation"] = latest["metadata"]["generation"] + 1
            new["apiVersion"], new["kind"] = latest["apiVersion"], latest["kind"]
            stored = self._commit(
                "MODIFIED", resource, namespace if resource.namespaced else "", name, new
            )
        self._react("MODIFIED", resource, stored)
        return copy.deepcopy(stored)

    def _commit(self, kind: str, resource: Resource, namespace: str, name: str, obj: Obj) -> Obj:
        """Store ``obj`` under a new resourceVersion and record the event (lock held)."""
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.store[(resource.key, namespace, name)] = obj
        self.history.append(Event(self.revision, kind, resource.key, copy.deepcopy(obj)))
        self._changed.notify_all()
        return obj

    def _remove(self, resource: Resource, namespace: str, name: str) -> Obj:
        gone = self.store.pop((resource.key, namespace, name))
        self.revision += 1
        gone["metadata"]["resourceVersion"] = str(self.revision)
        self.history.append(Event(self.revision, "DELETED", resource.key, copy.deepcopy(gone)))
        self._changed.notify_all()
        return gone

    def _collect_garbage(self, gone: set[str]) -> None:
        """The garbage collector: an object all of whose owners are gone goes too."""
        with self._changed:
            live = {obj["metadata"]["uid"] for obj in self.store.values()}
            orphans = [
                key
                for key, obj in self.store.items()
                if (owners := obj["metadata"].get("ownerReferences"))
                and {o.get("uid") for o in owners} & gone
                and not {o.get("uid") for o in owners} & live
            ]
        for rkey, namespace, name in orphans:
            if (rkey, namespace, name) in self.store:
                self.delete(rkey, name, namespace)

    def _react(self, kind: str, resource: Resource, obj: Obj) -> None:
        for key, react in self._controllers:
            if key == resource.key:
                react(self, kind, copy.deepcopy(obj))

    def events_since(self, revision: int) -> list[Event]:
        """What changed after ``revision``; :class:`ApiError` 410 when that was compacted."""
        if revision < self.compacted:
            raise ApiError(
                410,
                "Expired",
                f"too old resource version: {revision} ({self.compacted})",
            )
        return [event for event in self.history if event.resource_version > revision]

    # -- HTTP --

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        """Serve on a free loopback port; returns the base URL."""
        emulator = self

        class Handler(_Handler):
            api = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.url

    def stop(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def watch_stream(
        self,
        resource: Resource,
        version: str,
        namespace: str,
        since: str | None,
        label_selector: str,
        field_selector: str,
        timeout: float,
    ) -> Iterator[Obj]:
        """The events of a watch, as dicts (an ``ERROR`` event with 410 when expired)."""
        match, name = _selector(label_selector), _name_field(field_selector)

        def wanted(obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                (not namespace or meta.get("namespace", "") == namespace)
                and (name is None or meta["name"] == name)
                and match(obj)
            )

        with self._changed:
            if since in (None, "", "0"):
                last = self.revision
                initial = [
                    {"type": "ADDED", "object": self._as_version(obj, version)}
                    for (rkey, _, _), obj in sorted(self.store.items())
                    if rkey == resource.key and wanted(obj)
                ]
            else:
                last, initial = int(since or 0), []
        yield from initial
        deadline = threading.Event()
        timer = threading.Timer(timeout, lambda: self._wake(deadline))
        timer.start()
        try:
            while True:
                with self._changed:
                    try:
                        events = self.events_since(last)
                    except ApiError as exc:
                        yield {"type": "ERROR", "object": exc.status()}
                        return
                    if not events:
                        if deadline.is_set() or self._closing:
                            return
                        self._changed.wait()
                        continue
                    last = events[-1].resource_version
                    batch = [
                        {"type": e.kind, "object": self._as_version(e.obj, version)}
                        for e in events
                        if e.resource == resource.key and wanted(e.obj)
                    ]
                yield from batch
        finally:
            timer.cancel()

    def _wake(self, flag: threading.Event) -> None:
        with self._changed:
            flag.set()
            self._changed.notify_all()

    def _as_version(self, obj: Obj, version: str) -> Obj:
        shown = copy.deepcopy(obj)
        group = shown["apiVersion"].rpartition("/")[0]
        shown["apiVersion"] = f"{group}/{version}" if group else version
        return shown


# -- selectors and patches --------------------------------------------------------------------

_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9._-]*))?\s*$"
)


def _selector(text: str) -> Callable[[Obj], bool]:
    """A label selector as a predicate over objects; :class:`ApiError` 400 when malformed."""
    terms: list[Callable[[dict[str, str]], bool]] = []
    for part in re.split(r",(?![^()]*\))", text or ""):
        if not part.strip():
            continue
        found = _TERM.match(part)
        if found is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        key, op, value = found["key"], (found["op"] or "").strip(), found["value"] or ""
        values = {v.strip() for v in value.strip("()").split(",")}
        if found["neg"]:
            terms.append(lambda labels, k=key: k not in labels)
        elif not op:
            terms.append(lambda labels, k=key: k in labels)
        elif op in {"=", "=="}:
            terms.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            terms.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif op == "in":
            terms.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
        else:
            terms.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(term(labels) for term in terms)

    return match


def _name_field(text: str) -> str | None:
    if not text:
        return None
    key, _, value = text.partition("=")
    if key.strip() != "metadata.name":
        raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
    return value.strip().lstrip("=")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_patch(target: Obj, operations: list[Obj]) -> Obj:
    """RFC 6902's add, remove, replace and test."""
    doc = copy.deepcopy(target)
    for operation in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last, op = parts[-1], operation["op"]
        try:
            if op == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != operation["value"]:
                    raise ApiError(422, "Invalid", f"test of {operation['path']} failed")
            elif op == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif op == "add" and isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), operation["value"])
            elif op in {"add", "replace"}:
                if isinstance(parent, list):
                    parent[int(last)] = operation["value"]
                else:
                    if op == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = operation["value"]
            else:
                raise ApiError(400, "BadRequest", f"unsupported JSON patch operation {op}")
        except (KeyError, IndexError) as exc:
            raise ApiError(422, "Invalid", f"the path {operation['path']} does not exist") from exc
    return doc


_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
}


# -- the HTTP handler ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    api: KubeEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the requests are recorded in KubeEmulator.requests

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _reply(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body()
            discovery = self._discovery(method, url.path)
            if discovery is not None:
                self._reply(200, discovery)
                return
            self._resource_request(method, url.path, query, body)
        except ApiError as exc:
            self._reply(exc.code, exc.status())
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(400, ApiError(400, "BadRequest", f"bad request: {exc}").status())

    def _discovery(self, method: str, path: str) -> Obj | None:
        if method != "GET":
            return None
        api = self.api
        groups: dict[str, list[Resource]] = {}
        for resource in api.resources.values():
            groups.setdefault(resource.group, []).append(resource)
        path = path.rstrip("/")
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-emulator"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group_doc(g, rs) for g, rs in sorted(groups.items()) if g],
            }
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2:
            if parts[1] not in groups:
                raise NO_SUCH_RESOURCE
            return _group_doc(parts[1], groups[parts[1]])
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            served = [r for r in groups.get(group, []) if version in r.versions]
            if not served:
                raise NO_SUCH_RESOURCE
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": served[0].api_version(version),
                "resources": [
                    {
                        "name": r.plural,
                        "singularName": r.kind.lower(),
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": _VERBS,
                    }
                    for r in served
                ],
            }
        return None

    def _route(self, path: str) -> tuple[Resource, str, str, str, str]:
        """(resource, version, namespace, name, subresource) of a resource path."""
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise NO_SUCH_RESOURCE
        served = {
            r.plural: r
            for r in self.api.resources.values()
            if r.group == group and version in r.versions
        }
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in served:
            namespace, rest = rest[1], rest[2:]
        resource = served.get(rest[0])
        if resource is None or (namespace and not resource.namespaced):
            raise NO_SUCH_RESOURCE
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        return resource, version, namespace, name, sub

    def _resource_request(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        api = self.api
        resource, version, namespace, name, _sub = self._route(path)
        watching = query.get("watch", "").lower() in {"true", "1"}
        verb = {
            "GET": "get" if name else ("watch" if watching else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }[method]
        api.requests.append((verb, resource.key, namespace, name))
        if resource.key == "selfsubjectaccessreviews.authorization.k8s.io":
            self._reply(201, _access_review(api, body))
            return
        if (verb, resource.key) in api.denied:
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            raise ApiError(
                403,
                "Forbidden",
                f'{resource.key} is forbidden: User "{api.user}" cannot {verb} resource '
                f'"{resource.plural}" in API group "{resource.group}"{where}',
                {"group": resource.group, "kind": resource.plural, "name": name},
            )
        shown = resource.api_version(version)
        if verb == "watch":
            self._watch(resource, version, namespace, query)
        elif verb == "get":
            self._reply(200, api._as_version(api.get(resource.key, name, namespace), version))
        elif verb == "list":
            items = api.list(
                resource.key,
                namespace,
                query.get("labelSelector", ""),
                query.get("fieldSelector", ""),
            )
            self._reply(
                200,
                {
                    "kind": f"{resource.kind}List",
                    "apiVersion": shown,
                    "metadata": {"resourceVersion": str(api.revision)},
                    "items": [api._as_version(item, version) for item in items],
                },
            )
        elif verb == "create":
            made = api.create(resource.key, body, namespace)
            self._reply(201, api._as_version(made, version))
        elif verb == "update":
            self._reply(
                200, api._as_version(api.replace(resource.key, name, body, namespace), version)
            )
        elif verb == "patch":
            kind = _PATCH_TYPES.get((self.headers.get("Content-Type") or "").split(";")[0], "")
            patched = api.patch(resource.key, name, body, kind, namespace)
            self._reply(200, api._as_version(patched, version))
        elif verb == "delete":
            self._reply(200, api._as_version(api.delete(resource.key, name, namespace), version))
        else:
            items = api.list(
                resource.key,
                namespace,
                query.get("labelSelector", ""),
                query.get("fieldSelector", ""),
            )
            for item in items:
                api.delete(resource.key, item["metadata"]["name"], namespace)
            self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def _watch(
        self, resource: Resource, version: str, namespace: str, query: dict[str, str]
    ) -> None:
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        stream = self.api.watch_stream(
            resource,
            version,
            namespace,
            query.get("resourceVersion"),
            query.get("labelSelector", ""),
            query.get("fieldSelector", ""),
            timeout,
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in stream:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _group_doc(group: str, resources: list[Resource]) -> Obj:
    versions: list[str] = []
    for resource in resources:
        versions += [v for v in resource.versions if v not in versions]
    preferred = resources[0].versions[0]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
        "preferredVersion": {"groupVersion": f"{group}/{preferred}", "version": preferred},
    }


def _access_review(api: KubeEmulator, body: Obj) -> Obj:
    attributes = (body.get("spec") or {}).get("resourceAttributes") or {}
    group, plural = attributes.get("group", ""), attributes.get("resource", "")
    key = f"{plural}.{group}" if group else plural
    allowed = (attributes.get("verb", ""), key) not in api.denied
    review = copy.deepcopy(body)
    review["status"] = {"allowed": allowed}
    if not allowed:
        review["status"]["reason"] = "denied by the emulator's RBAC table"
    return review

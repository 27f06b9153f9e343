"""A fake Kubernetes API server for the VNI tests: kmock 0.8 plus the API semantics
our code relies on.

No kube-apiserver can be installed on the machines these tests run on (not in Debian,
PyPI or npm; no docker), so this in-memory server on 127.0.0.1 stands in.  What serves
what:

* the fast front (``_Front``, a raw asyncio HTTP/1.1 protocol on the server's port)
  answers get, list, create, patch and delete of the served resources with JSON bodies
  of known length itself, calling ``FakeKube.serve`` -- the same function, the same
  answer byte for byte and the same ``_requests`` entry as through aiohttp;
* every other request goes to kmock's aiohttp server on an internal port, over a
  connection of the front's: one at a time when the request and aiohttp's response have
  a known length (discovery, /version, a protobuf body, any request while a fault is
  injected: the connection then returns to the fast path), as a byte tunnel for the rest
  of the connection otherwise (a watch, a chunked body, ``Expect``);
  ``FakeApiServer(fast=False)`` serves everything through aiohttp alone;
* in aiohttp, kmock's emulator provides discovery and the error documents; requests for
  resources (list, watch, get, create, patch, delete) are served by ``FakeKube`` from its
  own store.

The store has kmock's emulator semantics (JSON merge patch -- or JSON patch -- of stored
JSON; 409 on creating an existing object; a delete of an object with finalizers sets
``deletionTimestamp``, and the object goes once they are removed) plus those of the real
API server that kmock lacks:

* create: server-generated ``uid``, ``resourceVersion``, ``creationTimestamp``, the
  namespace from the URL, 201 Created; a pod's ``status`` sent on create is dropped
  (``podStrategy.PrepareForCreate``), as is any status of a kind with a status
  subresource;
* update (merge patch): ``metadata.resourceVersion`` in the body is a precondition
  (409 Conflict when stale); a new resourceVersion on every write; with a status
  subresource, the main resource ignores ``status`` and ``/status`` takes only
  ``status``;
* delete: ``DeleteOptions.preconditions`` (uid, resourceVersion) are honoured (409);
* list: equality-based ``labelSelector`` (``a=b,c!=d,e,!f``) and the list's own
  ``resourceVersion``;
* all writes are serialized (the real server serializes per key in etcd);
* watch: every selected object as ADDED, then each committed change, in commit order,
  from one point of the write order (none lost or repeated in between); BOOKMARK events
  every ``bookmark_interval`` seconds when the client allows them.

* discovery: the core group's APIResourceList says ``groupVersion: v1`` (kmock: "/v1"),
  which kubectl needs to map core kinds; deploy/'s kinds (RBAC, admission policies, ...)
  are served, and /api/v1/namespaces[/NAME] is the Namespace resource (kmock takes it
  for a namespace prefix), so that ``kubectl apply -k deploy/`` runs against it
  (tests/test_deploy.py).

Still missing (and not relied upon): resuming a watch from a resourceVersion (a new
watch replays every object as ADDED, kmock's way), a watch's ``timeoutSeconds`` (it
lasts until the client closes it), ``fieldSelector`` and set-based label selectors,
PUT (update) and DELETE of a collection (404), a new resourceVersion when a delete
only marks an object (finalizers), schema validation, strategic merge patch (merge
patch is used instead), server-side apply, garbage collection, namespace lifecycle,
protobuf bodies (``kubectl create`` sends protobuf for built-in kinds; ``kubectl
apply`` sends JSON) and the OpenAPI document (``kubectl apply --validate=false``).

Cost, on the 2-core development machine: through aiohttp, ~0.3-0.4 ms of CPU per small
request (of which ~0.2 ms is aiohttp, the loop and loopback TCP: an aiohttp handler that
only answers costs that much); through the fast front, ~0.1 ms less (a real API server
is multi-core Go and cheaper still); ~50 us per watch event per watcher.  It runs in the
benchmark's process, so ``fake_api_cpu_seconds`` there is CPU the controller competes
with on this machine and would not on a cluster.

Run standalone (for a controller subprocess or the benchmark)::

    python tests/vni_k8s/fakeapi.py --port 0 --kubeconfig /tmp/kc.json
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import email.utils
import functools
import http
import itertools
import json
import os
import sys
import threading
import time
import uuid
from typing import Any, Optional

import aiohttp.test_utils
import aiohttp.web
import kmock
import yarl
from aiohttp.http import SERVER_SOFTWARE
from kmock._internal import dicts, enums, parsing, references, rendering
from kmock._internal.k8s import KubernetesObjectConflictError

GROUP = "vni.pycxi.dev"

# (resource key, namespaced, kind, has status subresource)
RESOURCES = [
    ("v1/pods", True, "Pod", True),
    ("v1/namespaces", False, "Namespace", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", False, "CustomResourceDefinition", True),
    ("v1/events", True, "Event", False),
    ("v1/configmaps", True, "ConfigMap", False),
    ("events.k8s.io/v1/events", True, "Event", False),
    ("coordination.k8s.io/v1/leases", True, "Lease", False),
    ("batch/v1/jobs", True, "Job", True),
    ("apps/v1/deployments", True, "Deployment", True),
    ("apps/v1/replicasets", True, "ReplicaSet", True),
    ("apps/v1/statefulsets", True, "StatefulSet", True),
    ("apps/v1/daemonsets", True, "DaemonSet", True),
    ("batch.volcano.sh/v1alpha1/jobs", True, "Job", True),
    (f"{GROUP}/v1alpha1/vnis", False, "Vni", True),
    (f"{GROUP}/v1alpha1/vniclaims", True, "VniClaim", True),
    # what deploy/ holds besides, so that `kubectl apply -k deploy/` finds every kind
    ("v1/serviceaccounts", True, "ServiceAccount", False),
    ("v1/services", True, "Service", True),
    ("rbac.authorization.k8s.io/v1/roles", True, "Role", False),
    ("rbac.authorization.k8s.io/v1/rolebindings", True, "RoleBinding", False),
    ("rbac.authorization.k8s.io/v1/clusterroles", False, "ClusterRole", False),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", False, "ClusterRoleBinding", False),
    ("admissionregistration.k8s.io/v1/validatingadmissionpolicies", False,
     "ValidatingAdmissionPolicy", True),
    ("admissionregistration.k8s.io/v1/validatingadmissionpolicybindings", False,
     "ValidatingAdmissionPolicyBinding", False),
    ("policy/v1/poddisruptionbudgets", True, "PodDisruptionBudget", True),
]


_now_cache: list = [-1, ""]


def _now() -> str:
    # creationTimestamp has whole seconds: format each second once
    t = int(time.time())
    if t != _now_cache[0]:
        _now_cache[:] = [t, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))]
    return _now_cache[1]


def _parse_selector(selector: str) -> list:
    """An equality-based label selector as (op, key, value) terms: op is "=", "!=",
    "exists" or "!exists"."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append(("!=", k.strip(), v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif term.startswith("!"):
            terms.append(("!exists", term[1:], None))
        else:
            terms.append(("exists", term, None))
    return terms


def _match_terms(labels: dict, terms: list) -> bool:
    for op, k, v in terms:
        if op == "=":
            if labels.get(k) != v:
                return False
        elif op == "!=":
            if labels.get(k) == v:
                return False
        elif op == "exists":
            if k not in labels:
                return False
        elif k in labels:
            return False
    return True


_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> Any:
    """kmock reads /api/v1/namespaces[/NAME[/status]] as a namespace prefix with no
    resource after it (and fails on the bare collection); these paths are the Namespace
    resource itself."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))):
        return parsing.ParsedPath("", "v1", "namespaces", None,
                                  parts[3] if len(parts) > 3 else None,
                                  parts[4] if len(parts) > 4 else None)
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path


def _conflict(msg: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="Conflict", message=msg, details={})


_A = enums.action
_SERVED = frozenset({_A.LIST, _A.WATCH, _A.FETCH, _A.CREATE, _A.UPDATE, _A.DELETE})
_METHODS: dict = {}  # "GET" -> enums.method.GET: kmock's lookup scans the enum
_REQUEST_FIELDS = ("id", "method", "url", "params", "headers", "cookies", "body", "text", "data",
                   "action", "resource", "namespace", "name", "subresource", "_raw_request",
                   "_stream_bus")
if tuple(a.name for a in rendering.Request.__attrs_attrs__) != _REQUEST_FIELDS:
    raise ImportError("kmock's Request has other fields than FakeKube.__call__ fills")


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _respond(body: bytes, status: int = 200) -> aiohttp.web.Response:
    # the headers aiohttp.web.json_response sends, for a body encoded once
    return aiohttp.web.Response(body=body, status=status, content_type="application/json",
                                charset="utf-8")


def _event(kind: bytes, body: bytes) -> bytes:
    # json.dumps({"type": kind, "object": obj}) byte for byte, with obj already encoded
    return b'{"type": "' + kind + b'", "object": ' + body + b"}\n"


class _Watch:
    """One watch stream: the encoded events not yet written, and a future to wake its
    writer."""
    __slots__ = ("namespace", "name", "pending", "wake")

    def __init__(self, namespace: Optional[str], name: Optional[str]) -> None:
        self.namespace, self.name = namespace, name
        self.pending: list = []
        self.wake: Optional[asyncio.Future] = None

    def push(self, line: bytes) -> None:
        self.pending.append(line)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class FakeKube(kmock.KubernetesEmulator):
    """kmock's emulator with the semantics listed in the module docstring.

    Requests for a resource collection or object (``/api[s]/.../PLURAL[/NAME[/SUB]]``)
    with one of the six K8s actions are served here, from this class's own store, without
    kmock's DSL matching (~25 ms per request with its filters), its generic parsing and
    rendering, its versioned objects (a deep copy and a history entry per write) or its
    per-request and per-event buses.  Discovery and everything else is kmock's.

    Fault injection for the error-handling tests: ``faults[("POST", "vnis")] = n``
    makes the next ``n`` such requests fail with 500 before they have any effect;
    ``lost[("POST", "vnis")] = n`` lets them take effect and then answers 500 (a
    response lost after the commit, as with a timeout)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._status_sub: set = set()
        for key, namespaced, kind, status in RESOURCES:
            self.resources[key] = kmock.ResourceInfo(
                namespaced=namespaced, kind=kind, singular=kind.lower(),
                verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
                subresources={"status"} if status else set())
            if status:
                self._status_sub.add(kmock.resource(key))
        #: resource -> {(namespace, name): object, or None once deleted}; the deleted keep
        #: their place, so that lists keep kmock's order (creation order of the names)
        self._store: dict = {}
        self._watches: dict = {}  # resource -> [_Watch]
        self._res_cache: dict = {}  # (group, version, plural) -> kmock.resource
        self._rv = itertools.count(1)
        self.last_rv = 0
        #: seconds between BOOKMARK events on a watch (kopf reconnects a watch that is
        #: silent for 70 s, expecting the API server's bookmarks; a reconnect replays every
        #: object here, as the resourceVersion to resume from is ignored)
        self.bookmark_interval = 20.0
        self.faults: dict = {}
        self.lost: dict = {}
        self.writes = 0
        #: requests the fast front answered (the rest went through aiohttp's)
        self.fast_served = 0
        #: called as fn(plural, obj or None if deleted, name) after each successful write,
        #: on the server's thread: lets a benchmark follow progress without polling
        self.listeners: list = []

    # -- requests --

    async def __call__(self, raw_request: Any) -> Any:
        path = raw_request.path
        if not (path.startswith("/api/") or path.startswith("/apis/")):
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return await super().__call__(raw_request)
        query = dict(raw_request.query) if raw_request.query_string else {}
        request = self._record(self._parse(raw_request.method, path, query), raw_request.url,
                               query, dict(raw_request.headers), body, data, raw_request)
        try:
            return await self._handle(request)
        except Exception as e:  # as kmock: the client gets the error, the test sees it
            if not self._errors:
                raise
            self._errors[-1].append(e)
            return await self._render_error(e)
        finally:
            # the log of requests keeps what tests look at, not aiohttp's request (its
            # transport, buffers and parser state: most of the fake's memory at 10,000 Jobs)
            object.__setattr__(request, "_raw_request", None)

    def _parse(self, method_name: str, path: str, query: dict) -> tuple:
        """(method, parsed path, resource, action) of a request, as kmock's parser has them."""
        k8s = parsing.parse_path(path)
        rkey = (k8s.group, k8s.version, k8s.plural)
        res = self._res_cache.get(rkey)
        if res is None and k8s.group is not None:  # None: not a K8s path, as kmock's
            res = self._res_cache[rkey] = references.resource(
                group=k8s.group, version=k8s.version, plural=k8s.plural)
        method = _METHODS.get(method_name)
        if method is None:
            method = _METHODS[method_name] = enums.method(method_name)
        return method, k8s, res, parsing.guess_k8s(k8s, method, query)

    def _record(self, parsed: tuple, url: Any, query: dict, headers: dict, body: bytes,
                data: Any, raw_request: Any) -> Any:
        """The same Request as kmock's parser makes (and its log keeps), built directly
        (its attrs __init__ runs converters and makes a stream bus per request), appended
        to the log of requests."""
        method, k8s, res, action = parsed
        request = object.__new__(rendering.Request)
        for field, value in zip(_REQUEST_FIELDS, (
                len(self._requests), method, url, query, headers, {}, body,
                body.decode("utf-8", "replace"), data, action, res, k8s.namespace, k8s.name,
                k8s.subresource, raw_request, None)):
            object.__setattr__(request, field, value)
        self._requests.append(request)
        return request

    async def _handle(self, request: Any) -> Any:
        fault = self._fault(request)
        if fault is not None:
            return _respond(fault[1], fault[0])
        res = request.resource
        act = request.action
        if res is None or not res.plural or act not in _SERVED:
            fault = self._fault(request, self.lost)
            if fault is not None:
                return _respond(fault[1], fault[0])
            return await super()._handle(request)
        if act is _A.WATCH:
            fault = self._fault(request, self.lost)
            if fault is not None:
                return _respond(fault[1], fault[0])
            try:
                return await self._stream_watch(request)
            except kmock.KubernetesError as e:
                return _respond(self._status(e), e.status)
        status, body = self.serve(request)
        return _respond(body, status)

    def serve(self, request: Any) -> tuple:
        """The answer, ``(status, JSON body)``, to a get, list, create, update (patch) or
        delete of a served resource: both fronts (aiohttp's and the fast one) call this."""
        act = request.action
        try:
            if act is _A.CREATE or act is _A.UPDATE or act is _A.DELETE:
                # no await from the checks to the commit: writes are serialized
                body, status = self._write(request)
                self.writes += 1
                fault = self._fault(request, self.lost)  # the store has committed
                if fault is not None:
                    return fault
                if self.listeners:
                    self._notify(request)
                return status, body
            fault = self._fault(request, self.lost)
            if fault is not None:
                return fault
            if act is _A.FETCH:
                obj = self._get(request)
                if obj is None:
                    raise kmock.KubernetesObjectNotFoundError()
                return 200, _json(obj)
            return 200, _json(self._list(request))
        except kmock.KubernetesError as e:  # 404, 409: routine
            return e.status, self._status(e)

    def _fault(self, request: Any, table: Optional[dict] = None) -> Optional[tuple]:
        """An injected fault's answer (status, body), if one is due for ``request``."""
        table = self.faults if table is None else table
        if not table or request.resource is None or not request.resource.plural:
            return None
        key = (str(request.method.value).upper(), request.resource.plural)
        if table.get(key, 0) > 0:
            table[key] -= 1
            return 500, _json({
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 500,
                "reason": "InternalError", "message": "injected fault"})
        return None

    def faulty(self) -> bool:
        """Whether a fault is set up: then every request goes through aiohttp's front."""
        return any(self.faults.values()) or any(self.lost.values())

    async def _serve_version(self, request: Any) -> Any:
        doc = await super()._serve_version(request)
        if doc.get("groupVersion", "").startswith("/"):  # kmock says "/v1" for the core group
            doc["groupVersion"] = doc["groupVersion"][1:]
        return doc

    @staticmethod
    def _status(exc: Any) -> bytes:
        """The Status document of a KubernetesError (kmock formats a traceback into every
        error; 404/409 are routine here)."""
        return _json({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": exc.status, "reason": exc.reason or type(exc).__name__,
            "message": exc.message or repr(exc), "details": exc.details or {}})

    async def _render_error(self, exc: Exception) -> Any:
        if isinstance(exc, kmock.KubernetesError):
            return _respond(self._status(exc), exc.status)
        return await super()._render_error(exc)

    # -- the store --

    def _next_rv(self) -> str:
        self.last_rv = next(self._rv)
        return str(self.last_rv)

    def _get(self, request: Any) -> Optional[dict]:
        objs = self._store.get(request.resource)
        return objs.get((request.namespace, request.name)) if objs else None

    def _publish(self, res: Any, kind: bytes, obj: dict, body: bytes) -> None:
        """Hand an event to the watches of ``res`` that select ``obj``, encoded once."""
        watches = self._watches.get(res)
        if not watches:
            return
        md = obj.get("metadata") or {}
        ns, name = md.get("namespace"), md.get("name")
        line = _event(kind, body)
        for w in watches:
            if (w.namespace is None or w.namespace == ns) and (w.name is None or w.name == name):
                w.push(line)

    def _write(self, request: Any) -> tuple:
        """Check preconditions, commit, publish the events; the response body and status.
        Raises KubernetesError (404, 409) before any change."""
        res, act, data = request.resource, request.action, request.data
        objs = self._store.get(res)
        if act is _A.CREATE:
            md = data.setdefault("metadata", {})  # not a dict: 500, as in kmock
            if request.namespace:
                md["namespace"] = request.namespace
            if "generateName" in md and not md.get("name"):
                md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
            key = (request.namespace or md.get("namespace"), md.get("name"))
            if objs is None:
                objs = self._store[res] = {}
            elif objs.get(key) is not None:
                raise KubernetesObjectConflictError()
            md["uid"] = str(uuid.uuid4())
            md["resourceVersion"] = self._next_rv()
            md["creationTimestamp"] = _now()
            md["generation"] = 1
            md.pop("deletionTimestamp", None)
            if res in self._status_sub:
                data.pop("status", None)
            obj = objs[key] = dict(data)
            body = _json(obj)
            self._publish(res, b"ADDED", obj, body)
            return body, 201
        key = (request.namespace, request.name)
        old = objs.get(key) if objs else None
        if old is None:
            raise kmock.KubernetesObjectNotFoundError()
        if act is _A.UPDATE:
            if isinstance(data, dict):
                md = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
                want = md.get("resourceVersion") if md else None
                have = old.get("metadata", {}).get("resourceVersion")
                if want is not None and want != have:
                    raise _conflict(
                        f"the object has been modified (resourceVersion {have}, not {want})")
                if res in self._status_sub:
                    if request.subresource == "status":
                        for k in list(data):
                            if k != "status":
                                data.pop(k)
                    else:
                        data.pop("status", None)
                data.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
            # kmock's merge (or JSON) patch: copy-on-write, stored versions are never mutated
            obj = objs[key] = dicts.patch_dict(old, data or {})
            body = _json(obj)
            self._publish(res, b"MODIFIED", obj, body)
        else:  # DELETE
            pre = data.get("preconditions") if isinstance(data, dict) else None
            if pre:
                omd = old.get("metadata", {})
                if pre.get("uid") and pre["uid"] != omd.get("uid"):
                    raise _conflict(f"Precondition failed: UID in precondition: {pre['uid']}, "
                                    f"UID in object meta: {omd.get('uid')}")
                if pre.get("resourceVersion") and pre["resourceVersion"] != omd.get("resourceVersion"):
                    raise _conflict("Precondition failed: resourceVersion")
            md = old.get("metadata", {})
            if md.get("deletionTimestamp"):
                obj = old  # already being deleted: nothing changes
                body = _json(obj)
            elif md.get("finalizers", []):
                now = datetime.datetime.now(tz=datetime.timezone.utc).isoformat()
                obj = objs[key] = dicts.patch_dict(old, {"metadata": {"deletionTimestamp": now}})
                body = _json(obj)
                self._publish(res, b"MODIFIED", obj, body)
            else:
                objs[key] = None
                body = _json(old)
                self._publish(res, b"DELETED", old, body)
                return body, 200
        # marked for deletion and no finalizer left: gone (the response shows the last state)
        md = obj.get("metadata", {})
        if md.get("deletionTimestamp") and not md.get("finalizers", []):
            objs[key] = None
            self._publish(res, b"DELETED", obj, body)
        return body, 200

    def _notify(self, request: Any) -> None:
        name = request.name
        ns = request.namespace
        if request.action is _A.CREATE:
            md = request.data.get("metadata") or {}
            ns, name = ns or md.get("namespace"), name or md.get("name")
        obj = self._store[request.resource].get((ns, name))
        raw = None if obj is None else dict(obj)
        for fn in self.listeners:
            fn(request.resource.plural, raw, name)

    def _known(self, res: Any) -> bool:
        return res in self._store or res in self.resources or res in self._get_resources()

    def _get_resources(self) -> list:
        # kmock's (declared, and from its DSL) plus those this store has held
        return list(set(super()._get_resources()) | set(self._store))

    def _list(self, request: Any) -> dict:
        res, ns = request.resource, request.namespace
        if not self._known(res):
            raise kmock.KubernetesResourceNotFoundError()
        objs = self._store.get(res) or {}
        items = [o for (ons, _), o in objs.items()
                 if o is not None and (ns is None or ons == ns)]
        sel = request.params.get("labelSelector")
        if sel:
            terms = _parse_selector(sel)
            items = [o for o in items
                     if _match_terms((o.get("metadata") or {}).get("labels") or {}, terms)]
        return {"metadata": {"resourceVersion": self._next_rv()}, "items": items,
                "kind": "List", "apiVersion": "v1"}

    # -- watches --

    async def _stream_watch(self, request: Any) -> Any:
        """Every selected object as ADDED, then each change as it is committed (no event
        is lost or repeated between the two), one JSON line each; BOOKMARK events every
        ``bookmark_interval`` when the client allows them, as the API server sends."""
        res = request.resource
        response = aiohttp.web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request._raw_request)
        w = _Watch(request.namespace, request.name)
        # the objects and the subscription at the same point of the write order
        for (ns, name), obj in (self._store.get(res) or {}).items():
            if obj is not None and (w.namespace is None or ns == w.namespace) and (
                    w.name is None or name == w.name):
                w.pending.append(_event(b"ADDED", _json(obj)))
        self._watches.setdefault(res, []).append(w)
        loop = asyncio.get_running_loop()
        timer = None
        if request.params.get("allowWatchBookmarks") == "true":
            info = self.resources[res]
            api = res.version if not res.group else f"{res.group}/{res.version}"

            def bookmark() -> None:
                nonlocal timer
                w.push(json.dumps({"type": "BOOKMARK", "object": {
                    "kind": info.kind, "apiVersion": api,
                    "metadata": {"resourceVersion": str(self.last_rv)}}}).encode() + b"\n")
                timer = loop.call_later(self.bookmark_interval, bookmark)
            timer = loop.call_later(self.bookmark_interval, bookmark)
        try:
            while True:
                if not w.pending:
                    w.wake = loop.create_future()
                    await w.wake
                    w.wake = None
                chunk = b"".join(w.pending)
                w.pending.clear()
                await response.write(chunk)
        except ConnectionError:
            pass  # the client went away
        finally:
            if timer is not None:
                timer.cancel()
            self._watches[res].remove(w)
        return response


_FAST_METHODS = frozenset({"GET", "POST", "PATCH", "DELETE"})
_FAST_ACTIONS = frozenset({_A.FETCH, _A.LIST, _A.CREATE, _A.UPDATE, _A.DELETE})
# requests whose response aiohttp delimits by Content-Length (HEAD's has none; CONNECT...)
_DELIMITED = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_SERVER = SERVER_SOFTWARE.encode()
_MAX_HEAD = 1 << 16
_FAST, _WAIT, _TUNNEL = "fast", "wait", "tunnel"
_date_cache: list = [-1, b""]


def _date() -> bytes:
    t = int(time.time())
    if t != _date_cache[0]:
        _date_cache[:] = [t, email.utils.formatdate(t, usegmt=True).encode()]
    return _date_cache[1]


def _fields(lines: list) -> Optional[dict]:
    """An HTTP head's fields, lower-cased names; None if one is malformed or repeated."""
    fields: dict = {}
    for line in lines:
        k, sep, v = line.partition(":")
        kl = k.lower()
        if not sep or not k or k[-1] in " \t" or k[0] in " \t" or kl in fields:
            return None  # obs-fold, a malformed or repeated field
        fields[kl] = v.strip(" \t")
    return fields


class _Front(asyncio.Protocol):
    """The fast front: an HTTP/1.1 server that answers the requests the store serves
    (get, list, create, patch, delete, with JSON bodies: ``_Front._take``) itself, through
    ``FakeKube.serve`` as aiohttp's front does, at a fraction of aiohttp's cost.  Any
    other request goes to aiohttp's server over a connection of its own: a request of
    known length (discovery, a protobuf body, any request while a fault is set up...) on
    its own, the connection coming back to the fast path once aiohttp's response (of
    known length) has been relayed; anything else (a watch -- its response is streamed --,
    a chunked body, ``Expect``...) turns the connection into a byte tunnel to aiohttp's
    server, for good."""

    def __init__(self, kube: "FakeKube", backend: tuple, urls: dict) -> None:
        self.kube, self.backend, self.urls = kube, backend, urls
        self.transport: Any = None
        self.buf = b""
        self.mode = _FAST  # _WAIT: for aiohttp's answer to one request; _TUNNEL: for good
        self.back: Optional[_Back] = None  # the connection to aiohttp's server
        self.pending: Optional[list] = None  # bytes for aiohttp while it connects
        self.eof = False
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.mode is _TUNNEL:
            self._send(data)
            return
        self.buf += data
        if self.mode is _FAST:
            self._run()

    def _run(self) -> None:
        buf = self.buf
        while buf and self.mode is _FAST and not self.transport.is_closing():
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > _MAX_HEAD:  # aiohttp's to refuse
                    self._tunnel(buf)
                    buf = b""
                break
            end = self._take(buf, i)
            if end == 0:  # the body is still to come
                break
            if end < 0:
                self._tunnel(buf)
                buf = b""
                break
            buf = buf[end:]
        self.buf = buf
        if self.eof and self.mode is _FAST:
            self.transport.close()

    def _take(self, buf: bytes, i: int) -> int:
        """Serve, or send to aiohttp, the request whose head ends at ``i``: the end of the
        request; 0 when its body is incomplete; -1 when its end is not known (a tunnel)."""
        lines = buf[:i].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        f = _fields(lines[1:])
        if (len(parts) != 3 or f is None or parts[2] != "HTTP/1.1" or parts[0] not in _DELIMITED
                or "transfer-encoding" in f or "expect" in f or "upgrade" in f):
            return -1
        n = f.get("content-length", "0")
        if not (n.isascii() and n.isdigit()):
            return -1
        end = i + 4 + int(n)
        if len(buf) < end:
            return 0
        answer = self._fast(buf, i, end, parts[0], parts[1], lines[1:], f)
        if answer is None:  # aiohttp answers this one
            self.mode = _WAIT
            self._send(buf[:end])
            return end
        status, out, close = answer
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nDate: %s\r\nServer: %s\r\n%s\r\n%s" % (
                status, _REASONS.get(status, b""), len(out), _date(), _SERVER,
                b"Connection: close\r\n" if close else b"", out))
        if close:
            self.transport.close()
        return end

    def _fast(self, buf: bytes, i: int, end: int, method: str, target: str, lines: list,
              f: dict) -> Optional[tuple]:
        """(status, body, close) for a fast-path request; None for aiohttp's front."""
        kube = self.kube
        host = f.get("host")
        if (method not in _FAST_METHODS or "#" in target or host is None or kube.faulty()
                or not (target.startswith("/api/") or target.startswith("/apis/"))):
            return None
        close = False
        conn = f.get("connection")
        if conn is not None:
            tokens = {t.strip().lower() for t in conn.split(",")}
            if not tokens <= {"close", "keep-alive"}:
                return None
            close = "close" in tokens
        if not buf[:i].isascii():  # aiohttp's decoding differs beyond ASCII
            return None
        body = buf[i + 4:end]
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return None
        path, _, qs = target.partition("?")
        try:  # aiohttp's request URL, as its parser and BaseRequest.url make it
            rel = yarl.URL.build(path=path, query_string=qs, encoded=True)
            base = self.urls.get(host)
            if base is None:
                base = self.urls[host] = yarl.URL.build(scheme="http", authority=host)
            url = base.join(rel)
        except ValueError:
            return None
        query = dict(rel.query) if qs else {}
        if qs and len(query) != len(rel.query):
            return None  # a repeated parameter
        parsed = kube._parse(method, rel.path, query)
        res, act = parsed[2], parsed[3]
        if res is None or not res.plural or act not in _FAST_ACTIONS:
            return None
        # the shapes FakeKube._write takes without error (anything else fails there the
        # way aiohttp's front reports it)
        if act is _A.CREATE:
            if not (isinstance(data, dict) and isinstance(data.get("metadata", {}), dict)):
                return None
        elif act is _A.UPDATE:
            if not isinstance(data, dict):
                return None
        elif data is not None and not isinstance(data, dict):
            return None
        # the fields as aiohttp's request has them, names as sent
        headers = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k] = v.strip(" \t")
        request = kube._record(parsed, url, query, headers, body, data, None)
        kube.fast_served += 1
        try:
            status, out = kube.serve(request)
        except Exception as e:  # as FakeKube.__call__: the test sees it (or the log does)
            if not kube._errors:
                raise
            kube._errors[-1].append(e)
            return 500, _json({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "code": 500,
                "status": "Failure", "reason": type(e).__name__, "message": repr(e),
                "details": {}}), True
        return status, out, close

    # -- the connection to aiohttp's server --

    def _tunnel(self, data: bytes) -> None:
        self.mode = _TUNNEL
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self.back is not None:
            self.back.transport.write(data)
        elif self.pending is not None:  # connecting
            self.pending.append(data)
        else:
            self.pending = [data]
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, back = await loop.create_connection(lambda: _Back(self), *self.backend)
        except OSError:
            self.transport.close()
            return
        if self.closed:
            back.transport.close()
            return
        self.back = back
        back.transport.write(b"".join(self.pending))
        self.pending = None
        if self.eof and self.mode is _TUNNEL:
            back.transport.write_eof()

    def answered(self) -> None:
        """aiohttp's response to the one request sent has been relayed."""
        self.mode = _FAST
        self._run()

    def for_good(self) -> None:
        """aiohttp's response has no known end: tunnel everything from now on."""
        self.mode = _TUNNEL
        if self.buf:
            self._send(self.buf)
            self.buf = b""
        if self.eof and self.back is not None:
            self.back.transport.write_eof()

    def eof_received(self) -> Optional[bool]:
        self.eof = True
        if self.mode is _FAST:
            return None  # close
        if self.mode is _TUNNEL and self.back is not None:
            self.back.transport.write_eof()
        return True  # aiohttp still answers

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self.back is not None:
            self.back.transport.close()

    def pause_writing(self) -> None:
        if self.back is not None:
            self.back.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.back is not None:
            self.back.transport.resume_reading()


class _Back(asyncio.Protocol):
    """A front connection's own connection to aiohttp's server: relays aiohttp's bytes
    to the client and, while the front waits for one response, finds where it ends."""

    def __init__(self, front: _Front) -> None:
        self.front = front
        self.transport: Any = None
        self.head = b""
        self.left: Optional[int] = None  # body bytes still to come, once the head is read

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        front = self.front
        front.transport.write(data)
        if front.mode is not _WAIT:
            return
        if self.left is None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                if len(self.head) > _MAX_HEAD:
                    front.for_good()
                return
            lines = self.head[:i].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            f = _fields(lines[1:])
            n = f.get("content-length", "") if f is not None else ""
            if (f is None or len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit()
                    or int(parts[1]) < 200 or int(parts[1]) in (204, 304)
                    or "transfer-encoding" in f or not (n.isascii() and n.isdigit())
                    or "close" in f.get("connection", "").lower()):
                front.for_good()  # no known end (or aiohttp closes after it)
                return
            self.left = int(n) - (len(self.head) - i - 4)
            self.head = b""
        else:
            self.left -= len(data)
        if self.left == 0:
            self.left = None
            front.answered()
        elif self.left < 0:  # more than one response: not ours to delimit
            self.left = None
            front.for_good()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        front = self.front
        front.back = None
        if front.mode is not _FAST:  # aiohttp closed the tunnel (or mid-response)
            front.transport.close()
        # else: an idle connection (aiohttp's keep-alive timeout): a new one when needed

    def pause_writing(self) -> None:
        self.front.transport.pause_reading()

    def resume_writing(self) -> None:
        self.front.transport.resume_reading()



def write_kubeconfig(path: str, url: str) -> str:
    """A JSON kubeconfig for ``url`` (JSON: our client parses it without PyYAML, kopf's
    YAML loader reads JSON too)."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return path


class FakeApiServer:
    """The fake API server on 127.0.0.1 in a background thread with its own loop."""

    def __init__(self, port: int = 0, fast: bool = True) -> None:
        self._port = port
        #: whether the fast front answers on ``port`` (else: aiohttp's server alone)
        self.fast = fast
        self.url = ""
        self.kube: Optional[FakeKube] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kube-api", daemon=True)
        self._error: Optional[BaseException] = None

    def __enter__(self) -> "FakeApiServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fake API server did not start")
        if self._error:
            raise RuntimeError("fake API server failed") from self._error

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            try:  # uvloop (the test extra): a quarter less CPU per request than asyncio's loop
                import uvloop
            except ImportError:
                asyncio.run(self._main())
            else:
                uvloop.run(self._main())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # no access log: with logging at INFO (a test's caplog), a formatted line per request
        server_cls = functools.partial(aiohttp.test_utils.RawTestServer, access_log=None)
        async with FakeKube() as k, kmock.Server(
                k, port=None if self.fast else self._port or None, server_cls=server_cls) as srv:
            self.kube = k
            port = srv.port
            front = None
            if self.fast:
                backend, urls = ("127.0.0.1", srv.port), {}
                front = await self._loop.create_server(
                    lambda: _Front(k, backend, urls), "127.0.0.1", self._port or 0)
                port = front.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                if front is not None:
                    front.close()


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--kubeconfig", required=True)
    args = ap.parse_args(argv)
    srv = FakeApiServer(args.port)
    srv.start()
    write_kubeconfig(args.kubeconfig + ".tmp", srv.url)
    os.replace(args.kubeconfig + ".tmp", args.kubeconfig)  # readers see a complete file
    print(srv.url, flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A fake Kubernetes API server for the VNI tests: kmock 0.8 plus the API semantics
our code relies on.

No kube-apiserver can be installed on the machines these tests run on (not in Debian,
PyPI or npm; no docker), so kmock's in-memory emulator on 127.0.0.1 stands in.  kmock
alone lacks some semantics that matter for correctness; this subclass adds them, in the
way the real API server behaves:

* create: server-generated ``uid``, ``resourceVersion``, ``creationTimestamp``, the
  namespace from the URL, 201 Created; a pod's ``status`` sent on create is dropped
  (``podStrategy.PrepareForCreate``), as is any status of a kind with a status
  subresource;
* update (merge patch): ``metadata.resourceVersion`` in the body is a precondition
  (409 Conflict when stale); a new resourceVersion on every write; with a status
  subresource, the main resource ignores ``status`` and ``/status`` takes only
  ``status``;
* delete: ``DeleteOptions.preconditions`` (uid, resourceVersion) are honoured (409);
* list: equality-based ``labelSelector`` (``a=b,c!=d,e,!f``);
* all writes are serialized (the real server serializes per key in etcd).

* discovery: the core group's APIResourceList says ``groupVersion: v1`` (kmock: "/v1"),
  which kubectl needs to map core kinds; deploy/'s kinds (RBAC, admission policies, ...)
  are served, and /api/v1/namespaces[/NAME] is the Namespace resource (kmock takes it
  for a namespace prefix), so that ``kubectl apply -k deploy/`` runs against it
  (tests/test_deploy.py).

Still missing (and not relied upon): schema validation, strategic merge patch (merge
patch is used instead), server-side apply, garbage collection, namespace lifecycle,
protobuf bodies (``kubectl create`` sends protobuf for built-in kinds; ``kubectl apply``
sends JSON) and the OpenAPI document (``kubectl apply --validate=false``).

Run standalone (for a controller subprocess or the benchmark)::

    python tests/vni_k8s/fakeapi.py --port 0 --kubeconfig /tmp/kc.json
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import sys
import threading
import uuid
from typing import Any, Optional

import aiohttp.web
import kmock
from kmock._internal import enums, parsing, rendering

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


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _match_selector(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
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


class _Conflict(kmock.KubernetesError):
    pass


def _conflict(msg: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="Conflict", message=msg, details={})


class _FastDispatch(kmock.RawHandler):
    # kmock matches every request against its DSL filters, ~25 ms per request here; the
    # emulator's own K8s actions need no matching, so they go straight to the handlers.
    __slots__ = ()

    async def _handle(self, request: Any) -> Any:
        fault = self._fault(request, self.lost)  # the emulator has committed by now
        if fault is not None:
            return fault
        fn = None
        if (request.resource is not None and request.resource.plural
                and request.subresource in (None, "status")):
            fn = {
                enums.action.LIST: self._serve_list, enums.action.WATCH: self._serve_watch,
                enums.action.FETCH: self._serve_fetch, enums.action.CREATE: self._serve_create,
                enums.action.UPDATE: self._serve_update, enums.action.DELETE: self._serve_delete,
            }.get(request.action)
        if fn is None:
            return await super()._handle(request)
        if request.action == enums.action.WATCH:
            return await rendering.Response(payload=fn)(request)
        return aiohttp.web.json_response(await fn(request))


class FakeKube(kmock.KubernetesEmulator, _FastDispatch):
    """kmock's emulator with the semantics listed in the module docstring.

    Fault injection for the error-handling tests: ``faults[("POST", "vnis")] = n``
    makes the next ``n`` such requests fail with 500 before they have any effect;
    ``lost[("POST", "vnis")] = n`` lets them take effect and then answers 500 (a
    response lost after the commit, as with a timeout)."""

    def _fault(self, request: Any, table: Optional[dict] = None) -> Any:
        table = self.faults if table is None else table
        if not table or request.resource is None or not request.resource.plural:
            return None
        key = (str(request.method.value).upper(), request.resource.plural)
        if table.get(key, 0) > 0:
            table[key] -= 1
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 500,
                "reason": "InternalError", "message": "injected fault"}, status=500)
        return None

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
        self._rv = itertools.count(1)
        self.faults: dict = {}
        self.lost: dict = {}
        self._wlock: Optional[asyncio.Lock] = None
        self.writes = 0

    async def _serve_version(self, request: Any) -> Any:
        doc = await super()._serve_version(request)
        if doc.get("groupVersion", "").startswith("/"):  # kmock says "/v1" for the core group
            doc["groupVersion"] = doc["groupVersion"][1:]
        return doc

    async def _render_error(self, exc: Exception) -> Any:
        # kmock formats a traceback into every error; 404/409 are routine here
        if isinstance(exc, kmock.KubernetesError):
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": exc.status, "reason": exc.reason or type(exc).__name__,
                "message": exc.message or repr(exc), "details": exc.details or {}},
                status=exc.status)
        return await super()._render_error(exc)

    def _stored(self, request: Any) -> Any:
        ns = request.namespace
        if request.action == enums.action.CREATE:
            md = (request.data or {}).get("metadata") or {}
            ns = ns or md.get("namespace")
            name = md.get("name")
        else:
            name = request.name
        key = (request.resource, ns, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    def _prepare(self, request: Any) -> None:
        """Check preconditions and fill server-owned fields; raises on conflict."""
        act, data = request.action, request.data
        status_sub = request.resource in self._status_sub
        if act == enums.action.CREATE and isinstance(data, dict):
            md = data.setdefault("metadata", {})
            if request.namespace:
                md["namespace"] = request.namespace
            if "generateName" in md and not md.get("name"):
                md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
            md["uid"] = str(uuid.uuid4())
            md["resourceVersion"] = str(next(self._rv))
            md["creationTimestamp"] = _now()
            md["generation"] = 1
            md.pop("deletionTimestamp", None)
            if status_sub:
                data.pop("status", None)
        elif act == enums.action.UPDATE and isinstance(data, dict):
            obj = self._stored(request)
            if obj is None:
                return  # kmock answers 404
            md = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
            want = md.get("resourceVersion") if md else None
            have = obj.get("metadata", {}).get("resourceVersion")
            if want is not None and want != have:
                raise _conflict(f"the object has been modified (resourceVersion {have}, not {want})")
            if status_sub:
                if request.subresource == "status":
                    for k in list(data):
                        if k != "status":
                            data.pop(k)
                else:
                    data.pop("status", None)
            data.setdefault("metadata", {})["resourceVersion"] = str(next(self._rv))
        elif act == enums.action.DELETE:
            obj = self._stored(request)
            pre = (data or {}).get("preconditions") if isinstance(data, dict) else None
            if obj is not None and pre:
                omd = obj.get("metadata", {})
                if pre.get("uid") and pre["uid"] != omd.get("uid"):
                    raise _conflict(f"Precondition failed: UID in precondition: {pre['uid']}, "
                                    f"UID in object meta: {omd.get('uid')}")
                if pre.get("resourceVersion") and pre["resourceVersion"] != omd.get("resourceVersion"):
                    raise _conflict("Precondition failed: resourceVersion")

    async def _handle(self, request: Any) -> Any:
        fault = self._fault(request)
        if fault is not None:
            return fault
        if request.resource is None or request.action not in (
                enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            return await super()._handle(request)
        if self._wlock is None:
            self._wlock = asyncio.Lock()
        async with self._wlock:
            try:
                self._prepare(request)
            except kmock.KubernetesError as e:
                return await self._render_error(e)
            self.writes += 1
            response = await super()._handle(request)
        if request.action == enums.action.CREATE and getattr(response, "status", None) == 200:
            response.set_status(201)
        return response

    # kmock finds an object by scanning all of them; a dict lookup keeps the fake fast
    # with thousands of objects (the race and benchmark scenarios).
    def _lookup(self, request: Any, create: bool = False) -> Any:
        ns, name = request.namespace, request.name
        if create:
            md = (request.data or {}).get("metadata") or {}
            ns, name = ns or md.get("namespace"), name or md.get("name")
        key = (request.resource, ns, name)
        if key not in self.objects:
            raise kmock.KubernetesObjectNotFoundError()
        return self.objects[key]

    async def _serve_fetch(self, request: Any) -> Any:
        obj = self._lookup(request)
        if obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: Any) -> Any:
        return self._lookup(request, create=True).raw

    async def _serve_update(self, request: Any) -> Any:
        return self._lookup(request).last.raw

    async def _serve_delete(self, request: Any) -> Any:
        return self._lookup(request).last.raw

    async def _serve_list(self, request: Any) -> Any:
        doc = await super()._serve_list(request)
        sel = request.params.get("labelSelector")
        if sel:
            doc["items"] = [o for o in doc["items"]
                            if _match_selector((o.get("metadata") or {}).get("labels") or {}, sel)]
        doc["kind"] = "List"
        doc["apiVersion"] = "v1"
        doc["metadata"] = {"resourceVersion": str(next(self._rv))}
        return doc


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

    def __init__(self, port: int = 0) -> None:
        self._port = port
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
            asyncio.run(self._main())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FakeKube() as k, kmock.Server(k, port=self._port or None) as srv:
            self.kube = k
            self.url = f"http://127.0.0.1:{srv.port}"
            self._ready.set()
            await self._stop.wait()


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

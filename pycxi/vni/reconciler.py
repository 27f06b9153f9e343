"""The VNI controller's domain: the indexes the rules need, and the carrying out of
their decisions through :class:`pycxi.vni.kstore.KubeStore`.

**What** to do is decided by the pure functions of :mod:`pycxi.vni.rules` (read that
module first): :func:`~pycxi.vni.rules.workload_step` and
:func:`~pycxi.vni.rules.claim_step` for one object, :func:`~pycxi.vni.rules.stamp_decision`
for a pod, :func:`~pycxi.vni.rules.lifecycle_actions` for every ``Vni`` object (the
resync), :func:`~pycxi.vni.rules.backoff_delay` for retries.  This module keeps what
this replica knows (workloads, pods, holders), calls them and does what they say.  Its
only durable state is the API server: restart the controller, or run two, at any time.

No kopf, no threads, no event loop: every entry point (``on_workload``,
``on_replicaset``, ``on_claim``, ``retry``, ``resync``, ``catch_up``) is a blocking call,
safe to make from several threads at once.  :mod:`pycxi.vni.controller` wires them to
kopf; the tests call them directly with an injected clock.  Two hooks connect it to
the outside: ``requeue(uid, delay)`` (call :meth:`Reconciler.retry` with ``uid`` after
``delay`` seconds) and ``post_event(body, type, reason, message)`` (a Kubernetes Event).

* **Holders.**  The pod index maps each VNI to the existing pods that were given it (their
  True ``vni.pycxi.dev/Allocated`` condition).  It is filled from one LIST before
  anything is decided (:meth:`Reconciler.warm_up`), kept by the pod watch, and updated
  by our own stamp writes at once: a grant we just wrote must count before the watch
  echoes it (docs/vni-service.md, "Architecture", says why this is not a ``kopf.index``).
* **Top-level owner.**  Objects controlled by a watched kind are ignored (a Deployment's
  ReplicaSets carry its annotations: the original gave them VNIs of their own).  Pods
  are mapped to their top-level owner through the ReplicaSet index.
* **Errors** (exhaustion, missing or foreign claims, API failures) become a False
  condition with a CamelCase reason on the pods (and the claim), a Warning Event on the
  workload, a metric, and a requeue with exponential backoff.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from pycxi.vni.kstore import DEFAULT_NAMESPACE, KubeStore, format_time, parse_time
from pycxi.vni.kube import API_VERSION, GROUP, POD_CONDITION, KubeClient, KubeError
from pycxi.vni.lookup import FALSE_VALUES, format_stamp
from pycxi.vni.rules import (CLAIM, POD, REPLICASET, VOLCANO_JOB, WATCHED_KINDS, Kind, Request,
                             backoff_delay, claim_step, claim_user, controller_ref,
                             grant_condition, is_finished, lifecycle_actions, parse_kinds,
                             parse_request, pod_condition, stamp_decision, workload_step,
                             workload_wants)
from pycxi.vni.store import (DEFAULT_QUARANTINE, DEFAULT_RANGES, VniError, VniExhausted,
                             parse_ranges)

__all__ = ["Config", "Reconciler", "FINALIZER"]

log = logging.getLogger("pycxi.vni.controller")

#: Keeps a claim (and its VNI) while workloads still redeem it, like pvc-protection.
FINALIZER = f"{GROUP}/claim-protection"
EVENT_INTERVAL = 60.0  # at most one Event per object and reason in this many seconds


@dataclasses.dataclass
class Config:
    ranges: Tuple[Tuple[int, int], ...] = DEFAULT_RANGES
    quarantine: float = DEFAULT_QUARANTINE
    namespace: str = DEFAULT_NAMESPACE       # key records and the leader Lease live here
    resync: float = 30.0                     # seconds between full checks
    orphan_age: float = 30.0                 # a Vni no key record points to, after this: quarantined
    metrics_port: int = 9090                 # 0: no metrics endpoint
    extra_kinds: Tuple[Kind, ...] = ()
    volcano: bool = True
    leader_election: bool = True
    lease_duration: float = 15.0
    #: a Normal Event per allocation: off by default -- the pods' condition and the Vni
    #: object already say it, and at a burst of Jobs it is a quarter of the API writes
    allocation_events: bool = False
    identity: str = dataclasses.field(
        default_factory=lambda: os.environ.get("POD_NAME") or f"pid-{os.getpid()}-{random.getrandbits(24):06x}")

    @classmethod
    def from_env(cls, env: Optional[Dict[str, str]] = None) -> "Config":
        e = os.environ if env is None else env
        c = cls()
        if e.get("PYCXI_VNI_RANGES"):
            c.ranges = parse_ranges(e["PYCXI_VNI_RANGES"])
        if e.get("PYCXI_VNI_QUARANTINE"):
            c.quarantine = float(e["PYCXI_VNI_QUARANTINE"])
        c.namespace = e.get("PYCXI_VNI_NAMESPACE") or e.get("POD_NAMESPACE") or c.namespace
        if e.get("PYCXI_VNI_RESYNC"):
            c.resync = float(e["PYCXI_VNI_RESYNC"])
        if e.get("PYCXI_VNI_ORPHAN_AGE"):
            c.orphan_age = float(e["PYCXI_VNI_ORPHAN_AGE"])
        if e.get("PYCXI_VNI_METRICS_PORT"):
            c.metrics_port = int(e["PYCXI_VNI_METRICS_PORT"])
        c.extra_kinds = parse_kinds(e.get("PYCXI_VNI_EXTRA_KINDS", ""))
        c.volcano = e.get("PYCXI_VNI_VOLCANO", "true").lower() not in FALSE_VALUES
        c.leader_election = e.get("PYCXI_VNI_LEADER_ELECTION", "true").lower() not in FALSE_VALUES
        c.allocation_events = e.get("PYCXI_VNI_ALLOCATION_EVENTS", "false").lower() not in FALSE_VALUES
        return c

    @property
    def kinds(self) -> Tuple[Kind, ...]:
        return tuple(k for k in WATCHED_KINDS if self.volcano or k != VOLCANO_JOB) + self.extra_kinds


# --- state ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """What this replica knows about one top-level workload (or generic owner)."""
    uid: str
    namespace: str
    name: str
    kind: Kind
    request: Request = Request()
    finished: bool = False
    vnis: Tuple[int, ...] = ()
    reason: str = "Pending"
    message: str = ""
    seen: float = dataclasses.field(default_factory=time.monotonic)
    created: float = 0.0   # the object's creationTimestamp (0: unknown)
    generic: bool = False  # an owner we do not watch; lives as long as its pods

    @property
    def key(self) -> str:
        return f"workload:{self.uid}"

    @property
    def holder(self) -> dict:
        return {"apiVersion": self.kind.api_version, "kind": self.kind.kind,
                "namespace": self.namespace, "name": self.name, "uid": self.uid}

    def condition(self) -> Optional[Tuple[str, str, str]]:
        """(status, reason, message) of the pod condition, None for "say nothing".
        Pods already given VNIs keep them (:func:`pycxi.vni.rules.stamp_decision`)."""
        if self.reason == "Released" or not self.request.asks:
            return None
        if self.vnis:
            return ("True", "Allocated", format_stamp(list(self.vnis)))
        return ("False", self.reason, self.message)


@dataclasses.dataclass
class PodInfo:
    namespace: str
    name: str
    owner_uid: Optional[str]      # the controller ownerReference (None: bare pod)
    owner_ref: Optional[dict]
    stamped: Optional[Tuple[str, str, str]] = None
    grant: Tuple[int, ...] = ()   # VNIs the pod was given (its True condition): it holds them
    seen: float = 0.0             # monotonic time of the last event or LIST that showed it
    # one writer of the pod's condition at a time (see Reconciler._stamp_pod)
    stamping: bool = False
    restamp: bool = False


class _Refused(Exception):
    def __init__(self, reason: str, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


Requeue = Callable[[str, float], None]
PostEvent = Callable[[dict, str, str, str], None]


def _no_event(body: dict, type: str, reason: str, message: str) -> None:
    log.debug("event %s %s: %s", type, reason, message)


class Reconciler:
    """The controller's domain logic (see the module docstring)."""

    def __init__(self, config: Config, client: KubeClient, *, metrics: Any = None,
                 clock: Callable[[], float] = time.time, requeue: Optional[Requeue] = None,
                 post_event: Optional[PostEvent] = None) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self.metrics = metrics
        #: called with (uid, delay): run :meth:`retry` for uid after delay seconds.  The
        #: default only records the retry in :attr:`pending` (tests call retry themselves).
        self.requeue: Requeue = requeue or (lambda uid, delay: None)
        self.post_event: PostEvent = post_event or _no_event
        self._lock = threading.RLock()
        self.workloads: Dict[str, Workload] = {}
        self.pods: Dict[str, PodInfo] = {}
        #: VNI -> uids of existing pods that were given it (the holders; see pycxi.vni.rules)
        self.holders: Dict[int, Set[str]] = {}
        self.warm = False  # the pod index has been filled from a LIST (see warm_up)
        self.store = KubeStore(config.ranges, config.quarantine, clock, client=client,
                               namespace=config.namespace, orphan_age=config.orphan_age,
                               in_use=self.held)
        self.rs_owner: Dict[str, Optional[str]] = {}     # ReplicaSet uid -> Deployment uid
        # reverse indexes, so that a workload finds its pods without scanning all pods
        self.pods_by_owner: Dict[str, Set[str]] = {}     # controller uid -> pod uids
        self.rs_by_deployment: Dict[str, Set[str]] = {}  # Deployment uid -> ReplicaSet uids
        self.bodies: Dict[str, Tuple[Kind, dict]] = {}   # last body of workloads and claims
        self.attempts: Dict[str, int] = {}               # uid -> failed attempts in a row
        self.pending: Dict[str, float] = {}              # uid -> when its queued retry is due
        self.resyncs = 0                                 # completed resyncs
        self._events_sent: Dict[Tuple[str, str], float] = {}
        self._leader = not config.leader_election
        self.started_wall = time.time()
        self.kinds_by_gvk = {(k.api_version, k.kind): k for k in config.kinds}

    # -- activity (leader election lives in the wiring) --

    @property
    def active(self) -> bool:
        """Whether this replica writes.  Without leader election every replica does,
        which is correct (allocation is an atomic create) but doubles the API load."""
        return self._leader

    def set_active(self, active: bool) -> None:
        self._leader = active
        if self.metrics is not None:
            self.metrics.leader.set(1 if active else 0)

    # -- holders --

    def held(self, v: int) -> bool:
        """Whether an existing pod was given ``v``.  Before the pod index is warm every
        VNI counts as held: nothing is reused or quarantined on a partial view."""
        with self._lock:
            return not self.warm or bool(self.holders.get(v))

    def _set_grant(self, info: PodInfo, uid: str, grant: Tuple[int, ...]) -> None:
        """Under self._lock."""
        for v in info.grant:
            if v not in grant:
                self._discard(self.holders, v, uid)
        for v in grant:
            self.holders.setdefault(v, set()).add(uid)
        info.grant = grant

    def warm_up(self) -> None:
        """Fill the pod index from one LIST before anything is decided (kopf starts the
        watches afterwards and replays every pod as an event, which only adds)."""
        for pod in self.client.list(POD.path()):
            self._index_pod(pod)
        with self._lock:
            self.warm = True

    @staticmethod
    def _discard(index: Dict[Any, Set[str]], key: Any, value: str) -> None:
        vals = index.get(key)
        if vals is not None:
            vals.discard(value)
            if not vals:
                del index[key]

    # -- events of the watched objects --

    def on_replicaset(self, body: dict, deleted: bool) -> None:
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        ref = controller_ref(meta)
        if deleted:
            with self._lock:
                dep = self.rs_owner.pop(uid, None)
                if dep:
                    self._discard(self.rs_by_deployment, dep, uid)
        else:
            owner = ref.get("uid") if ref and ref.get("kind") == "Deployment" else None
            with self._lock:
                known = uid in self.rs_owner
                self.rs_owner[uid] = owner
                if owner:
                    self.rs_by_deployment.setdefault(owner, set()).add(uid)
            if not known:
                self._stamp_pods_of({uid})
        if not (ref and ref.get("kind") == "Deployment"):
            self.on_workload(REPLICASET, body, deleted)  # a bare ReplicaSet is top-level

    def on_workload(self, kind: Kind, body: dict, deleted: bool) -> None:
        meta = body.get("metadata") or {}
        uid, ns, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if not uid or not ns:
            return
        ref = controller_ref(meta)
        if kind == POD:
            self._on_pod(body, deleted)
            if ref is not None:
                return  # a workload's pod; or a generic owner's (see _generic_owner)
        if ref is not None and self._watched_ref(ref):
            return  # not top-level: its owner's VNI covers it
        req = parse_request(body)
        with self._lock:
            wl = self.workloads.get(uid)
            if wl is None:
                if not req.asks:
                    return  # the common case: nothing asked, nothing held (resync
                    # catches a VNI held from before a restart)
                wl = self.workloads[uid] = Workload(
                    uid, ns, name or "", kind,
                    created=parse_time(meta.get("creationTimestamp")) or 0.0)
            wl.request = req
            wl.finished = is_finished(kind, body)
            self.bodies[uid] = (kind, body)
        gone = deleted or bool(meta.get("deletionTimestamp"))
        self.reconcile(wl, gone=gone)

    def _watched_ref(self, ref: dict) -> bool:
        k = self.kinds_by_gvk.get((str(ref.get("apiVersion")), str(ref.get("kind"))))
        return k is not None and k != POD

    def _on_pod(self, body: dict, deleted: bool) -> None:
        meta = body.get("metadata") or {}
        uid = meta["uid"]
        ref = controller_ref(meta)
        if deleted:
            with self._lock:
                info = self.pods.pop(uid, None)
                if info and info.owner_uid:
                    self._discard(self.pods_by_owner, info.owner_uid, uid)
                freed = []
                if info:
                    for v in info.grant:
                        self._discard(self.holders, v, uid)
                        if v not in self.holders:
                            freed.append(v)
            if info and info.owner_uid:
                self._maybe_release_generic(info.owner_uid)
            for v in freed:
                self._settle(v)  # its last holder is gone: quarantine it if it drained
            return
        self._index_pod(body)
        if ref is not None and not self._watched_ref(ref):
            self._generic_owner(body, ref)
        self._stamp_pod(uid)

    def _index_pod(self, body: dict) -> None:
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        ref = controller_ref(meta)
        cond = pod_condition(body)
        with self._lock:
            info = self.pods.get(uid)
            if info is not None:
                info.seen = time.monotonic()
            if info is None:
                info = self.pods[uid] = PodInfo(meta.get("namespace") or "", meta.get("name") or "",
                                                ref.get("uid") if ref else None, ref,
                                                seen=time.monotonic())
                if info.owner_uid:
                    self.pods_by_owner.setdefault(info.owner_uid, set()).add(uid)
            # our own stamp may be newer than this event; a grant is final either way
            if not (info.stamped and info.stamped[0] == "True"):
                info.stamped = cond
            grant = grant_condition(cond)
            if grant and not info.grant:
                self._set_grant(info, uid, grant)

    def _settle(self, v: int, dropped: Optional[str] = None) -> None:
        """``v`` has no holder pod left: quarantine it if its key let go too."""
        if not self.active or self.held(v):
            return
        try:
            if self.store.settle(v, dropped):
                log.info("VNI %d: last pod gone, quarantined", v, extra={"vni": v})
        except VniError as e:
            log.warning("VNI %d: cannot quarantine yet (%s); the resync will", v, e)

    def _generic_owner(self, pod: dict, ref: dict) -> None:
        """A pod whose controller we do not watch asks for a VNI: the VNI belongs to that
        owner (shared by its pods) and lives as long as any of its pods runs."""
        meta = pod.get("metadata") or {}
        req = parse_request(pod)
        uid = ref.get("uid")
        if not uid:
            return
        with self._lock:
            wl = self.workloads.get(uid)
            if wl is not None and wl.namespace != meta.get("namespace"):
                return  # a forged ownerReference across namespaces: never shared
            if wl is None:
                if not req.asks:
                    return
                group, _, version = str(ref.get("apiVersion") or "").rpartition("/")
                kind = Kind(group, version, (ref.get("kind") or "").lower() + "s",
                            ref.get("kind") or "")
                wl = self.workloads[uid] = Workload(uid, meta.get("namespace") or "",
                                                    ref.get("name") or "", kind, generic=True)
            if req.asks:
                wl.request = req
        self.reconcile(wl, gone=False)

    def _maybe_release_generic(self, owner_uid: str) -> None:
        with self._lock:
            wl = self.workloads.get(owner_uid)
            if wl is None or not wl.generic:
                return
            if self.pods_by_owner.get(owner_uid):
                return
        self.reconcile(wl, gone=True)

    # -- claims --

    def on_claim(self, body: dict, deleted: bool) -> None:
        meta = body.get("metadata") or {}
        ns, name, uid = meta.get("namespace") or "", meta.get("name") or "", meta.get("uid")
        if not uid:
            return
        if not self.active:
            with self._lock:  # for catch_up when this replica becomes the leader
                if deleted:
                    self.bodies.pop(uid, None)
                else:
                    self.bodies[uid] = (CLAIM, body)
            return
        key = f"claim:{uid}"
        if deleted:
            # removed by us (already let go) or with its finalizer stripped by hand: the
            # key lets go; pods that were given the VNI keep it (see _settle)
            step = claim_step(deleted=True, deleting=True, users=(), finalizers=(),
                              finalizer=FINALIZER)
            try:
                self._release_key(key, step.reason)
            except VniError as e:
                log.warning("claim %s/%s: cannot let go yet (%s); the resync will", ns, name, e)
            self._forget(uid)
            return
        try:
            deleting = bool(meta.get("deletionTimestamp"))
            step = claim_step(deleted=False, deleting=deleting,
                              users=self._claim_users(ns, name) if deleting else (),
                              finalizers=meta.get("finalizers") or (), finalizer=FINALIZER)
            if step.op == "wait":
                self._claim_status(ns, name, None, "False", step.reason, step.message)
                with self._lock:
                    self.bodies[uid] = (CLAIM, body)
                self.schedule_retry(uid)
                return
            if step.op == "finalize":
                self._release_key(key, step.reason)
                self._remove_finalizer(ns, name, meta)
                log.info("released VNI of deleted claim", extra={"namespace": ns, "claim": name})
                return
            if step.add_finalizer:
                # a merge patch replaces the list: the resourceVersion precondition makes
                # a concurrent change of the finalizers a 409 (retried) instead of a loss
                self.client.patch(CLAIM.path(ns, name), {"metadata": {
                    "resourceVersion": meta.get("resourceVersion"),
                    "finalizers": list(meta.get("finalizers") or []) + [FINALIZER]}})
            t0 = time.monotonic()
            v, new = self.store.acquire_new(key, owner=f"{ns}/VniClaim/{name}",
                                            holder={"apiVersion": API_VERSION, "kind": "VniClaim",
                                                    "namespace": ns, "name": name, "uid": uid})
            if new and self.metrics:
                self.metrics.allocations.inc()
                self.metrics.latency.observe(time.monotonic() - t0)
            if (body.get("status") or {}).get("vni") != v:
                self._claim_status(ns, name, v, "True", "Allocated", f"VNI {v}")
                self._event(body, "Normal", "Allocated", f"VNI {v}")
            self._succeeded(uid)
        except VniExhausted as e:
            self._claim_status(ns, name, None, "False", "Exhausted", str(e))
            self._error(body, "Exhausted", str(e))
            with self._lock:
                self.bodies[uid] = (CLAIM, body)
            self.schedule_retry(uid)
        except (VniError, KubeError) as e:
            self._error(body, "ApiError", str(e))
            with self._lock:
                self.bodies[uid] = (CLAIM, body)
            self.schedule_retry(uid)

    def _release_key(self, key: str, cause: str) -> None:
        v = self.store.drop(key)
        if v is not None:
            if self.metrics:
                self.metrics.releases.labels(cause).inc()
            log.info("%s let go of VNI %d (%s)", key, v, cause, extra={"vni": v, "cause": cause})
            self._settle(v, key)

    def _claim_users(self, ns: str, name: str) -> List[str]:
        """Workloads in ``ns`` that redeem claim ``name`` and still run (from the API,
        not from this replica's memory, so a fresh replica decides the same)."""
        users = []
        for kind in self.config.kinds:
            try:
                items = self.client.list(kind.path(ns))
            except KubeError as e:
                if e.not_found:
                    continue
                raise
            for o in items:
                meta = o.get("metadata") or {}
                ref = controller_ref(meta)
                if claim_user(kind, o, name, top_level=ref is None or not self._watched_ref(ref)):
                    users.append(f"{kind.kind}/{meta.get('name')}")
        return users

    def _claim_status(self, ns: str, name: str, vni: Optional[int], status: str, reason: str,
                      message: str) -> None:
        st: Dict[str, Any] = {"conditions": [{
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": format_time(time.time())}]}
        if vni is not None:
            st["vni"] = vni
            st["vniObject"] = f"vni-{vni}"
        try:
            self.client.patch(CLAIM.path(ns, name, "status"), {"status": st})
        except KubeError as e:
            if not e.not_found:
                raise

    def _remove_finalizer(self, ns: str, name: str, meta: dict) -> None:
        fins = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        try:
            self.client.patch(CLAIM.path(ns, name), {"metadata": {
                "resourceVersion": meta.get("resourceVersion"), "finalizers": fins or None}})
        except KubeError as e:
            if not e.not_found:
                raise

    # -- one workload --

    def reconcile(self, wl: Workload, *, gone: bool) -> None:
        """Converge one workload (:func:`pycxi.vni.rules.workload_step`): hold the VNIs it
        asks for while it runs, let go when it is finished or gone, and stamp the result
        on its pods."""
        if not self.active:
            return
        step = workload_step(wl.request, finished=wl.finished, gone=gone)
        if step.op == "release":
            self._release(wl, step.reason)
            if step.forget:
                with self._lock:
                    self.workloads.pop(wl.uid, None)
                self._forget(wl.uid)
            return
        req = wl.request
        before = (wl.vnis, wl.reason)
        try:
            if step.op == "refuse":
                raise _Refused(step.reason, step.message)
            vnis = []
            if req.own:
                t0 = time.monotonic()
                v, new = self.store.acquire_new(
                    wl.key, owner=f"{wl.namespace}/{wl.kind.kind}/{wl.name}", holder=wl.holder,
                    probably_new=not wl.vnis and wl.created > self.started_wall + 2)
                if new:
                    self._allocated(wl, v, time.monotonic() - t0)
                vnis.append(v)
            for claim in req.claims:
                vnis.append(self._redeem(wl, claim))
            wl.vnis, wl.reason, wl.message = tuple(sorted(set(vnis))), "Allocated", ""
            self._succeeded(wl.uid)
        except _Refused as e:
            wl.vnis, wl.reason, wl.message = (), e.reason, e.message
            if before != (wl.vnis, wl.reason):
                self._error(self._body(wl), e.reason, e.message)
            if e.retry:
                self.schedule_retry(wl.uid)
        except VniExhausted as e:
            wl.vnis, wl.reason, wl.message = (), "Exhausted", str(e)
            self._error(self._body(wl), "Exhausted", str(e))
            self.schedule_retry(wl.uid)
        except (VniError, KubeError) as e:
            # keep what the pods already have; only say "not ready" if they have nothing
            if not wl.vnis:
                wl.reason, wl.message = "ApiError", str(e)
            self._error(self._body(wl), "ApiError", str(e))
            self.schedule_retry(wl.uid)
        self._stamp_pods_of({wl.uid})

    def _redeem(self, wl: Workload, claim: str) -> int:
        try:
            c = self.client.get(CLAIM.path(wl.namespace, claim))
        except KubeError as e:
            if e.not_found:
                raise _Refused("ClaimNotFound", f"no VniClaim {claim!r} in namespace "
                               f"{wl.namespace}", retry=True) from e
            raise
        md = c.get("metadata") or {}
        if md.get("deletionTimestamp"):
            raise _Refused("ClaimNotReady", f"VniClaim {claim!r} is being deleted", retry=True)
        # The claim's own status is tenant-adjacent; the key record is ours alone.
        v = self.store.get(f"claim:{md.get('uid')}")
        if v is None:
            self.on_claim(c, False)
            v = self.store.get(f"claim:{md.get('uid')}")
        if v is None:
            raise _Refused("ClaimNotReady", f"VniClaim {claim!r} has no VNI yet", retry=True)
        return v

    def _allocated(self, wl: Workload, v: int, seconds: float) -> None:
        if self.metrics:
            self.metrics.allocations.inc()
            self.metrics.latency.observe(time.monotonic() - wl.seen)
        log.info("allocated VNI %d to %s %s/%s", v, wl.kind.kind, wl.namespace, wl.name,
                 extra={"vni": v, "namespace": wl.namespace, "workload": wl.name,
                        "kind": wl.kind.kind, "uid": wl.uid, "seconds": round(seconds, 4)})
        if self.config.allocation_events:
            self._event(self._body(wl), "Normal", "VniAllocated", f"VNI {v}")

    def _release(self, wl: Workload, cause: str) -> None:
        """The workload stopped asking: its key lets go (no new pod is given the VNI);
        the VNI itself goes into quarantine when no pod that was given it exists."""
        try:
            v = self.store.drop(wl.key)
            if v is not None:
                if self.metrics:
                    self.metrics.releases.labels(cause).inc()
                log.info("%s %s/%s let go of VNI %d (%s)", wl.kind.kind, wl.namespace, wl.name,
                         v, cause, extra={"vni": v, "namespace": wl.namespace, "workload": wl.name,
                                          "uid": wl.uid, "cause": cause})
                self._settle(v, wl.key)
        except VniError as e:
            self._error(self._body(wl), "ApiError", f"release: {e}")
            self.schedule_retry(wl.uid)
            return
        wl.vnis, wl.reason, wl.message = (), "Released", cause

    # -- pods --

    def _top_uid(self, info: PodInfo) -> Optional[str]:
        """The uid of the pod's top-level workload; None while unknown.  Under self._lock."""
        if info.owner_ref is None:
            return None
        uid = info.owner_uid
        if info.owner_ref.get("kind") == "ReplicaSet":
            if uid not in self.rs_owner:
                return None
            return self.rs_owner[uid] or uid
        return uid

    def _stamp_pods_of(self, uids: Set[str]) -> None:
        with self._lock:
            todo: Set[str] = set()
            for u in uids:
                if u in self.pods:
                    todo.add(u)  # a bare pod is its own workload
                todo |= self.pods_by_owner.get(u, set())
                for rs in self.rs_by_deployment.get(u, ()):
                    todo |= self.pods_by_owner.get(rs, set())
        for pid in todo:
            self._stamp_pod(pid)

    def _stamp_pod(self, pod_uid: str) -> None:
        """Write the pod's condition if it must change.  The pod's own events and its
        workload's reconcile stamp it from different threads: a decision and its write
        go together, one writer per pod at a time -- otherwise an older decision
        ("Pending") could land after a newer grant and withdraw it.  A stamp asked for
        while another is in flight is decided again by that writer when it is done."""
        if not self.active:
            return
        while True:
            with self._lock:
                info = self.pods.get(pod_uid)
                if info is None:
                    return
                if info.stamping:
                    info.restamp = True
                    return
                top = pod_uid if info.owner_ref is None else self._top_uid(info)
                wl = self.workloads.get(top) if top else None
                if wl is not None and wl.namespace != info.namespace:
                    # ownerReferences are written by whoever creates the pod; one naming a
                    # workload of another namespace must not get that workload's VNI
                    wl = None
                want = stamp_decision(info.stamped, wl.condition() if wl is not None else None)
                if want is None:
                    return
                info.stamping, info.restamp = True, False
            body = {"status": {"conditions": [{
                "type": POD_CONDITION, "status": want[0], "reason": want[1], "message": want[2],
                "lastTransitionTime": format_time(time.time())}]}}
            written = False
            try:
                self.client.patch(POD.path(info.namespace, info.name, "status"), body, strategic=True)
                written = True
            except KubeError as e:
                if e.not_found:
                    return
                log.warning("cannot stamp pod %s/%s: %s", info.namespace, info.name, e)
                if top:
                    self.schedule_retry(top)
            finally:
                with self._lock:
                    info.stamping = False
                    again, info.restamp = info.restamp, False
                    if written:
                        info.stamped = want
                        if want[0] == "True" and pod_uid in self.pods:
                            self._set_grant(info, pod_uid, grant_condition(want))
            if not (again and written):
                return

    # -- events, errors, retries --

    def _body(self, wl: Workload) -> dict:
        with self._lock:
            kb = self.bodies.get(wl.uid)
        if kb is not None:
            return kb[1]
        return {"metadata": {"namespace": wl.namespace, "name": wl.name, "uid": wl.uid},
                "apiVersion": wl.kind.api_version, "kind": wl.kind.kind}

    def _error(self, body: dict, reason: str, message: str) -> None:
        if self.metrics:
            self.metrics.errors.labels(reason).inc()
        meta = body.get("metadata") or {}
        log.warning("%s %s/%s: %s: %s", body.get("kind"), meta.get("namespace"), meta.get("name"),
                    reason, message, extra={"reason": reason, "namespace": meta.get("namespace"),
                                            "workload": meta.get("name")})
        self._event(body, "Warning", reason, message)

    def _event(self, body: dict, etype: str, reason: str, message: str) -> None:
        """An Event on ``body``'s object, at most one per object and reason a minute."""
        k = ((body.get("metadata") or {}).get("uid") or "", reason)
        now = time.monotonic()
        with self._lock:
            if now - self._events_sent.get(k, -1e9) < EVENT_INTERVAL:
                return
            if len(self._events_sent) > 10000:  # bounded memory: forget old entries
                self._events_sent = {kk: t for kk, t in self._events_sent.items()
                                     if now - t < EVENT_INTERVAL}
            self._events_sent[k] = now
        try:
            self.post_event(body, etype, reason, message[:1024])
        except Exception as e:  # an Event is a courtesy: never fail the work for it
            log.debug("cannot post event: %s", e)

    def _succeeded(self, uid: str) -> None:
        with self._lock:
            self.attempts.pop(uid, None)
            self.pending.pop(uid, None)

    def _forget(self, uid: str) -> None:
        with self._lock:
            self.bodies.pop(uid, None)
            self.attempts.pop(uid, None)
            self.pending.pop(uid, None)

    def schedule_retry(self, uid: str) -> None:
        """Ask the wiring to call :meth:`retry` for ``uid`` later
        (:func:`pycxi.vni.rules.backoff_delay`); one queued retry per uid."""
        with self._lock:
            attempt = self.attempts.get(uid, 0)
            self.attempts[uid] = attempt + 1
            delay = backoff_delay(attempt, random.random())
            due = time.monotonic() + delay
            if self.pending.get(uid, float("inf")) <= due:
                return  # an earlier retry is already queued
            self.pending[uid] = due
        self.requeue(uid, delay)

    def retry(self, uid: str) -> None:
        """A queued retry is due: reconcile the workload or claim ``uid`` again (a claim
        from a fresh GET).  A retry made moot by a success meanwhile does nothing."""
        with self._lock:
            if self.pending.pop(uid, None) is None:
                return
            kb = self.bodies.get(uid)
            wl = self.workloads.get(uid)
        if kb is not None and kb[0] == CLAIM:
            md = kb[1].get("metadata") or {}
            try:
                fresh = self.client.get(CLAIM.path(md.get("namespace"), md.get("name")))
            except KubeError as e:
                if e.not_found:
                    self._forget(uid)
                    return
                raise
            self.on_claim(fresh, False)
            return
        if wl is not None:
            self.reconcile(wl, gone=False)
        else:
            self._forget(uid)

    # -- resync: the safety net for missed events, crashes and restarts --

    def resync(self) -> None:
        """The safety net for missed events, crashes and restarts: decide every ``Vni``
        object's fate with :func:`pycxi.vni.rules.lifecycle_actions` from fresh LISTs
        (``Vni`` objects and key records, then pods, then the holders' kinds: each LIST
        after the one it is judged against) and carry it out."""
        if self.metrics:
            self.metrics.leader.set(1 if self.active else 0)
        if not self.active:
            return
        views = self.store.views()
        t_list = time.monotonic()
        pods = self.client.list(POD.path())
        held: Set[int] = set()
        generic: Set[str] = set()  # controller uids of existing pods that ask
        live_pods = {}
        for pod in pods:
            md = pod.get("metadata") or {}
            live_pods[md.get("uid")] = pod
            held.update(grant_condition(pod_condition(pod)))
            ref = controller_ref(md)
            if ref is not None and parse_request(pod).asks:
                generic.add(ref.get("uid") or "")
            self._index_pod(pod)  # a grant the watch has not delivered yet
        with self._lock:
            self.warm = True
            # pods last seen before the LIST and absent from it are gone: a deletion the
            # watch missed (or one overtaken by a previous resync's re-indexing)
            stale = [u for u, i in self.pods.items() if u not in live_pods and i.seen < t_list]
            for u in stale:
                info = self.pods.pop(u)
                if info.owner_uid:
                    self._discard(self.pods_by_owner, info.owner_uid, u)
                for v in info.grant:
                    self._discard(self.holders, v, u)
        wants: Dict[str, bool] = {}
        groups: Dict[Tuple[Kind, str], List[Tuple[str, dict]]] = {}
        for view, obj in views:
            holder = (obj.get("spec") or {}).get("holder") or {}
            if view.released_at is not None or not view.committed or not holder.get("uid"):
                continue
            if holder.get("kind") == "VniClaim":
                kind: Optional[Kind] = CLAIM
            else:
                kind = self.kinds_by_gvk.get((str(holder.get("apiVersion")), str(holder.get("kind"))))
            if kind == POD:
                pod = live_pods.get(holder["uid"])
                wants[view.key] = pod is not None and workload_wants(POD, pod)
            elif kind is None:  # a generic owner: held while any of its pods asks
                wants[view.key] = holder["uid"] in generic
            else:
                groups.setdefault((kind, holder.get("namespace") or ""), []).append((view.key, holder))
        for (kind, ns), items in groups.items():
            try:
                live = {(o.get("metadata") or {}).get("uid"): o for o in self.client.list(kind.path(ns))}
            except KubeError as e:
                if not e.not_found:  # 404: the resource type is gone (e.g. Volcano removed)
                    log.warning("resync: cannot list %s in %s: %s", kind.plural, ns, e)
                    continue
                live = {}
            for key, holder in items:
                o = live.get(holder["uid"])
                if kind == CLAIM:
                    # a deleting claim lets go through its finalizer (on_claim)
                    wants[key] = o is not None
                else:
                    wants[key] = workload_wants(kind, o)
        actions = lifecycle_actions([v for v, _ in views], wants, held, now=self.clock(),
                                    quarantine=self.config.quarantine,
                                    orphan_age=self.config.orphan_age)
        for a in actions:
            try:
                done = self.store.apply([a])
            except VniError as e:
                log.warning("resync: %s of VNI %d: %s", a.op, a.vni, e)
                continue
            if done and a.op == "drop" and self.metrics:
                self.metrics.releases.labels("resync").inc()
            if done:
                log.info("resync: %s VNI %d (%s)", a.op, a.vni, a.key,
                         extra={"vni": a.vni, "cause": "resync", "op": a.op})
        if self.metrics:
            now = self.clock()
            alloc = sum(1 for v, _ in views if v.released_at is None)
            quar = sum(1 for v, _ in views if v.released_at is not None
                       and now - v.released_at < self.config.quarantine)
            self.metrics.allocated.set(alloc)
            self.metrics.quarantined.set(quar)
            size = sum(hi - lo + 1 for lo, hi in self.config.ranges) - sum(
                1 for x in (0, 1, 10) if any(lo <= x <= hi for lo, hi in self.config.ranges))
            in_range = sum(1 for v, _ in views if any(lo <= v.vni <= hi for lo, hi in self.config.ranges))
            self.metrics.free.set(max(0, size - in_range))
        with self._lock:
            self.resyncs += 1

    def catch_up(self) -> None:
        """Became active: reconcile everything this replica saw while standing by."""
        with self._lock:
            wls = list(self.workloads.values())
            claims = [body for kind, body in self.bodies.values() if kind == CLAIM]
        for body in claims:
            self.on_claim(body, False)
        for wl in wls:
            try:
                self.reconcile(wl, gone=False)
            except Exception:
                log.exception("catch-up of %s failed", wl.uid)
        with self._lock:
            pods = list(self.pods)
        for pid in pods:
            self._stamp_pod(pid)

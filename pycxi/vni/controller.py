"""The VNI controller: the wiring between kopf's watches, the rules and the API.

It gives every workload that asks for one a VNI of its own (or the VNI of a claim in its
namespace), stamps it on the workload's pods, and lets go when the workload completes,
goes away or stops asking.  **What** to do is decided by the pure functions of
:mod:`pycxi.vni.rules` (read that module first); this module only keeps the indexes they
need, calls them, and carries out their answer through
:class:`pycxi.vni.kstore.KubeStore` (atomic creates, preconditioned writes), whose only
state is the API server: restart the controller, or run two, at any time.

Run it with ``python -m pycxi.vni.controller`` (the Deployment in
``pycxi/vni/manifests/`` does).  See docs/vni-service.md.

* **Level-based.**  Every watch event re-derives the wanted state of one workload from
  the object and converges to it (acquire, let go, stamp pods).  A periodic resync
  applies :func:`pycxi.vni.rules.lifecycle_actions` to fresh LISTs, so a missed event, a
  crash or a restart can delay a release but never leak a VNI for good.
* **Holders.**  The pod index maps each VNI to the existing pods that were given it (their
  True ``vni.pycxi.dev/Allocated`` condition).  It is filled from one LIST before
  anything is decided (:meth:`Controller.warm_up`), kept by the pod watch, and updated
  by our own stamp writes at once -- a grant we just wrote must count before the watch
  echoes it, which is why this is our index and not a ``kopf.index``.
* **Top-level owner.**  Objects controlled by a watched kind are ignored (a Deployment's
  ReplicaSets carry its annotations: the original gave them VNIs of their own).  Pods
  are mapped to their top-level owner through the ReplicaSet index.
* **Errors** (exhaustion, missing or foreign claims, API failures) become a False
  condition with a CamelCase reason on the pods (and the claim), a Warning Event on the
  workload, a metric, and a retry with exponential backoff.  Handlers never crash the
  operator.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from pycxi.vni.kube import (API_VERSION, CLAIM_PLURAL, GROUP, POD_CONDITION, VERSION, KubeClient,
                            KubeConfig, KubeError)
from pycxi.vni.kstore import DEFAULT_NAMESPACE, KubeStore, format_time, parse_time
from pycxi.vni.lookup import format_stamp
from pycxi.vni.rules import (CLAIM, POD, REPLICASET, VOLCANO_JOB, WATCHED_KINDS, Kind, Request,
                             controller_ref, grant_condition, is_finished, lifecycle_actions,
                             parse_kinds, parse_request, pod_condition, stamp_decision,
                             workload_wants)
from pycxi.vni.store import (DEFAULT_QUARANTINE, DEFAULT_RANGES, VniError, VniExhausted,
                             format_ranges, parse_ranges)

__all__ = ["Config", "Controller", "Kind", "WATCHED_KINDS", "build_registry", "main",
           "parse_request", "parse_kinds", "is_finished", "POD", "VOLCANO_JOB"]

log = logging.getLogger("pycxi.vni.controller")

#: Keeps a claim (and its VNI) while workloads still redeem it, like pvc-protection.
FINALIZER = f"{GROUP}/claim-protection"
_FALSE = frozenset({"", "false", "no", "0", "off"})


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
        c.volcano = e.get("PYCXI_VNI_VOLCANO", "true").lower() not in _FALSE
        c.leader_election = e.get("PYCXI_VNI_LEADER_ELECTION", "true").lower() not in _FALSE
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


class Metrics:
    """prometheus-client metrics, on their own registry (no global state on import)."""

    def __init__(self) -> None:
        import prometheus_client as pc

        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.allocated = pc.Gauge("pycxi_vni_allocated", "VNIs held by workloads or claims", registry=r)
        self.quarantined = pc.Gauge("pycxi_vni_quarantined", "released VNIs in quarantine", registry=r)
        self.free = pc.Gauge("pycxi_vni_free", "VNIs in the configured ranges that can be handed out", registry=r)
        self.latency = pc.Histogram(
            "pycxi_vni_allocation_seconds", "time from first sight of a workload to its VNI",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.allocations = pc.Counter("pycxi_vni_allocations_total", "VNIs handed out", registry=r)
        self.releases = pc.Counter("pycxi_vni_releases_total", "VNIs released", ["cause"], registry=r)
        self.errors = pc.Counter("pycxi_vni_errors_total", "allocation errors", ["reason"], registry=r)
        self.leader = pc.Gauge("pycxi_vni_leader", "1 while this replica is the active one", registry=r)

    def serve(self, port: int) -> None:
        import prometheus_client as pc

        pc.start_http_server(port, registry=self.registry)


# --- the controller ----------------------------------------------------------------------------


class Controller:
    """The domain logic; kopf only feeds it events (see :func:`build_registry`).
    Every method is blocking and thread-safe; kopf runs them in its thread pool."""

    def __init__(self, config: Config, client: KubeClient, *, metrics: Optional[Metrics] = None,
                 clock: Any = time.time) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self.metrics = metrics
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
        self.bodies: Dict[str, Tuple[Kind, dict]] = {}   # last body of workloads to retry
        self.retry_at: Dict[str, Tuple[float, int]] = {}  # uid -> (when, attempt)
        self._events_sent: Dict[Tuple[str, str], float] = {}
        self._leader = not config.leader_election
        self._stop = threading.Event()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._threads: List[threading.Thread] = []
        self.kinds_by_gvk = {(k.api_version, k.kind): k for k in config.kinds}

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
                self._discard(self.holders, v, uid)  # type: ignore[arg-type]
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

    # -- lifecycle --

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.leader.set(1 if self._leader else 0)
        for target, name in ((self._resync_loop, "vni-resync"), (self._retry_loop, "vni-retry")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.config.leader_election:
            t = threading.Thread(target=self._election_loop, name="vni-leader", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        if self.config.leader_election and self._leader:
            self._resign()

    @property
    def active(self) -> bool:
        """Whether this replica writes.  Without leader election every replica does,
        which is correct (allocation is an atomic create) but doubles the API load."""
        return self._leader

    @staticmethod
    def _discard(index: Dict[str, Set[str]], key: str, value: str) -> None:
        vals = index.get(key)
        if vals is not None:
            vals.discard(value)
            if not vals:
                del index[key]

    # -- events from kopf --

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
                    uid, ns, name, kind, created=parse_time(meta.get("creationTimestamp")) or 0.0)
            wl.request = req
            wl.finished = is_finished(kind, body)
            self.bodies[uid] = (kind, body)
        gone = deleted or bool(meta.get("deletionTimestamp"))
        self.reconcile(wl, gone=gone)

    def _watched_ref(self, ref: dict) -> bool:
        k = self.kinds_by_gvk.get((ref.get("apiVersion"), ref.get("kind")))
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
                        self._discard(self.holders, v, uid)  # type: ignore[arg-type]
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
                info = self.pods[uid] = PodInfo(meta.get("namespace"), meta.get("name"),
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
                kind = Kind(*(ref.get("apiVersion", "").rpartition("/")[::2]),
                            (ref.get("kind") or "").lower() + "s", ref.get("kind") or "")
                wl = self.workloads[uid] = Workload(uid, meta.get("namespace"),
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

    def on_claim(self, body: dict, deleted: bool) -> None:
        meta = body.get("metadata") or {}
        ns, name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
        if not uid:
            return
        if not self.active:
            with self._lock:  # for _catch_up when this replica becomes the leader
                if deleted:
                    self.bodies.pop(uid, None)
                else:
                    self.bodies[uid] = (CLAIM, body)
            return
        key = f"claim:{uid}"
        if deleted:
            # removed by us (already let go) or with its finalizer stripped by hand: the
            # key lets go; pods that were given the VNI keep it (see _settle)
            try:
                self._release_key(key, "claim-deleted")
            except VniError as e:
                log.warning("claim %s/%s: cannot let go yet (%s); the resync will", ns, name, e)
            return
        try:
            if meta.get("deletionTimestamp"):
                users = self._claim_users(ns, name)
                if users:
                    self._claim_status(ns, name, None, "False", "InUse",
                                       f"deleting: still used by {', '.join(sorted(users)[:5])}")
                    self._schedule_retry(uid, ("claim", body))
                    return
                self._release_key(key, "claim-deleted")
                self._remove_finalizer(ns, name, meta)
                log.info("released VNI of deleted claim", extra={"namespace": ns, "claim": name})
                return
            if FINALIZER not in (meta.get("finalizers") or []):
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
                self._event(body, CLAIM, "Normal", "Allocated", f"VNI {v}")
            self.retry_at.pop(uid, None)
        except VniExhausted as e:
            self._claim_status(ns, name, None, "False", "Exhausted", str(e))
            self._error(body, CLAIM, "Exhausted", str(e))
            self._schedule_retry(uid, ("claim", body))
        except (VniError, KubeError) as e:
            self._error(body, CLAIM, "ApiError", str(e))
            self._schedule_retry(uid, ("claim", body))

    def _release_key(self, key: str, cause: str) -> None:
        v = self.store.drop(key)
        if v is not None:
            if self.metrics:
                self.metrics.releases.labels(cause).inc()
            log.info("%s let go of VNI %d (%s)", key, v, cause, extra={"vni": v, "cause": cause})
            self._settle(v, key)

    # -- the reconcile step --

    def reconcile(self, wl: Workload, *, gone: bool) -> None:
        """Converge one workload: hold the VNIs it asks for while it runs, release them
        when it is finished or gone, and stamp the result on its pods."""
        if not self.active:
            return
        if gone or wl.finished or not wl.request.asks:
            cause = "deleted" if gone else "completed" if wl.finished else "unannotated"
            self._release(wl, cause)
            if gone:
                with self._lock:
                    self.workloads.pop(wl.uid, None)
                    self.bodies.pop(wl.uid, None)
                    self.retry_at.pop(wl.uid, None)
            return
        req = wl.request
        before = (wl.vnis, wl.reason)
        try:
            if req.invalid:
                raise _Refused(req.invalid_reason, req.invalid)
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
            with self._lock:
                self.retry_at.pop(wl.uid, None)
        except _Refused as e:
            wl.vnis, wl.reason, wl.message = (), e.reason, e.message
            if before != (wl.vnis, wl.reason):
                self._error(self._body(wl), wl.kind, e.reason, e.message)
            if e.retry:
                self._schedule_retry(wl.uid)
        except VniExhausted as e:
            wl.vnis, wl.reason, wl.message = (), "Exhausted", str(e)
            self._error(self._body(wl), wl.kind, "Exhausted", str(e))
            self._schedule_retry(wl.uid)
        except (VniError, KubeError) as e:
            # keep what the pods already have; only say "not ready" if they have nothing
            if not wl.vnis:
                wl.reason, wl.message = "ApiError", str(e)
            self._error(self._body(wl), wl.kind, "ApiError", str(e))
            self._schedule_retry(wl.uid)
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
        self._event(self._body(wl), wl.kind, "Normal", "VniAllocated", f"VNI {v}")

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
            self._error(self._body(wl), wl.kind, "ApiError", f"release: {e}")
            self._schedule_retry(wl.uid)
            return
        wl.vnis, wl.reason, wl.message = (), "Released", cause

    # -- pods --

    def _top_uid(self, info: PodInfo) -> Optional[str]:
        """The uid of the pod's top-level workload; None while unknown."""
        if info.owner_ref is None:
            return None
        uid = info.owner_uid
        if info.owner_ref.get("kind") == "ReplicaSet":
            with self._lock:
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
        if not self.active:
            return
        with self._lock:
            info = self.pods.get(pod_uid)
            if info is None:
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
        body = {"status": {"conditions": [{
            "type": POD_CONDITION, "status": want[0], "reason": want[1], "message": want[2],
            "lastTransitionTime": format_time(time.time())}]}}
        try:
            self.client.patch(POD.path(info.namespace, info.name, "status"), body, strategic=True)
            with self._lock:
                info.stamped = want
                if want[0] == "True" and pod_uid in self.pods:
                    self._set_grant(info, pod_uid, grant_condition(want))
        except KubeError as e:
            if not e.not_found:
                log.warning("cannot stamp pod %s/%s: %s", info.namespace, info.name, e)
                if top:
                    self._schedule_retry(top)

    # -- claims helpers --

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
                if meta.get("deletionTimestamp") and kind != POD:
                    continue
                ref = controller_ref(meta)
                if ref is not None and self._watched_ref(ref):
                    continue
                if name in parse_request(o).claims and not is_finished(kind, o):
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

    # -- events, errors, retries --

    def _body(self, wl: Workload) -> dict:
        with self._lock:
            kb = self.bodies.get(wl.uid)
        if kb is not None:
            return kb[1]
        return {"metadata": {"namespace": wl.namespace, "name": wl.name, "uid": wl.uid},
                "apiVersion": wl.kind.api_version, "kind": wl.kind.kind}

    def _error(self, body: dict, kind: Kind, reason: str, message: str) -> None:
        if self.metrics:
            self.metrics.errors.labels(reason).inc()
        meta = body.get("metadata") or {}
        log.warning("%s %s/%s: %s: %s", kind.kind, meta.get("namespace"), meta.get("name"),
                    reason, message, extra={"reason": reason, "namespace": meta.get("namespace"),
                                            "workload": meta.get("name")})
        self._event(body, kind, "Warning", reason, message)

    def _event(self, body: dict, kind: Kind, etype: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        k = (meta.get("uid") or "", reason)
        now = time.monotonic()
        with self._lock:
            if now - self._events_sent.get(k, -1e9) < 60:
                return  # one Event per object and reason a minute
            if len(self._events_sent) > 10000:  # bounded memory: forget old entries
                self._events_sent = {kk: t for kk, t in self._events_sent.items() if now - t < 60}
            self._events_sent[k] = now
        ts = format_time(time.time())
        try:
            self.client.create(KubeClient.path("", "v1", "events", ns), {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta.get('name', 'vni')}.", "namespace": ns},
                "involvedObject": {"apiVersion": kind.api_version, "kind": kind.kind,
                                   "namespace": meta.get("namespace"), "name": meta.get("name"),
                                   "uid": meta.get("uid")},
                "type": etype, "reason": reason, "message": message[:1024],
                # legacy-style core/v1 Event: setting reportingComponent would make the
                # API server require the events.k8s.io fields (action, eventTime) too
                "source": {"component": "pycxi-vni-controller", "host": self.config.identity},
                "firstTimestamp": ts, "lastTimestamp": ts, "count": 1})
        except KubeError as e:
            log.debug("cannot post event: %s", e)

    def _schedule_retry(self, uid: str, what: Any = None) -> None:
        with self._lock:
            _, attempt = self.retry_at.get(uid, (0.0, 0))
            delay = min(60.0, 0.5 * (2 ** attempt)) * random.uniform(0.8, 1.2)
            self.retry_at[uid] = (time.monotonic() + delay, attempt + 1)
            if what is not None:
                self.bodies[uid] = (CLAIM, what[1]) if what[0] == "claim" else what

    def _retry_loop(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                due = [uid for uid, (t, _) in self.retry_at.items() if t <= now]
                for uid in due:
                    t, a = self.retry_at[uid]
                    self.retry_at[uid] = (now + 3600, a)  # until the retry reschedules or clears
            for uid in due:
                try:
                    self._retry(uid)
                except Exception:  # never let the loop die
                    log.exception("retry of %s failed", uid)
                    self._schedule_retry(uid)

    def _retry(self, uid: str) -> None:
        with self._lock:
            kb = self.bodies.get(uid)
            wl = self.workloads.get(uid)
        if kb is not None and kb[0] == CLAIM:
            kind, body = kb
            try:
                fresh = self.client.get(CLAIM.path(body["metadata"]["namespace"],
                                                   body["metadata"]["name"]))
            except KubeError as e:
                if e.not_found:
                    with self._lock:
                        self.retry_at.pop(uid, None)
                    return
                raise
            self.on_claim(fresh, False)
            return
        if wl is not None:
            self.reconcile(wl, gone=False)
        else:
            with self._lock:
                self.retry_at.pop(uid, None)

    # -- resync: the safety net for missed events, crashes and restarts --

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.config.resync):
            try:
                self.resync()
            except Exception:
                log.exception("resync failed")

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
                generic.add(ref.get("uid"))
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
                    self._discard(self.holders, v, u)  # type: ignore[arg-type]
        wants: Dict[str, bool] = {}
        groups: Dict[Tuple[Kind, str], List[Tuple[str, dict]]] = {}
        for v, obj in views:
            holder = (obj.get("spec") or {}).get("holder") or {}
            if v.released_at is not None or not v.committed or not holder.get("uid"):
                continue
            if holder.get("kind") == "VniClaim":
                kind: Optional[Kind] = CLAIM
            else:
                kind = self.kinds_by_gvk.get((holder.get("apiVersion"), holder.get("kind")))
            if kind == POD:
                pod = live_pods.get(holder["uid"])
                wants[v.key] = pod is not None and workload_wants(POD, pod)
            elif kind is None:  # a generic owner: held while any of its pods asks
                wants[v.key] = holder["uid"] in generic
            else:
                groups.setdefault((kind, holder.get("namespace") or ""), []).append((v.key, holder))
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

    # -- leader election (optional: for efficiency, not for correctness) --

    def _lease_path(self, name: Optional[str] = None) -> str:
        return KubeClient.path("coordination.k8s.io", "v1", "leases", self.config.namespace, name)

    def _election_loop(self) -> None:
        name = "pycxi-vni-controller"
        period = max(0.2, self.config.lease_duration / 3)
        while not self._stop.is_set():
            try:
                leading = self._try_lead(name)
            except (KubeError, VniError) as e:
                log.warning("leader election: %s", e)
                leading = False
            if leading != self._leader:
                log.info("leadership %s", "acquired" if leading else "lost",
                         extra={"identity": self.config.identity})
                self._leader = leading
                if self.metrics:
                    self.metrics.leader.set(1 if leading else 0)
                if leading:
                    self._catch_up()
            self._stop.wait(period)

    def _try_lead(self, name: str) -> bool:
        now = time.time()
        me = self.config.identity
        spec = {"holderIdentity": me, "leaseDurationSeconds": int(self.config.lease_duration),
                "renewTime": format_time(now)}
        try:
            lease = self.client.get(self._lease_path(name))
        except KubeError as e:
            if not e.not_found:
                raise
            try:
                self.client.create(self._lease_path(), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": self.config.namespace},
                    "spec": {**spec, "acquireTime": format_time(now)}})
                return True
            except KubeError as e2:
                if e2.conflict:
                    return False
                raise
        s = lease.get("spec") or {}
        renewed = parse_time(s.get("renewTime")) or 0.0
        dur = float(s.get("leaseDurationSeconds") or self.config.lease_duration)
        if s.get("holderIdentity") != me and now < renewed + dur and s.get("holderIdentity"):
            return False
        try:
            self.client.patch(self._lease_path(name), {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": spec if s.get("holderIdentity") == me else {**spec, "acquireTime": format_time(now)}})
            return True
        except KubeError as e:
            if e.conflict:
                return False
            raise

    def _resign(self) -> None:
        try:
            self.client.patch(self._lease_path("pycxi-vni-controller"),
                              {"spec": {"holderIdentity": None}})
        except KubeError:
            pass

    def _catch_up(self) -> None:
        """Became active: reconcile everything this replica saw while standing by."""
        with self._lock:
            wls = list(self.workloads.values())
            bodies = [kb for kb in self.bodies.values() if kb[0] == CLAIM]
        for kind, body in bodies:
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


class _Refused(Exception):
    def __init__(self, reason: str, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


# --- kopf wiring -----------------------------------------------------------------------------------


def build_registry(ctrl: Controller) -> Any:
    """kopf handlers for ``ctrl`` on a private registry (importing this module
    registers nothing)."""
    import kopf

    reg = kopf.OperatorRegistry()

    def _deleted(type: Optional[str], body: Any) -> bool:
        return type == "DELETED"

    for kind in ctrl.config.kinds:
        if kind == REPLICASET:
            @kopf.on.event(kind.group, kind.version, kind.plural, registry=reg)
            def rs_event(type: Optional[str], body: Any, **_: Any) -> None:
                ctrl.on_replicaset(dict(body), _deleted(type, body))
        else:
            def make(k: Kind) -> Any:
                def wl_event(type: Optional[str], body: Any, **_: Any) -> None:
                    ctrl.on_workload(k, dict(body), _deleted(type, body))
                wl_event.__name__ = f"event_{k.group or 'core'}_{k.plural}".replace(".", "_")
                return wl_event
            kopf.on.event(kind.group, kind.version, kind.plural, registry=reg,
                          id=f"vni-{kind.group or 'core'}-{kind.plural}")(make(kind))

    @kopf.on.event(GROUP, VERSION, CLAIM_PLURAL, registry=reg)
    def claim_event(type: Optional[str], body: Any, **_: Any) -> None:
        ctrl.on_claim(dict(body), _deleted(type, body))

    @kopf.on.login(registry=reg)
    def login(**_: Any) -> Any:
        # one configuration and authentication path: the same KubeConfig as our client
        # (re-invoked by kopf on a 401, which re-reads a rotated service-account token)
        return connection_info(ctrl.client.config)

    @kopf.on.startup(registry=reg)
    def startup(settings: Any, **_: Any) -> None:
        # kopf's own marker must differ from ours: kopf strips its finalizer on deletion
        settings.persistence.finalizer = f"operator.{GROUP}/kopf-finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=f"operator.{GROUP}")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=f"operator.{GROUP}")
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = 16
        settings.batching.batch_window = 0.05
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 30
        ctrl.warm_up()
        ctrl.start()

    @kopf.on.cleanup(registry=reg)
    def cleanup(**_: Any) -> None:
        ctrl.stop()

    return reg


def connection_info(cfg: KubeConfig) -> Any:
    """kopf's credentials from our :class:`KubeConfig`."""
    import kopf

    return kopf.ConnectionInfo(
        server=cfg.server, token=cfg.bearer(), scheme="Bearer" if cfg.bearer() else None,
        ca_path=cfg.ca_file, ca_data=cfg.ca_data.encode() if cfg.ca_data and not cfg.ca_file else None,
        insecure=cfg.insecure or None,
        certificate_path=None if cfg.cert_data else cfg.cert_file, certificate_data=cfg.cert_data,
        private_key_path=None if cfg.key_data else cfg.key_file, private_key_data=cfg.key_data,
        default_namespace=cfg.namespace)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pycxi.vni.controller",
                                 description="The pycxi VNI controller (kopf).")
    ap.add_argument("--kubeconfig", help="default: $KUBECONFIG, then in-cluster")
    ap.add_argument("--ranges", help="VNI ranges, e.g. 1024-65535 ($PYCXI_VNI_RANGES)")
    ap.add_argument("--quarantine", type=float, help="seconds ($PYCXI_VNI_QUARANTINE)")
    ap.add_argument("--namespace", help="for key records and the leader Lease")
    ap.add_argument("--resync", type=float, help="seconds between full checks")
    ap.add_argument("--orphan-age", type=float, help="seconds before an uncommitted Vni is reclaimed")
    ap.add_argument("--metrics-port", type=int, help="0 disables ($PYCXI_VNI_METRICS_PORT)")
    ap.add_argument("--no-leader-election", action="store_true",
                    help="every replica writes (correct, but more API traffic)")
    ap.add_argument("--lease-duration", type=float, help="leader Lease duration, seconds")
    ap.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    ap.add_argument("--log-format", choices=("plain", "json"), default="json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    cfg = Config.from_env()
    if args.ranges:
        cfg.ranges = parse_ranges(args.ranges)
    if args.quarantine is not None:
        cfg.quarantine = args.quarantine
    if args.namespace:
        cfg.namespace = args.namespace
    if args.resync is not None:
        cfg.resync = args.resync
    if args.metrics_port is not None:
        cfg.metrics_port = args.metrics_port
    if args.orphan_age is not None:
        cfg.orphan_age = args.orphan_age
    if args.lease_duration:
        cfg.lease_duration = args.lease_duration
    if args.no_leader_election:
        cfg.leader_election = False

    import asyncio

    import kopf

    # The application, not the library, configures logging.
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_format == "json"
                   else kopf.LogFormat.FULL, log_prefix=False)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    client = KubeClient(KubeConfig.load(args.kubeconfig), timeout=10.0, user_agent="pycxi-vni-controller")
    metrics = Metrics()
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    ctrl = Controller(cfg, client, metrics=metrics)
    log.info("starting", extra={"ranges": format_ranges(cfg.ranges), "quarantine": cfg.quarantine,
                                "identity": cfg.identity, "leader_election": cfg.leader_election})
    reg = build_registry(ctrl)
    asyncio.run(kopf.operator(registry=reg, clusterwide=True, standalone=True,
                              liveness_endpoint=args.liveness))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

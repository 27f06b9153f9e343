"""The VNI controller: kopf's wiring around :class:`pycxi.vni.reconciler.Reconciler`.

Run it with ``python -m pycxi.vni.controller`` (the Deployment in
``pycxi/vni/manifests/`` does).  docs/vni-service.md ("Architecture") says what kopf
does here and what we do ourselves, and why.  In short:

* kopf watches every watched kind, pods and claims and feeds each event to the
  reconciler through ``kopf.on.event`` handlers (level-based: nothing is stored in the
  tenants' objects, no finalizer is added to them, no extra request per object);
  the handlers hand the event to :class:`KeyQueue`, whose worker threads run the
  reconciler, one call at a time per object, the newest state first;
* retries are requeued on kopf's event loop (``loop.call_later``) with the delay of
  :func:`pycxi.vni.rules.backoff_delay`, then run through the same queue;
* the resync and the Lease election are asyncio tasks on kopf's loop, started by
  ``kopf.on.startup`` and stopped by ``kopf.on.cleanup``;
* Events are posted by kopf's own poster (``kopf.event``);
* kopf logs in with the credentials of our :class:`~pycxi.vni.kube.KubeConfig`
  (``kopf.on.login``), the one configuration the controller's own client uses too.
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import logging
import os
import queue
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, TypeVar

from pycxi.vni.kstore import format_time, parse_time
from pycxi.vni.kube import CLAIM_PLURAL, GROUP, VERSION, KubeClient, KubeConfig, KubeError
from pycxi.vni.lookup import FALSE_VALUES
from pycxi.vni.metrics import Metrics
from pycxi.vni.reconciler import Config, Reconciler
from pycxi.vni.rules import REPLICASET, Kind
from pycxi.vni.store import VniError, format_ranges, parse_ranges

__all__ = ["Config", "KeyQueue", "Lease", "build_registry", "connection_info", "main",
           "no_diff_base", "parse_ranges", "run_operator"]

log = logging.getLogger("pycxi.vni.controller")
_T = TypeVar("_T")


class Lease:
    """Leader election on a ``coordination.k8s.io`` Lease (blocking calls).  For
    efficiency only: every write of the reconciler is correct without a leader."""

    NAME = "pycxi-vni-controller"

    def __init__(self, client: KubeClient, namespace: str, identity: str,
                 duration: float) -> None:
        self.client, self.namespace, self.identity, self.duration = client, namespace, identity, duration

    def _path(self, name: Optional[str] = None) -> str:
        return KubeClient.path("coordination.k8s.io", "v1", "leases", self.namespace, name)

    def try_lead(self) -> bool:
        """Take or renew the Lease; whether this replica holds it now."""
        now = time.time()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
                "renewTime": format_time(now)}
        try:
            lease = self.client.get(self._path(self.NAME))
        except KubeError as e:
            if not e.not_found:
                raise
            try:
                self.client.create(self._path(), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.NAME, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": format_time(now)}})
                return True
            except KubeError as e2:
                if e2.conflict:
                    return False
                raise
        s = lease.get("spec") or {}
        renewed = parse_time(s.get("renewTime")) or 0.0
        dur = float(s.get("leaseDurationSeconds") or self.duration)
        holder = s.get("holderIdentity")
        if holder and holder != self.identity and now < renewed + dur:
            return False
        try:
            # the resourceVersion precondition: of two replicas taking an expired Lease,
            # exactly one wins
            self.client.patch(self._path(self.NAME), {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": spec if holder == self.identity else {**spec, "acquireTime": format_time(now)}})
            return True
        except KubeError as e:
            if e.conflict:
                return False
            raise

    def resign(self) -> None:
        try:
            self.client.patch(self._path(self.NAME), {"spec": {"holderIdentity": None}})
        except KubeError:
            pass


class KeyQueue:
    """Work per key (an object's uid) for a few worker threads: at most one call per key
    runs at a time, in order, and a call queued behind a running one is replaced by a
    newer one for the same key (the handlers are level-based: the newest state is all
    that counts).

    Why not kopf's synchronous handlers: kopf runs one by a round trip through its
    thread pool that the object's worker awaits, ~0.5 ms of CPU per event on our
    machines (half of kopf's whole cost per event); handing the event over from an
    async handler costs a few µs.  Why not ``executor.submit``: its future and
    idle-thread bookkeeping were a tenth of the event loop's time in a burst; a
    ``SimpleQueue`` of keys is what a work queue needs.  kopf's per-object ordering is
    kept by the key."""

    def __init__(self, workers: int = 8) -> None:
        self._lock = threading.Lock()
        self._next: Dict[str, Tuple[Callable[..., None], Tuple[Any, ...]]] = {}
        self._running: Set[str] = set()
        self._keys: "queue.SimpleQueue[Optional[str]]" = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"vni-worker-{i}", daemon=True)
                         for i in range(workers)]
        self._closed = False
        for t in self._threads:
            t.start()

    def put(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._next[key] = (fn, args)
            if key in self._running:
                return  # the worker draining this key takes it next
            self._running.add(key)
        self._keys.put(key)

    def __len__(self) -> int:
        """Keys waiting or running."""
        with self._lock:
            return len(self._running)

    def close(self, timeout: float = 10.0) -> None:
        """Take no more work; let the workers finish what they run (not what waits)."""
        with self._lock:
            self._closed = True
            self._next.clear()
        for _ in self._threads:
            self._keys.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            key = self._keys.get()
            if key is None:
                return
            while True:
                with self._lock:
                    item = self._next.pop(key, None)
                    if item is None:
                        self._running.discard(key)
                        break
                fn, args = item
                try:
                    fn(*args)
                except Exception:  # as kopf does for event handlers: log, go on
                    log.exception("handling %s failed", key)


class _Runtime:
    """What the wiring holds between kopf's callbacks: the loop, kopf's thread pool,
    our tasks, and a context to post Events from outside kopf's per-object tasks."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.executor: Any = None
        self.tasks: List["asyncio.Task[None]"] = []
        self.event_ctx: Optional[contextvars.Context] = None
        self.queue: Optional[KeyQueue] = None

    def run(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        """``fn(*args)`` in kopf's thread pool, in a copy of the current context (as
        kopf runs sync handlers: kopf.event needs its context variables)."""
        assert self.loop is not None
        return self.loop.run_in_executor(self.executor, contextvars.copy_context().run, fn, *args)


def build_registry(rec: Reconciler, lease: Optional[Lease] = None) -> Any:
    """kopf handlers for ``rec`` on a private registry (importing this module registers
    nothing); sets ``rec``'s requeue and Event hooks."""
    import kopf

    reg = kopf.OperatorRegistry()
    rt = _Runtime()

    # -- the hooks of the reconciler --

    def _retry(uid: str) -> None:  # in the thread pool
        try:
            rec.retry(uid)
        except Exception:  # never lose a key: log and back off further
            log.exception("retry of %s failed", uid)
            rec.schedule_retry(uid)

    def _fire(uid: str) -> None:  # on the loop
        if rt.queue is not None:
            rt.queue.put("retry:" + uid, _retry, uid)

    def requeue(uid: str, delay: float) -> None:  # from any thread
        loop = rt.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.call_later(delay, _fire, uid))

    def post_event(body: dict, type: str, reason: str, message: str) -> None:
        try:
            kopf.event(body, type=type, reason=reason, message=message)
        except LookupError:
            # kopf's event queue lives in the context of its per-object tasks; the
            # resync and the election run outside them: post in a handler's context
            if rt.event_ctx is None:
                log.debug("no Event before the first handler ran: %s %s", reason, message)
                return
            rt.event_ctx.copy().run(kopf.event, body, type=type, reason=reason, message=message)

    rec.requeue, rec.post_event = requeue, post_event

    def _seen() -> None:
        if rt.event_ctx is None:
            rt.event_ctx = contextvars.copy_context()

    # -- the watches: level-based event handlers (see the module docstring) --

    def _deleted(type: Optional[str]) -> bool:
        return type == "DELETED"

    def _put(body: Any, fn: Callable[..., None], *args: Any) -> None:
        _seen()
        uid = (body.get("metadata") or {}).get("uid")
        if uid and rt.queue is not None:
            rt.queue.put(uid, fn, *args)

    def make(k: Kind) -> Callable[..., Awaitable[None]]:
        if k == REPLICASET:
            async def handler(type: Optional[str], body: Any, **_: Any) -> None:
                _put(body, rec.on_replicaset, dict(body), _deleted(type))
        else:
            async def handler(type: Optional[str], body: Any, **_: Any) -> None:
                _put(body, rec.on_workload, k, dict(body), _deleted(type))
        handler.__name__ = f"event_{k.group or 'core'}_{k.plural}".replace(".", "_")
        return handler

    for kind in rec.config.kinds:
        kopf.on.event(kind.group, kind.version, kind.plural, registry=reg,
                      id=f"vni-{kind.group or 'core'}-{kind.plural}")(make(kind))

    @kopf.on.event(GROUP, VERSION, CLAIM_PLURAL, registry=reg)
    async def claim_event(type: Optional[str], body: Any, **_: Any) -> None:
        _put(body, rec.on_claim, dict(body), _deleted(type))

    # -- operator-level: login, startup, cleanup --

    @kopf.on.login(registry=reg)
    def login(**_: Any) -> Any:
        # one configuration and authentication path: the same KubeConfig as our client
        # (re-invoked by kopf on a 401, which re-reads a rotated service-account token)
        return connection_info(rec.client.config)

    @kopf.on.startup(registry=reg)
    async def startup(settings: Any, **_: Any) -> None:
        # Defensive: no handler here stores progress or needs kopf's finalizer, but if
        # one ever did, kopf's markers must differ from ours (it strips its finalizer).
        settings.persistence.finalizer = f"operator.{GROUP}/kopf-finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=f"operator.{GROUP}")
        # Nothing here reads a diff (level-based handlers only), but kopf builds the
        # diff base of every event anyway: a deep copy of the body, a third of its cost
        # per event.  Build none.
        settings.persistence.diffbase_storage = no_diff_base()
        settings.posting.level = logging.WARNING  # kopf's own log lines as Events
        settings.posting.reporting_component = "pycxi-vni-controller"
        settings.posting.reporting_instance = rec.config.identity
        settings.execution.max_workers = 16
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 30
        rt.loop = asyncio.get_running_loop()
        rt.executor = settings.execution.executor
        rt.queue = KeyQueue()
        # the pod index is filled before any handler runs (kopf starts the watches
        # after the startup handlers)
        await rt.run(rec.warm_up)
        rec.set_active(rec.active)
        rt.tasks.append(asyncio.create_task(_resync_loop(rec, rt), name="vni-resync"))
        if lease is not None:
            rt.tasks.append(asyncio.create_task(_lead_loop(rec, lease, rt), name="vni-leader"))

    @kopf.on.cleanup(registry=reg)
    async def cleanup(**_: Any) -> None:
        for t in rt.tasks:
            t.cancel()
        await asyncio.gather(*rt.tasks, return_exceptions=True)
        if rt.queue is not None:
            await rt.run(rt.queue.close)
        if lease is not None and rec.active:
            await rt.run(lease.resign)

    return reg


async def _resync_loop(rec: Reconciler, rt: _Runtime) -> None:
    while True:
        await asyncio.sleep(rec.config.resync)
        try:
            await rt.run(rec.resync)
        except Exception:
            log.exception("resync failed")


async def _lead_loop(rec: Reconciler, lease: Lease, rt: _Runtime) -> None:
    period = max(0.2, lease.duration / 3)
    while True:
        try:
            leading = await rt.run(lease.try_lead)
        except (KubeError, VniError) as e:
            log.warning("leader election: %s", e)
            leading = False
        if leading != rec.active:
            log.info("leadership %s", "acquired" if leading else "lost",
                     extra={"identity": lease.identity})
            rec.set_active(leading)
            if leading:
                try:
                    await rt.run(rec.catch_up)
                except Exception:
                    log.exception("catch-up failed")
        await asyncio.sleep(period)


def no_diff_base() -> Any:
    """A kopf diff-base storage that builds nothing (see docs/vni-service.md)."""
    import kopf

    class NoDiffBase(kopf.DiffBaseStorage):
        """kopf's diff base for change detection, which no handler here uses."""

        def build(self, *, body: Any, extra_fields: Any = None) -> Any:
            return kopf.BodyEssence()

        def fetch(self, *, body: Any) -> Any:
            return None

        def store(self, *, body: Any, patch: Any, essence: Any) -> None:
            pass

    return NoDiffBase()


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
    ap.add_argument("--allocation-events", action="store_true",
                    help="also post a Normal Event for every allocation (one more API write per "
                         "workload; Warnings are always posted)")
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
    if args.allocation_events:
        cfg.allocation_events = True

    import kopf

    # The application, not the library, configures logging.
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_format == "json"
                   else kopf.LogFormat.FULL, log_prefix=False)
    if not args.verbose:
        # kopf says "Handler ... succeeded." at INFO for every event of every watched
        # object: noise, and a tenth of its cost per event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    client = KubeClient(KubeConfig.load(args.kubeconfig), timeout=10.0, user_agent="pycxi-vni-controller")
    metrics = Metrics()
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    rec = Reconciler(cfg, client, metrics=metrics)
    lease = (Lease(client, cfg.namespace, cfg.identity, cfg.lease_duration)
             if cfg.leader_election else None)
    log.info("starting", extra={"ranges": format_ranges(cfg.ranges), "quarantine": cfg.quarantine,
                                "identity": cfg.identity, "leader_election": cfg.leader_election})
    reg = build_registry(rec, lease)
    run_operator(kopf.operator(registry=reg, clusterwide=True, standalone=True,
                           liveness_endpoint=args.liveness))
    return 0


def run_operator(coro: Awaitable[None]) -> None:
    """Run kopf's operator ``coro`` as the controller does: on uvloop when it is installed
    (as kopf's own CLI does; it comes with the ``controller`` extra) unless
    ``PYCXI_VNI_UVLOOP`` is false, otherwise on asyncio's loop; with the GC tuned."""
    # A burst of events makes many short-lived objects (kopf's per-event views, decoded
    # JSON) and few long-lived ones: with the default gen-0 threshold (700) the cyclic
    # GC ran ~600 times for 3,000 Jobs, ~10 % of the controller's CPU; 50,000 makes it
    # ~10 times.  The objects of the imported modules are frozen out of every pass.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    factory = None
    if os.environ.get("PYCXI_VNI_UVLOOP", "true").lower() not in FALSE_VALUES:
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:
            pass
    if factory is not None and hasattr(asyncio, "Runner"):  # 3.11+
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(coro)  # type: ignore[arg-type]
    else:
        asyncio.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())

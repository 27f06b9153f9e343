"""The Kubernetes VNI store: :class:`KubeStore`, the :class:`~pycxi.vni.store.VniStore`
rules over objects in the API server (etcd).  Standard library only.

Objects
-------
``Vni`` (``vnis.vni.pycxi.dev``, cluster-scoped), **named by the VNI**: ``vni-4242``.
    Holding VNI 4242 *is* the existence of ``vni-4242``.  The API server creates an
    object name at most once, atomically, so two allocators (threads, processes,
    controller replicas) can never both hold 4242: the second create gets 409
    AlreadyExists and moves on to the next candidate.  Release sets
    ``status.releasedAt``; the object stays (so nobody can create it) until its
    quarantine is over, and is then deleted with a uid + resourceVersion precondition
    by the next allocator that wants the number, so a late deleter can never remove a
    newer holder's object.
Key record: a ``Lease`` ``vnikey-<sha256(key)[:40]>`` in the store's namespace.
    The one place that says which VNI a key holds (``spec.holderIdentity: vni-4242``).
    It is created only *after* the ``Vni``, and atomically too, so two allocators
    racing on the same key agree: the loser deletes its own, never-announced ``Vni``
    and answers with the winner's.  Release deletes the record, then quarantines the
    ``Vni``.  A crash between two steps leaves an allocated ``Vni`` that no record
    points to; :meth:`KubeStore.gc` (run by the controller) quarantines such orphans
    after :data:`ORPHAN_AGE` s, and :meth:`KubeStore.list` hides them.
Cursor: derived, not stored.  Every ``Vni`` carries its creation time (wall clock, ns)
    in an annotation; a handle starts its round-robin search after the newest one and
    then keeps its own cursor.  Released ``Vni`` objects stay until reused, so the
    newest object is the last VNI handed out.  The cursor only spreads allocations;
    a stale one costs a few 409s, never a duplicate.

Orphans are judged from one snapshot (a LIST of ``Vni`` objects, then of records) and
quarantined with a resourceVersion precondition on the version judged; an allocator
whose two creates took longer than ``orphan_age``/3 confirms its ``Vni`` with the
version it created, so it and the gc cannot both win.

Requests: acquire of a held key 1 (GET record); a new allocation 3 (GET, create Vni,
create record; 2 with ``probably_new``) plus one 409 per race lost to another handle
(threads of one handle do not race each other).  Release by the handle that allocated:
2 (DELETE the record with the uid it created, quarantine the Vni with the
resourceVersion it created: both preconditioned, so a record or Vni replaced meanwhile
is a 409 and is looked up -- 4 requests, as for any other handle).
"""
from __future__ import annotations

import datetime
import hashlib
import random
import threading
import time
from typing import Any, Callable, Container, Dict, Iterable, List, Optional, Sequence, Tuple

from pycxi.vni.kube import (API_VERSION, GROUP, VERSION, VNI_PLURAL, KubeClient, KubeConfig,
                            KubeError, vni_name)
from pycxi.vni.store import (DEFAULT_QUARANTINE, DEFAULT_RANGES, STATE_ALLOCATED,
                             STATE_QUARANTINED, Allocation, VniError, VniExhausted, VniStore,
                             exhausted_message, in_ranges, quarantine_over)
from pycxi.vni.rules import Action, VniView, lifecycle_actions, next_candidate

__all__ = ["KubeStore", "VniApiError", "DEFAULT_NAMESPACE", "ORPHAN_AGE", "key_hash",
           "format_time", "parse_time"]

DEFAULT_NAMESPACE = "pycxi-vni"
#: An allocated Vni no key record points to, older than this, is an orphan of a crash.
ORPHAN_AGE = 30.0

LABEL_KEY_HASH = f"{GROUP}/key-hash"
LABEL_ROLE = f"{GROUP}/role"
ANN_KEY = f"{GROUP}/key"
ANN_CREATED = f"{GROUP}/created-ns"
ANN_COMMITTED = f"{GROUP}/committed"
MANAGED_BY = {"app.kubernetes.io/managed-by": "pycxi-vni"}
LEASES = ("coordination.k8s.io", "v1", "leases")
STATE_PENDING = "pending"  # a create of ours in flight (this handle only)


class VniApiError(VniError):
    """The API server failed or could not be reached."""


def key_hash(key: str) -> str:
    # label values are <= 63 chars of [A-Za-z0-9._-]: a hash, the key is in the spec
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def format_time(t: float) -> str:
    """Epoch seconds -> RFC 3339 with microseconds (the API's MicroTime format)."""
    d = datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_EPOCH = datetime.datetime(1970, 1, 1)


def parse_time(s: Any) -> Optional[float]:
    if not isinstance(s, str) or not s:
        return None
    try:
        main, _, frac = s.rstrip("Z").partition(".")
        # the API's layout exactly, YYYY-MM-DDTHH:MM:SS; fromisoformat checks the fields
        # (strptime did too, at ~40 µs a call: it ran on every event of the controller)
        if len(main) != 19 or main[10] != "T":
            return None
        secs = (datetime.datetime.fromisoformat(main) - _EPOCH).total_seconds()
        return secs + (int(frac.ljust(6, "0")[:6]) / 1e6 if frac else 0.0)
    except ValueError:
        return None


class _Seen:
    """What this handle last saw of one ``Vni`` object (``key``: set for the ones it
    created, whose version ``rv`` it knows)."""
    __slots__ = ("state", "released", "uid", "rv", "key")

    def __init__(self, state: str, released: Optional[float] = None,
                 uid: Optional[str] = None, rv: Optional[str] = None,
                 key: Optional[str] = None) -> None:
        self.state, self.released, self.uid, self.rv, self.key = state, released, uid, rv, key


class _Held:
    """A predicate as a container, for the rules' ``held`` argument."""
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[int], bool]) -> None:
        self.fn = fn

    def __contains__(self, v: object) -> bool:
        return isinstance(v, int) and self.fn(v)


class _Known:
    """What a handle saw, as the rules' ``known`` mapping (looked up lazily: the search
    usually stops at the first candidate).  Pending creates of our own threads count as
    objects that are not released."""
    __slots__ = ("seen",)

    def __init__(self, seen: Dict[int, "_Seen"]) -> None:
        self.seen = seen

    def get(self, v: int) -> Optional[Tuple[bool, Optional[float]]]:
        st = self.seen.get(v)
        if st is None:
            return None
        return True, (st.released if st.state == STATE_QUARANTINED else None)


class KubeStore(VniStore):
    """VNI allocation over ``Vni`` objects; see the module docstring.

    ``client``: a :class:`KubeClient` (or ``kubeconfig`` to build one).  ``namespace``:
    where the key records and the cursor live (the controller's namespace).
    Thread-safe; any number of handles, in any number of processes, may share one API
    server.
    """

    def __init__(self, ranges: Iterable[Sequence[int]] = DEFAULT_RANGES,
                 quarantine: float = DEFAULT_QUARANTINE,
                 clock: Callable[[], float] = time.time, *,
                 client: Optional[KubeClient] = None, kubeconfig: Optional[str] = None,
                 namespace: str = DEFAULT_NAMESPACE, timeout: float = 10.0,
                 orphan_age: float = ORPHAN_AGE,
                 in_use: Optional[Callable[[int], bool]] = None) -> None:
        super().__init__(ranges, quarantine, clock)
        self.orphan_age = orphan_age
        #: whether an existing pod was given the VNI (the controller's pod index): such a
        #: VNI is never reused, whatever its Vni object says
        self.in_use: Callable[[int], bool] = in_use or (lambda v: False)
        self.client = client or KubeClient(KubeConfig.load(kubeconfig), timeout=timeout)
        self.namespace = namespace
        self._seen: Optional[Dict[int, _Seen]] = None
        #: key -> (uid, VNI) of key records this handle created: records are never
        #: modified, so a delete preconditioned on that uid needs no look-up first
        self._records: Dict[str, Tuple[str, int]] = {}
        self._cursor: Optional[int] = None
        self._lock = threading.RLock()
        self._closed = False

    # --- paths ------------------------------------------------------------------------

    @staticmethod
    def _vni_path(v: Optional[int] = None, sub: Optional[str] = None) -> str:
        return KubeClient.path(GROUP, VERSION, VNI_PLURAL, None,
                               vni_name(v) if v is not None else None, sub)

    def _lease_path(self, name: Optional[str] = None) -> str:
        return KubeClient.path(*LEASES, self.namespace, name)

    @staticmethod
    def _record_name(key: str) -> str:
        return f"vnikey-{key_hash(key)}"

    def _call(self, fn: Callable[..., dict], *a: Any, **kw: Any) -> dict:
        if self._closed:
            raise VniError("the store is closed")
        try:
            return fn(*a, **kw)
        except KubeError as e:
            if e.status in (404, 409):
                raise
            raise VniApiError(f"Kubernetes API: {e}") from e

    # --- the interface ------------------------------------------------------------------

    def acquire(self, key: str, owner: Optional[str] = None, *,
                holder: Optional[Dict[str, Any]] = None) -> int:
        """As :meth:`VniStore.acquire`; ``holder`` (the controller's owner reference:
        apiVersion, kind, namespace, name, uid) is recorded in ``spec.holder``."""
        return self.acquire_new(key, owner, holder=holder)[0]

    def acquire_new(self, key: str, owner: Optional[str] = None, *,
                    holder: Optional[Dict[str, Any]] = None,
                    probably_new: bool = False) -> Tuple[int, bool]:
        """:meth:`acquire`, also saying whether this call allocated the VNI (False: the
        key held it already, or a racing allocator committed first).  ``probably_new``:
        skip the first look-up of the key's record (a key first seen after this handle
        started); if the key did hold one, the record's create answers 409 and the
        loser's path below finds it, so this saves a request and costs no safety."""
        key = self._check_key(key)
        name = self._record_name(key)
        for attempt in range(8):
            v = None if (probably_new and not attempt) else self.get(key)
            if v is not None:
                return v, False
            t0 = time.monotonic()
            v, obj = self._allocate(key, owner, holder)
            try:
                record = self._call(self.client.create, self._lease_path(), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": self.namespace,
                                 "labels": {**MANAGED_BY, LABEL_ROLE: "key"},
                                 "annotations": {ANN_KEY: key}},
                    "spec": {"holderIdentity": vni_name(v),
                             "acquireTime": format_time(time.time())}})
            except KubeError as e:
                # 409: another allocator committed this key first.  Our Vni was never
                # handed to anyone: delete exactly it, then answer with theirs.
                self._delete_vni(v, obj["metadata"].get("uid"), None)
                if not e.conflict:
                    raise VniApiError(str(e)) from e
                continue
            if time.monotonic() - t0 > self.orphan_age / 3 and not self._confirm(v, obj, record):
                continue  # too slow: gc took our Vni for an orphan; allocate anew
            uid = (record.get("metadata") or {}).get("uid")
            if uid:
                with self._lock:
                    if len(self._records) >= 1 << 16:  # keys let go by other handles
                        self._records.clear()  # (a cache: forgetting costs a look-up)
                    self._records[key] = (uid, v)
            return v, True
        raise VniApiError(f"could not settle the allocation of {key!r}")

    def _confirm(self, v: int, obj: dict, record: dict) -> bool:
        """After a slow commit: make sure gc has not quarantined our Vni meanwhile.  The
        gc quarantines with the resourceVersion it saw, and this touch needs the version
        we created, so exactly one of the two wins.  (A fast commit needs no check: gc
        only reclaims Vni objects older than ``orphan_age``, by the API server's
        creationTimestamp and its own clock; clocks within orphan_age/3 suffice.)"""
        try:
            self._call(self.client.patch, self._vni_path(v), {"metadata": {
                "resourceVersion": obj["metadata"].get("resourceVersion"),
                "annotations": {ANN_COMMITTED: "true"}}})
            return True
        except KubeError as e:
            if e.status not in (404, 409):
                raise VniApiError(str(e)) from e
        md = record.get("metadata") or {}
        try:
            self._call(self.client.delete, self._lease_path(md.get("name")), uid=md.get("uid"))
        except KubeError:
            pass
        return False

    def release(self, key: str) -> bool:
        key = self._check_key(key)
        v = self._take_record(key)
        if v is None:
            return False  # no record, or another handle released it first
        # From here the key holds nothing.  A crash before the next step leaves an
        # allocated Vni without a record: gc() quarantines it after ORPHAN_AGE.
        if v >= 0:
            self._quarantine(v, self.clock(), dropped=key)
        return True

    def _take_record(self, key: str) -> Optional[int]:
        """Delete ``key``'s record, exactly the version read (a uid precondition): returns
        the VNI it pointed to (-1: none), None if there was no record or another handle
        deleted it first.  A record this handle created is deleted without a look-up
        (records are never modified; a 409 means it is another one: look it up)."""
        name = self._record_name(key)
        with self._lock:
            known = self._records.pop(key, None)
        if known is not None:
            try:
                self._call(self.client.delete, self._lease_path(name), uid=known[0])
                return known[1]
            except KubeError as e:
                if e.status not in (404, 409):
                    raise VniApiError(str(e)) from e
                if e.not_found:
                    return None
        try:
            record = self._call(self.client.get, self._lease_path(name))
        except KubeError as e:
            if e.not_found:
                return None
            raise VniApiError(str(e)) from e
        h = (record.get("spec") or {}).get("holderIdentity") or ""
        try:
            self._call(self.client.delete, self._lease_path(name),
                       uid=(record.get("metadata") or {}).get("uid"))
        except KubeError as e:
            if e.status in (404, 409):
                return None
            raise VniApiError(str(e)) from e
        return int(h[4:]) if h.startswith("vni-") and h[4:].isdigit() else -1

    def get(self, key: str) -> Optional[int]:
        key = self._check_key(key)
        try:
            record = self._call(self.client.get, self._lease_path(self._record_name(key)))
        except KubeError as e:
            if e.not_found:
                return None
            raise VniApiError(str(e)) from e
        h = (record.get("spec") or {}).get("holderIdentity") or ""
        return int(h[4:]) if h.startswith("vni-") and h[4:].isdigit() else None

    def list(self) -> List[Allocation]:
        return [a for a, _ in self.list_objects()]

    def list_objects(self) -> List[Tuple[Allocation, dict]]:
        """Like :meth:`list`, with each entry's ``Vni`` object (for the controller)."""
        return [(a, o) for a, o, hidden, _ in self._snapshot() if not hidden]

    def _snapshot(self) -> List[Tuple[Allocation, dict, bool, bool]]:
        """Every live allocation with (hidden, orphan) flags, from one LIST of ``Vni``
        objects and one of key records taken after it.  *hidden*: not the VNI its key
        holds (a race loser about to delete it, or an orphan); *orphan*: hidden and
        older than ``orphan_age``.  Deciding from one snapshot matters: a ``Vni``
        created after the first LIST must never look like an orphan."""
        objs = self._list_vnis()
        records = {}
        for r in self._list(self._lease_path(), f"{LABEL_ROLE}=key"):
            h = (r.get("spec") or {}).get("holderIdentity") or ""
            records[(r.get("metadata") or {}).get("name", "")[len("vnikey-"):]] = h
        now, wall = self.clock(), time.time()
        out = []
        for o in objs:
            a = self._allocation(o, now)
            if a is None:
                continue
            hidden = orphan = False
            if a.state == STATE_ALLOCATED:
                h = records.get(key_hash(a.key))
                created = parse_time((o.get("metadata") or {}).get("creationTimestamp")) or wall
                old = wall - created > self.orphan_age
                if h:
                    hidden = h not in (vni_name(a.vni), "released:" + vni_name(a.vni))
                    orphan = hidden and old
                else:
                    # no record yet (an acquire in flight) or any more (a release in
                    # flight, or a crash between the two steps)
                    hidden = orphan = old
            out.append((a, o, hidden, orphan))
        out.sort(key=lambda t: t[0].vni)
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    # --- beyond the interface (the controller's GC) -------------------------------------

    def gc(self, held: Container[int] = ()) -> int:
        """Quarantine orphans (allocated ``Vni`` objects no key record points to, older
        than ``orphan_age``: a crash between create and commit, a create whose response
        was lost, a key that let go) and delete ``Vni`` objects whose quarantine is over,
        except VNIs in ``held`` (given to pods that still exist) -- the rules of
        :func:`pycxi.vni.rules.lifecycle_actions` with no key known to have let go.
        Returns how many objects changed."""
        return self.apply(lifecycle_actions(
            [v for v, _ in self.views()], {}, held, now=self.clock(),
            quarantine=self.quarantine, orphan_age=self.orphan_age))

    def views(self) -> List[Tuple[VniView, dict]]:
        """Every ``Vni`` object (expired quarantines included) as the rules see it, from
        one LIST of objects and one of key records taken after it: a ``Vni`` created
        after the first LIST can never look uncommitted."""
        objs = self._list_vnis()
        records: Dict[str, str] = {}
        for r in self._list(self._lease_path(), f"{LABEL_ROLE}=key"):
            h = (r.get("spec") or {}).get("holderIdentity") or ""
            records[(r.get("metadata") or {}).get("name", "")[len("vnikey-"):]] = h
        wall = time.time()
        out = []
        for o in objs:
            spec, md = o.get("spec") or {}, o.get("metadata") or {}
            try:
                v = int(spec["vni"])
            except (KeyError, TypeError, ValueError):
                continue
            key = str(spec.get("key", ""))
            created = parse_time(md.get("creationTimestamp")) or wall
            out.append((VniView(v, key, parse_time((o.get("status") or {}).get("releasedAt")),
                                records.get(key_hash(key)) == vni_name(v), wall - created,
                                md.get("uid") or "", md.get("resourceVersion") or ""), o))
        out.sort(key=lambda t: t[0].vni)
        return out

    def apply(self, actions: Iterable[Action]) -> int:
        """Carry out :func:`~pycxi.vni.rules.lifecycle_actions`; each write has a
        precondition on what was judged, so a stale decision is a no-op.  Returns how
        many took effect."""
        n, now = 0, self.clock()
        for a in actions:
            if a.op == "drop":
                n += self.drop(a.key) is not None
            elif a.op == "quarantine":
                n += self._quarantine(a.vni, now, a.resource_version or None, uid=a.uid or None)
            elif a.op == "free":
                n += self._delete_vni(a.vni, a.uid or None, a.resource_version or None)
        return n

    def drop(self, key: str) -> Optional[int]:
        """Delete ``key``'s record: the key holds nothing any more and no new pod is given
        its VNI, but the ``Vni`` object stays allocated (draining) until
        :meth:`settle` or :meth:`gc` finds no pod holding it.  Returns the VNI the
        record pointed to (None: no record, or another handle dropped it first)."""
        v = self._take_record(self._check_key(key))
        return None if v is None or v < 0 else v

    def settle(self, v: int, dropped: Optional[str] = None) -> bool:
        """Quarantine ``vni-<v>`` if it is allocated and no key record points to it (a
        drained VNI).  The caller has checked that no existing pod holds it.
        ``dropped``: the key whose record the caller has just deleted (no need to look)."""
        if dropped is not None:
            fast = self._quarantine_mine(v, dropped)
            if fast is not None:
                return fast
        try:
            o = self._call(self.client.get, self._vni_path(v))
        except KubeError as e:
            if e.not_found:
                return False
            raise VniApiError(str(e)) from e
        spec, md = o.get("spec") or {}, o.get("metadata") or {}
        if (o.get("status") or {}).get("releasedAt") or spec.get("vni") != v:
            return False
        key = str(spec.get("key", ""))
        if key == dropped:
            return self._quarantine(v, self.clock(), md.get("resourceVersion"))
        try:
            record = self._call(self.client.get, self._lease_path(self._record_name(key)))
            if (record.get("spec") or {}).get("holderIdentity") == vni_name(v):
                return False  # still the key's
        except KubeError as e:
            if not e.not_found:
                raise VniApiError(str(e)) from e
        return self._quarantine(v, self.clock(), md.get("resourceVersion"))

    # --- internals ------------------------------------------------------------------------

    def _list(self, path: str, selector: Optional[str] = None) -> List[dict]:
        try:
            return self._call(self.client.list, path, label_selector=selector)
        except KubeError as e:
            raise VniApiError(str(e)) from e

    def _list_vnis(self) -> List[dict]:
        return self._list(self._vni_path())

    def _allocation(self, o: dict, now: float) -> Optional[Allocation]:
        spec, status = o.get("spec") or {}, o.get("status") or {}
        try:
            v = int(spec["vni"])
        except (KeyError, TypeError, ValueError):
            return None
        released = parse_time(status.get("releasedAt"))
        if released is not None:
            if quarantine_over(released, now, self.quarantine):
                return None
            return Allocation(str(spec.get("key", "")), v, STATE_QUARANTINED, released,
                              spec.get("owner"))
        since = parse_time(spec.get("allocatedAt"))
        return Allocation(str(spec.get("key", "")), v, STATE_ALLOCATED,
                          since if since is not None else 0.0, spec.get("owner"))

    def _quarantine_mine(self, v: int, key: str) -> Optional[bool]:
        """Quarantine ``vni-<v>`` if it is still exactly the version this handle created
        for ``key`` (a resourceVersion precondition: then it is allocated to ``key`` and
        nothing has touched it).  None: not known, or changed -- look it up."""
        with self._lock:
            st = self._seen.get(v) if self._seen is not None else None
            rv = st.rv if st is not None and st.key == key and st.state == STATE_ALLOCATED else None
        if not rv:
            return None
        try:
            return self._patch_released(v, self.clock(), rv)
        except KubeError as e:
            if e.not_found:
                return False
            if e.conflict:
                return None
            raise VniApiError(str(e)) from e

    def _quarantine(self, v: int, now: float, rv: Optional[str] = None,
                    uid: Optional[str] = None, dropped: Optional[str] = None) -> bool:
        """Release ``vni-<v>`` into quarantine; with ``rv``, only that very version (a 409
        means it changed: left alone); with ``uid``, only that object; with ``dropped``
        (the key whose record the caller deleted): the version this handle created for
        that key if it is unchanged, else the current one."""
        if dropped is not None and not rv and not uid:
            fast = self._quarantine_mine(v, dropped)
            if fast is not None:
                return fast
        if uid and not rv:
            try:
                cur = self._call(self.client.get, self._vni_path(v))
            except KubeError as e:
                if e.not_found:
                    return False
                raise VniApiError(str(e)) from e
            if (cur.get("metadata") or {}).get("uid") != uid:
                return False
            rv = (cur.get("metadata") or {}).get("resourceVersion")
        try:
            return self._patch_released(v, now, rv)
        except KubeError as e:
            if e.not_found or (rv and e.conflict):
                return False
            raise VniApiError(str(e)) from e

    def _patch_released(self, v: int, now: float, rv: Optional[str]) -> bool:
        """The quarantining write (raises KubeError on 404/409)."""
        body: Dict[str, Any] = {"metadata": {"resourceVersion": rv}} if rv else {}
        o = self._call(self.client.patch, self._vni_path(v, "status"), {**body, "status": {
            "releasedAt": format_time(now),
            "conditions": [{"type": "Ready", "status": "False", "reason": "Quarantined",
                            "message": f"released; reusable after {self.quarantine:g} s",
                            "lastTransitionTime": format_time(time.time())}]}})
        md = o.get("metadata") or {}
        with self._lock:
            if self._seen is not None:
                self._seen[v] = _Seen(STATE_QUARANTINED, parse_time(format_time(now)),
                                      md.get("uid"), None)
        return True

    def _delete_vni(self, v: int, uid: Optional[str], rv: Optional[str],
                    forget: bool = True) -> bool:
        try:
            self._call(self.client.delete, self._vni_path(v), uid=uid, resource_version=rv)
            ok = True
        except KubeError as e:
            if e.status not in (404, 409):
                raise VniApiError(str(e)) from e
            ok = False
        if forget:
            with self._lock:
                if self._seen is not None:
                    self._seen.pop(v, None)
        return ok

    def _refresh(self) -> Dict[int, _Seen]:
        seen: Dict[int, _Seen] = {}
        newest: Tuple[int, int] = (-1, -1)
        for o in self._list_vnis():
            spec, status, md = o.get("spec") or {}, o.get("status") or {}, o.get("metadata") or {}
            try:
                v = int(spec["vni"])
            except (KeyError, TypeError, ValueError):
                continue
            rel = parse_time(status.get("releasedAt"))
            seen[v] = _Seen(STATE_QUARANTINED if rel is not None else STATE_ALLOCATED, rel,
                            md.get("uid"), md.get("resourceVersion"))
            try:
                newest = max(newest, (int((md.get("annotations") or {})[ANN_CREATED]), v))
            except (KeyError, ValueError):
                pass
        with self._lock:
            self._seen = seen
            if self._cursor is None and newest[1] >= 0:
                self._cursor = newest[1] + 1
        return seen

    def _next_candidate(self, seen: Dict[int, _Seen], now: float,
                        skip: int) -> Tuple[Optional[int], Optional[_Seen]]:
        """Under self._lock: the next VNI worth a create, from the cursor on, and what
        we saw of it if it is an expired quarantine (to delete first)."""
        cursor = self._cursor if self._cursor is not None else self.ranges[0][0]
        v, expired = next_candidate(self.ranges, cursor, _Known(seen), now=now,
                                    quarantine=self.quarantine, held=_Held(self.in_use),
                                    skip=skip)
        return v, (seen[v] if expired and v is not None else None)

    def _allocate(self, key: str, owner: Optional[str],
                  holder: Optional[Dict[str, Any]]) -> Tuple[int, dict]:
        now = self.clock()
        with self._lock:
            seen = self._seen
        if seen is None:
            seen = self._refresh()
        for attempt in (0, 1):
            if attempt:
                seen = self._refresh()
            skip = lost = 0
            while True:
                with self._lock:
                    v, expired = self._next_candidate(seen, now, skip)
                    if v is None:
                        break
                    # claim the candidate within this handle, so that our own threads
                    # do not race each other for it
                    seen[v] = _Seen(STATE_PENDING)
                    self._cursor = v + 1
                skip = 0
                if expired is not None:
                    # quarantine over: remove exactly the version we saw, then compete
                    self._delete_vni(v, expired.uid, expired.rv, forget=False)
                try:
                    obj = self._create_vni(v, key, owner, holder, now)
                except BaseException:
                    with self._lock:
                        seen.pop(v, None)  # unknown outcome: let a later pass find out
                    raise
                if obj is None:
                    with self._lock:
                        seen[v] = _Seen(STATE_ALLOCATED)
                    # Lost a race to another handle: allocators that started from the
                    # same cursor would otherwise try the same next numbers in lockstep.
                    # Skipping a random, growing stretch spreads them out; skipped
                    # numbers are found again on the wrap-around or in the exhaustive
                    # last pass (next-fit stays exact for a handle without contention).
                    lost += 1
                    if not attempt:
                        skip = random.randint(0, min(1 << lost, 64))
                    continue
                with self._lock:
                    seen[v] = _Seen(STATE_ALLOCATED, None, obj["metadata"].get("uid"),
                                    obj["metadata"].get("resourceVersion"), key)
                return v, obj
        with self._lock:
            seen = dict(seen)
        alloc = sum(1 for v, s in seen.items() if s.state != STATE_QUARANTINED and in_ranges(v, self.ranges))
        quar = [s.released for v, s in seen.items() if s.state == STATE_QUARANTINED
                and in_ranges(v, self.ranges) and not quarantine_over(s.released, now, self.quarantine)]
        nxt = min(quar) + self.quarantine - now if quar else None
        raise VniExhausted(exhausted_message(self.ranges, alloc, len(quar), nxt))

    def _create_vni(self, v: int, key: str, owner: Optional[str],
                    holder: Optional[Dict[str, Any]], now: float) -> Optional[dict]:
        """The atomic step: create ``vni-<v>``; None if it exists (409)."""
        spec: Dict[str, Any] = {"vni": v, "key": key, "allocatedAt": format_time(now)}
        if owner is not None:
            spec["owner"] = owner
        if holder:
            spec["holder"] = holder
        labels = {**MANAGED_BY, LABEL_KEY_HASH: key_hash(key)}
        if holder and holder.get("namespace"):
            labels[f"{GROUP}/namespace"] = holder["namespace"]
        try:
            return self._call(self.client.create, self._vni_path(), {
                "apiVersion": API_VERSION, "kind": "Vni",
                "metadata": {"name": vni_name(v), "labels": labels,
                             "annotations": {ANN_CREATED: str(time.time_ns())}},
                "spec": spec})
        except KubeError as e:
            if e.conflict:
                return None
            raise VniApiError(str(e)) from e

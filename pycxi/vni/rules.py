"""The VNI service's rules as pure functions: objects in, decisions out.  No API
client, no clock, no threads: :mod:`pycxi.vni.reconciler` feeds them what it sees and
carries out what they return; ``tests/vni_k8s/test_rules.py`` checks them (with a
hypothesis state machine) without any API server.

The lifecycle of a VNI (docs/vni-service.md states it with the reasons):

* **taken** by a *key* (a top-level workload, or a claim) that asks for one: the ``Vni``
  object ``vni-<n>`` is created atomically, then the key's record points to it;
* **held** while the key still asks *or any pod that was given it still exists*.  "Was
  given it" is the pod's ``vni.pycxi.dev/Allocated`` condition with ``status=True``:
  pod status is written by the controller (and the node), never by a tenant, and once
  True it is never changed or withdrawn (:func:`stamp_decision`).  A pod counts in any
  phase, terminating included, until the API server has removed it;
* **quarantined** when neither holds (:func:`lifecycle_actions`): the key's record is
  dropped as soon as the key stops asking (no new pod gets the VNI), the ``Vni`` object
  is marked released only once no granted pod exists;
* **freed** (its object deleted, the number reusable) when the quarantine is over and
  still no granted pod exists.

Annotations, workloads, owner references and claims are the tenant's: they decide when
a key *stops asking*, which can only start the drain.  Only the disappearance of the
pods ends it, so whatever a tenant edits or deletes can delay a release, never hasten it.
"""
from __future__ import annotations

import dataclasses
from typing import Container, Iterable, List, Mapping, Optional, Sequence, Tuple

from pycxi.vni.kube import ANNOTATION, CLAIM_PLURAL, GROUP, LEGACY_ANNOTATION, POD_CONDITION, VERSION
from pycxi.vni.lookup import FALSE_VALUES, MAX_VNIS_PER_POD, VNIS_PREFIX, format_stamp

__all__ = [
    "Kind", "POD", "REPLICASET", "CLAIM", "VOLCANO_JOB", "WATCHED_KINDS", "parse_kinds",
    "Request", "parse_request", "is_finished", "controller_ref", "workload_wants",
    "pod_grant", "pod_condition", "stamp_decision", "grant_condition",
    "VniView", "Action", "lifecycle_actions", "reusable", "next_candidate",
    "Step", "workload_step", "claim_step", "claim_user", "backoff_delay",
]

_TRUE = frozenset({"true", "yes"})


@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: Optional[str] = None, name: Optional[str] = None,
             sub: Optional[str] = None) -> str:
        from pycxi.vni.kube import KubeClient
        return KubeClient.path(self.group, self.version, self.plural, namespace, name, sub)


POD = Kind("", "v1", "pods", "Pod")
REPLICASET = Kind("apps", "v1", "replicasets", "ReplicaSet")
CLAIM = Kind(GROUP, VERSION, CLAIM_PLURAL, "VniClaim")
VOLCANO_JOB = Kind("batch.volcano.sh", "v1alpha1", "jobs", "Job")
WATCHED_KINDS: Tuple[Kind, ...] = (
    Kind("batch", "v1", "jobs", "Job"),
    Kind("apps", "v1", "deployments", "Deployment"),
    Kind("apps", "v1", "statefulsets", "StatefulSet"),
    Kind("apps", "v1", "daemonsets", "DaemonSet"),
    REPLICASET,  # top-level only when no Deployment controls it
    VOLCANO_JOB,
    POD,         # bare pods, and pods of owners we do not watch ("generic owners")
)


def parse_kinds(text: str) -> Tuple[Kind, ...]:
    """``"group/version/plural/Kind,..."`` (core group: ``"v1/plural/Kind"``)."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split("/")
        if len(parts) == 3:
            parts = [""] + parts
        if len(parts) != 4 or not all(parts[1:]):
            raise ValueError(f"extra kind {item!r}: expected group/version/plural/Kind")
        out.append(Kind(*parts))
    return tuple(out)


# --- what a workload asks for ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """What a workload asks for: its own VNI and/or claims (by name, same namespace)."""
    own: bool = False
    claims: Tuple[str, ...] = ()
    invalid: str = ""  # why the request cannot be honoured (ClaimRefused/InvalidRequest)
    invalid_reason: str = ""

    @property
    def asks(self) -> bool:
        return self.own or bool(self.claims) or bool(self.invalid)


def _annotation(annotations: Optional[dict]) -> Optional[str]:
    a = annotations or {}
    for k in (ANNOTATION, LEGACY_ANNOTATION):
        v = a.get(k)
        if isinstance(v, str) and v.strip().lower() not in FALSE_VALUES:
            return v.strip()
    return None


def _dns_label(s: str) -> bool:
    return 0 < len(s) <= 253 and all(c.isalnum() and c.isascii() and not c.isupper() or c in "-."
                                     for c in s) and s[0].isalnum() and s[-1].isalnum()


def parse_request(obj: dict) -> Request:
    """The workload's request, from its annotations or its pod template's."""
    value = _annotation((obj.get("metadata") or {}).get("annotations"))
    if value is None:
        tmpl = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        value = _annotation(tmpl.get("annotations"))
    if value is None:
        return Request()
    own, claims = False, []
    for item in (t.strip() for t in value.split(",")):
        if not item:
            continue
        if item.lower() in _TRUE:
            own = True
        elif "/" in item:
            # A claim is redeemed by name in the workload's own namespace only.
            return Request(invalid=f"claim {item!r} is not in this namespace: claims are "
                           "namespace-scoped and redeemed by name", invalid_reason="ClaimRefused")
        elif not _dns_label(item):
            return Request(invalid=f"{item!r} is not a claim name", invalid_reason="InvalidRequest")
        elif item not in claims:
            claims.append(item)
    if int(own) + len(claims) > MAX_VNIS_PER_POD:
        return Request(invalid=f"at most {MAX_VNIS_PER_POD} VNIs per pod",
                       invalid_reason="InvalidRequest")
    return Request(own, tuple(claims))


def is_finished(kind: Kind, obj: dict) -> bool:
    status = obj.get("status") or {}
    if kind == POD:
        return status.get("phase") in ("Succeeded", "Failed")
    if kind == VOLCANO_JOB:
        return ((status.get("state") or {}).get("phase")) in ("Completed", "Failed", "Terminated",
                                                              "Aborted")
    if kind.kind == "Job":
        return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in status.get("conditions") or ())
    return False


def controller_ref(meta: dict) -> Optional[dict]:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def workload_wants(kind: Kind, obj: Optional[dict]) -> bool:
    """Whether a top-level workload still asks for its own VNI: it exists, is not being
    deleted, has not finished and carries the request.  Tenant-controlled in every
    part: a False here only *starts* the drain (see :func:`lifecycle_actions`)."""
    if obj is None:
        return False
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    return not is_finished(kind, obj) and parse_request(obj).own


# --- pods: what they were given ----------------------------------------------------------------


def pod_condition(pod: dict) -> Optional[Tuple[str, str, str]]:
    """(status, reason, message) of the pod's ``vni.pycxi.dev/Allocated`` condition."""
    cond = None
    for c in (pod.get("status") or {}).get("conditions") or ():
        if isinstance(c, dict) and c.get("type") == POD_CONDITION:
            cond = (str(c.get("status") or ""), str(c.get("reason") or ""),
                    str(c.get("message") or ""))
    return cond


def grant_condition(cond: Optional[Tuple[str, str, str]]) -> Tuple[int, ...]:
    """The VNIs a condition grants (empty unless ``status=True``)."""
    if cond is None or cond[0] != "True" or not cond[2].startswith(VNIS_PREFIX):
        return ()
    out = []
    for part in cond[2][len(VNIS_PREFIX):].split(","):
        part = part.strip()
        if part.isascii() and part.isdigit() and 1 <= int(part) <= 65535:
            out.append(int(part))
    return tuple(sorted(set(out)))


def pod_grant(pod: dict) -> Tuple[int, ...]:
    """The VNIs this pod was given: what the CNI plugin may have configured on its node.
    Read from pod status only, which no tenant can write."""
    return grant_condition(pod_condition(pod))


def stamp_decision(current: Optional[Tuple[str, str, str]],
                   want: Optional[Tuple[str, str, str]]) -> Optional[Tuple[str, str, str]]:
    """The condition to write on a pod (None: write nothing).

    A True condition is final: the CNI plugin may already have built the pod's CXI
    service on it, so it is the record that the pod holds those VNIs until it is gone.
    It is never withdrawn or changed, whatever happens to the workload afterwards."""
    if current is not None and current[0] == "True":
        return None
    if want is None or want == current:
        return None
    return want


def allocated_condition(vnis: Sequence[int]) -> Tuple[str, str, str]:
    return ("True", "Allocated", format_stamp(list(vnis)))


# --- the VNI lifecycle ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VniView:
    """One ``Vni`` object as the rules need it."""
    vni: int
    key: str
    released_at: Optional[float]  # None: not released
    committed: bool               # the key's record points to this object
    age: float                    # seconds since the object was created
    uid: str = ""
    resource_version: str = ""


@dataclasses.dataclass(frozen=True)
class Action:
    """``drop``: delete ``key``'s record (the key stops asking; no new pod gets the VNI).
    ``quarantine``: mark ``vni`` released.  ``free``: delete the expired quarantine."""
    op: str
    vni: int
    key: str = ""
    uid: str = ""
    resource_version: str = ""


def lifecycle_actions(vnis: Iterable[VniView], wants: Mapping[str, bool],
                      held: Container[int], *, now: float, quarantine: float,
                      orphan_age: float) -> List[Action]:
    """What to do with each ``Vni`` object.

    ``wants``: key -> whether it still asks; a key missing from it is *unknown* and kept
    (a controller that has not seen a workload yet must not release it).  ``held``: the
    VNIs some existing pod was given (:func:`pod_grant`), from a view of all pods that is
    no older than the one ``vnis`` came from."""
    out: List[Action] = []
    for v in vnis:
        if v.released_at is not None:
            if now - v.released_at >= quarantine and v.vni not in held:
                out.append(Action("free", v.vni, v.key, v.uid, v.resource_version))
            continue
        if v.committed:
            if wants.get(v.key, True):
                continue
            out.append(Action("drop", v.vni, v.key))
            if v.vni not in held:
                out.append(Action("quarantine", v.vni, v.key, v.uid))
            continue
        # Not committed: an allocation in flight (young), or a key that let go (dropped,
        # crashed in between, or a create whose answer was lost).  Pods it was given
        # keep it; otherwise it goes into quarantine once it cannot be in flight.
        if v.vni not in held and v.age >= orphan_age:
            out.append(Action("quarantine", v.vni, v.key, v.uid, v.resource_version))
    return out


def next_candidate(ranges: Sequence[Tuple[int, int]], cursor: int,
                   known: Mapping[int, Tuple[bool, Optional[float]]], *, now: float,
                   quarantine: float, held: Container[int],
                   skip: int = 0) -> Tuple[Optional[int], bool]:
    """The allocation rule: the next VNI worth an atomic create, round-robin next-fit
    from ``cursor`` over ``ranges`` (never 0, 1, 10).  ``known``: VNI -> (has a ``Vni``
    object, its ``releasedAt``).  A number without an object is free; one whose
    quarantine is over is reusable (its object must be deleted first: the second
    element says so) unless a pod still holds it.  ``skip``: pass over this many free
    numbers first (spreads racing allocators).  (None, False) when exhausted."""
    from pycxi.vni.store import iter_candidates

    for v in iter_candidates(tuple(ranges), cursor):
        k = known.get(v)
        if k is None:
            if skip:
                skip -= 1
                continue
            return v, False
        if reusable(k[1], v, now=now, quarantine=quarantine, held=held):
            return v, True
    return None, False


def reusable(released_at: Optional[float], vni: int, *, now: float, quarantine: float,
             held: Container[int]) -> bool:
    """Whether a released ``Vni`` object may be deleted for reuse of its number."""
    return released_at is not None and now - released_at >= quarantine and vni not in held


# --- what to do with one workload or claim, now ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    """One decision for a key.  ``op``:

    * ``acquire``: hold the VNIs the request names (own one and/or claims') and stamp them;
    * ``refuse``: the request cannot be honoured (``reason``/``message`` go on the pods);
    * ``release``: the key lets go (``reason`` is the cause); its pods keep what they got;
    * ``wait``: a deleting claim still in use (``reason``/``message`` on the claim), retry;
    * ``finalize``: a deleting claim nobody uses: let go, then remove our finalizer.

    ``forget``: the object is gone, drop what this replica remembers of it.
    ``add_finalizer``: a claim lacks our finalizer (``claim_step`` only)."""
    op: str
    reason: str = ""
    message: str = ""
    forget: bool = False
    add_finalizer: bool = False


def workload_step(request: Request, *, finished: bool, gone: bool) -> Step:
    """What to do with a top-level workload (or a bare pod, or a generic owner) given
    its request, whether it finished and whether it is gone (deleted or deleting)."""
    if gone:
        return Step("release", "deleted", forget=True)
    if finished:
        return Step("release", "completed")
    if not request.asks:
        return Step("release", "unannotated")
    if request.invalid:
        return Step("refuse", request.invalid_reason, request.invalid)
    return Step("acquire")


def claim_step(*, deleted: bool, deleting: bool, users: Sequence[str],
               finalizers: Sequence[str], finalizer: str) -> Step:
    """What to do with a ``VniClaim``.  ``deleted``: the API server removed it (by us, or
    with its finalizer stripped by hand): the key lets go and pods given the VNI keep it
    (the lifecycle rules quarantine it when they are gone).  ``deleting``: it has a
    deletionTimestamp; ``users``: workloads that still redeem it (:func:`claim_user`)."""
    if deleted:
        return Step("release", "claim-deleted", forget=True)
    if deleting:
        if users:
            return Step("wait", "InUse", "deleting: still used by " + ", ".join(sorted(users)[:5]))
        return Step("finalize", "claim-deleted")
    return Step("acquire", add_finalizer=finalizer not in finalizers)


def claim_user(kind: Kind, obj: dict, claim: str, *, top_level: bool) -> bool:
    """Whether ``obj`` (of ``kind``; ``top_level``: no watched kind controls it) still
    redeems ``claim``: it names it and has not finished; a deleting workload no longer
    counts, a deleting pod still does (it may still send)."""
    meta = obj.get("metadata") or {}
    if not top_level or (meta.get("deletionTimestamp") and kind != POD):
        return False
    return claim in parse_request(obj).claims and not is_finished(kind, obj)


def backoff_delay(attempt: int, rand: float, *, base: float = 0.5, cap: float = 60.0,
                  jitter: float = 0.2) -> float:
    """Seconds before retry number ``attempt`` (0 for the first): exponential from
    ``base`` up to ``cap``, spread by +-``jitter`` with ``rand`` in [0, 1) so that keys
    failing together do not retry together."""
    return min(cap, base * 2.0 ** min(attempt, 32)) * (1.0 - jitter + 2.0 * jitter * rand)

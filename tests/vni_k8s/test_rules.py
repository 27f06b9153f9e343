"""The VNI rules (pycxi.vni.rules) without any API: unit tests, and a hypothesis state
machine that runs random tenant and controller histories against them.

The state machine is a model of the cluster (pods, Jobs, Deployments with their
ReplicaSets, bare pods, claims with and without finalizers, the ``Vni`` objects and key
records) and of two controller replicas that decide only through the pure rules: each
replica has its own pod index, fed by a watch that lags (events are delivered one at a
time, in random order between the replicas), may restart (the index is rebuilt from a
LIST), and resyncs from fresh LISTs.  The one timing assumption, as in the real
service: a watch event arrives within the quarantine (every clock step first delivers
what is pending).

Checked after every step:
* no two namespaces' existing pods were given the same VNI;
* every VNI given to an existing pod is still held or in quarantine (never freed);
and after a full settle (events delivered, resync): every VNI still allocated has a key
that asks for it or an existing pod holding it, and nothing else is held.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Set

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from pycxi.vni.rules import (POD, WATCHED_KINDS, Action, Request, VniView, allocated_condition,
                             backoff_delay, claim_step, claim_user, grant_condition,
                             lifecycle_actions, parse_request, pod_grant, reusable,
                             stamp_decision, workload_step, workload_wants)

JOB = WATCHED_KINDS[0]
COND = "vni.pycxi.dev/Allocated"


# --- unit tests -------------------------------------------------------------------------------


def test_pod_grant_reads_only_a_true_condition():
    pod = {"status": {"conditions": [{"type": COND, "status": "True", "message": "vnis=7,5"}]}}
    assert pod_grant(pod) == (5, 7)
    assert pod_grant({"status": {"conditions": [{"type": COND, "status": "False",
                                                 "reason": "Exhausted", "message": ""}]}}) == ()
    # annotations and labels (tenant-written) never make a holder
    assert pod_grant({"metadata": {"annotations": {"vni.pycxi.dev/vni": "5"}}}) == ()
    assert pod_grant({"status": {"conditions": [{"type": COND, "status": "True",
                                                 "message": "garbage"}]}}) == ()


def test_stamp_decision_never_changes_a_grant():
    granted = ("True", "Allocated", "vnis=5")
    assert stamp_decision(granted, ("False", "Released", "")) is None
    assert stamp_decision(granted, ("True", "Allocated", "vnis=6")) is None
    assert stamp_decision(granted, None) is None
    assert stamp_decision(None, granted) == granted
    assert stamp_decision(("False", "Pending", ""), granted) == granted
    assert stamp_decision(("False", "Pending", ""), ("False", "Pending", "")) is None


def test_workload_wants():
    job = {"metadata": {"annotations": {"vni.pycxi.dev/vni": "true"}}}
    assert workload_wants(JOB, job)
    assert not workload_wants(JOB, None)
    assert not workload_wants(JOB, {"metadata": {}})
    assert not workload_wants(JOB, dict(job, status={"conditions": [{"type": "Complete",
                                                                      "status": "True"}]}))
    assert not workload_wants(JOB, {"metadata": dict(job["metadata"], deletionTimestamp="x")})
    assert not workload_wants(POD, dict(job, status={"phase": "Succeeded"}))


@pytest.mark.parametrize("request_,finished,gone,op,reason", [
    (Request(own=True), False, False, "acquire", ""),
    (Request(claims=("c",)), False, False, "acquire", ""),
    (Request(own=True), True, False, "release", "completed"),
    (Request(own=True), False, True, "release", "deleted"),
    (Request(own=True), True, True, "release", "deleted"),
    (Request(), False, False, "release", "unannotated"),
    (Request(invalid="no", invalid_reason="ClaimRefused"), False, False, "refuse", "ClaimRefused"),
    (Request(invalid="no", invalid_reason="ClaimRefused"), True, False, "release", "completed"),
])
def test_workload_step(request_, finished, gone, op, reason):
    step = workload_step(request_, finished=finished, gone=gone)
    assert (step.op, step.reason) == (op, reason)
    assert step.forget == gone, "only a gone workload is forgotten"


def test_claim_step():
    fin = "vni.pycxi.dev/claim-protection"

    def step(**kw):
        args = dict(deleted=False, deleting=False, users=(), finalizers=(fin,), finalizer=fin)
        args.update(kw)
        return claim_step(**args)

    assert step().op == "acquire" and not step().add_finalizer
    assert step(finalizers=()).add_finalizer and step(finalizers=("other",)).add_finalizer
    wait = step(deleting=True, users=["Job/b", "Job/a"])
    assert (wait.op, wait.reason) == ("wait", "InUse") and wait.message.endswith("Job/a, Job/b")
    assert len(step(deleting=True, users=[f"Job/j{i}" for i in range(9)]).message.split(", ")) == 5
    assert step(deleting=True).op == "finalize" and not step(deleting=True).forget
    # gone (finalizer stripped by hand, or removed by us): let go, whoever still uses it
    gone = step(deleted=True, deleting=True, users=["Job/a"])
    assert (gone.op, gone.forget) == ("release", True)


def test_claim_user():
    job = {"metadata": {"annotations": {"vni.pycxi.dev/vni": "true,c"}}}
    assert claim_user(JOB, job, "c", top_level=True)
    assert not claim_user(JOB, job, "d", top_level=True)
    assert not claim_user(JOB, job, "c", top_level=False), "its owner is the user"
    assert not claim_user(JOB, dict(job, status={"conditions": [{"type": "Complete",
                                                                  "status": "True"}]}),
                          "c", top_level=True)
    deleting = {"metadata": dict(job["metadata"], deletionTimestamp="x")}
    assert not claim_user(JOB, deleting, "c", top_level=True)
    assert claim_user(POD, deleting, "c", top_level=True), "a terminating pod may still send"
    assert not claim_user(POD, dict(deleting, status={"phase": "Failed"}), "c", top_level=True)


@given(st.integers(0, 200), st.floats(0, 1, exclude_max=True))
def test_backoff_delay_grows_to_its_cap_within_the_jitter(attempt, rand):
    d = backoff_delay(attempt, rand)
    assert 0.5 * 0.8 <= d <= 60 * 1.2
    assert backoff_delay(attempt + 1, rand) >= d
    base = min(60.0, 0.5 * 2 ** min(attempt, 32))
    assert base * 0.8 <= d <= base * 1.2
    assert backoff_delay(attempt, 0.0) <= d, "jitter grows with rand"


def V(vni, key="k", released=None, committed=True, age=100.0):
    return VniView(vni, key, released, committed, age, f"uid{vni}", f"rv{vni}")


def ops(actions):
    return [(a.op, a.vni) for a in actions]


def test_lifecycle_actions():
    kw = dict(now=1000.0, quarantine=90.0, orphan_age=30.0)
    # a key that asks (or is unknown) keeps its VNI
    assert lifecycle_actions([V(5)], {"k": True}, set(), **kw) == []
    assert lifecycle_actions([V(5)], {}, set(), **kw) == []
    # it stops asking: its record goes; the VNI is quarantined only with no holder pod
    assert ops(lifecycle_actions([V(5)], {"k": False}, set(), **kw)) == [("drop", 5), ("quarantine", 5)]
    assert ops(lifecycle_actions([V(5)], {"k": False}, {5}, **kw)) == [("drop", 5)]
    # draining (no record): held by pods -> kept; else quarantined once it cannot be in flight
    assert lifecycle_actions([V(5, committed=False)], {}, {5}, **kw) == []
    assert ops(lifecycle_actions([V(5, committed=False)], {}, set(), **kw)) == [("quarantine", 5)]
    assert lifecycle_actions([V(5, committed=False, age=3)], {}, set(), **kw) == []
    # quarantine: freed when over and nobody holds it
    assert lifecycle_actions([V(5, released=950.0)], {}, set(), **kw) == []
    assert ops(lifecycle_actions([V(5, released=900.0)], {}, set(), **kw)) == [("free", 5)]
    assert lifecycle_actions([V(5, released=900.0)], {}, {5}, **kw) == []
    [a] = lifecycle_actions([V(5, released=900.0)], {}, set(), **kw)
    assert a == Action("free", 5, "k", "uid5", "rv5"), "preconditions on what was judged"
    assert reusable(900.0, 5, now=1000.0, quarantine=90.0, held=set())
    assert not reusable(900.0, 5, now=1000.0, quarantine=90.0, held={5})
    assert not reusable(None, 5, now=1000.0, quarantine=90.0, held=set())


# --- the model --------------------------------------------------------------------------------

RANGE = (1, 2, 3)
QUARANTINE = 2.0
NAMESPACES = ("a", "b")


class Replica:
    def __init__(self) -> None:
        self.holders: Dict[int, Set[str]] = {}
        self.pending: List[tuple] = []  # watch events not yet delivered: (pod uid, grant|None)

    def held(self, v: int) -> bool:
        return bool(self.holders.get(v))

    def index(self, uid: str, grant) -> None:
        for v in list(self.holders):
            self.holders[v].discard(uid)
            if not self.holders[v]:
                del self.holders[v]
        for v in grant or ():
            self.holders.setdefault(v, set()).add(uid)


class Model(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.ids = itertools.count()
        self.pods: Dict[str, dict] = {}       # uid -> ns, owner, ann, cond, phase, terminating
        self.workloads: Dict[str, dict] = {}  # uid -> kind, ns, ann, finished
        self.rs: Dict[str, str] = {}          # ReplicaSet uid -> Deployment uid
        self.claims: Dict[str, dict] = {}     # uid -> ns, name, finalizer, deleting
        self.vnis: Dict[int, dict] = {}       # VNI -> key, released_at
        self.records: Dict[str, int] = {}     # key -> VNI
        self.replicas = [Replica(), Replica()]

    # -- the world as API objects, for the rules --

    def uid(self, p: str) -> str:
        return f"{p}{next(self.ids)}"

    def wl_obj(self, w: dict) -> dict:
        obj = {"metadata": {"annotations": {"vni.pycxi.dev/vni": w["ann"]} if w["ann"] else {}}}
        if w["finished"]:
            obj["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        return obj

    def pod_obj(self, p: dict) -> dict:
        obj = {"metadata": {"annotations": {"vni.pycxi.dev/vni": p["ann"]} if p["ann"] else {}}}
        if p["terminating"]:
            obj["metadata"]["deletionTimestamp"] = "t"
        obj["status"] = {"phase": p["phase"]}
        if p["cond"]:
            obj["status"]["conditions"] = [{"type": COND, "status": p["cond"][0],
                                            "reason": p["cond"][1], "message": p["cond"][2]}]
        return obj

    def top(self, pod_uid: str):
        """(key, namespace, request object) of the pod's top-level owner, or None."""
        p = self.pods[pod_uid]
        if p["owner"] is None:
            return f"workload:{pod_uid}", p["ns"], self.pod_obj(p), POD
        owner = self.rs.get(p["owner"], p["owner"])
        w = self.workloads.get(owner)
        if w is None or w["ns"] != p["ns"]:
            return None
        return f"workload:{owner}", w["ns"], self.wl_obj(w), JOB

    def key_wants(self, key: str) -> Optional[bool]:
        kind, _, uid = key.partition(":")
        if kind == "claim":
            c = self.claims.get(uid)
            return c is not None  # a deleting claim lets go through its finalizer
        if uid in self.pods:
            return workload_wants(POD, self.pod_obj(self.pods[uid]))
        w = self.workloads.get(uid)
        return workload_wants(JOB, self.wl_obj(w) if w else None)

    def claim_by_name(self, ns: str, name: str):
        for uid, c in self.claims.items():
            if c["ns"] == ns and c["name"] == name:
                return uid, c
        return None, None

    def held_fresh(self) -> Set[int]:
        return {v for p in self.pods.values() for v in grant_condition(p["cond"])}

    # -- what a controller replica does, through the rules --

    def emit(self, pod_uid: str, grant, origin: Optional[Replica] = None) -> None:
        for r in self.replicas:
            if r is origin:
                r.index(pod_uid, grant)  # its own write, known at once
            else:
                r.pending.append((pod_uid, grant))

    def acquire(self, r: Replica, key: str) -> Optional[int]:
        if key in self.records:
            return self.records[key]
        for v in RANGE:
            o = self.vnis.get(v)
            if o is not None:
                if not reusable(o["released_at"], v, now=self.now, quarantine=QUARANTINE,
                                held=set(v for v in RANGE if r.held(v))):
                    continue
                del self.vnis[v]  # the expired quarantine is deleted, then created anew
            self.vnis[v] = {"key": key, "released_at": None}  # atomic create
            self.records[key] = v
            return v
        return None  # exhausted

    def settle(self, r: Replica, v: int) -> None:
        o = self.vnis.get(v)
        if o is None or o["released_at"] is not None or r.held(v):
            return
        if self.records.get(o["key"]) == v:
            return
        o["released_at"] = self.now

    def let_go(self, r: Replica, key: str) -> None:
        v = self.records.pop(key, None)
        if v is not None:
            self.settle(r, v)

    def reconcile_key(self, r: Replica, key: str) -> None:
        kind, _, uid = key.partition(":")
        if kind == "claim":
            c = self.claims.get(uid)
            if c is None:
                self.let_go(r, key)
                return
            if c["deleting"]:
                users = [w for w in self.workloads.values() if w["ns"] == c["ns"]
                         and c["name"] in parse_request(self.wl_obj(w)).claims and not w["finished"]]
                if not users:
                    self.let_go(r, key)
                    del self.claims[uid]  # finalizer removed
                return
            self.acquire(r, key)
            return
        if self.key_wants(key):
            self.acquire(r, key)
        else:
            self.let_go(r, key)

    def stamp(self, r: Replica, pod_uid: str) -> None:
        """What the controller writes on a pod: its top-level owner's VNIs while that
        owner runs and asks (through stamp_decision, so a grant is final)."""
        p = self.pods[pod_uid]
        t = self.top(pod_uid)
        if t is None:
            return
        key, ns, obj, kind = t
        req = parse_request(obj)
        running = not obj["metadata"].get("deletionTimestamp") and not (
            kind == POD and p["phase"] != "Running") and not (
            kind == JOB and (obj.get("status") or {}).get("conditions"))
        if not req.asks or req.invalid or not running:
            return
        want = None
        vnis: List[int] = []
        if req.own:
            v = self.acquire(r, key)
            if v is None:
                want = ("False", "Exhausted", "")
            else:
                vnis.append(v)
        for name in req.claims if want is None else ():
            cuid, c = self.claim_by_name(ns, name)
            v = self.records.get(f"claim:{cuid}") if c and not c["deleting"] else None
            if v is None:
                want = ("False", "ClaimNotReady", "")
                break
            vnis.append(v)
        if want is None:
            want = allocated_condition(sorted(set(vnis)))
        new = stamp_decision(p["cond"], want)
        if new is not None:
            p["cond"] = new
            self.emit(pod_uid, grant_condition(new), origin=r)

    def deliver(self, r: Replica, i: int) -> None:
        pod_uid, grant = r.pending.pop(i % len(r.pending))
        before = {v for v, s in r.holders.items() if pod_uid in s}
        r.index(pod_uid, grant)
        for v in before:
            if not r.held(v):
                self.settle(r, v)

    def resync(self, r: Replica) -> None:
        views = []
        for v, o in sorted(self.vnis.items()):
            views.append(VniView(v, o["key"], o["released_at"], self.records.get(o["key"]) == v,
                                 age=1e9))
        held = self.held_fresh()
        for uid, p in self.pods.items():  # the resync's LIST feeds the index too
            if p["cond"] and p["cond"][0] == "True":
                r.index(uid, grant_condition(p["cond"]))
        wants = {v.key: bool(self.key_wants(v.key)) for v in views
                 if v.committed and v.released_at is None}
        for a in lifecycle_actions(views, wants, held, now=self.now, quarantine=QUARANTINE,
                                   orphan_age=0.0):
            if a.op == "drop":
                if self.records.get(a.key) == a.vni:
                    del self.records[a.key]
            elif a.op == "quarantine":
                o = self.vnis.get(a.vni)
                if o is not None and o["released_at"] is None:
                    o["released_at"] = self.now
            elif a.op == "free":
                self.vnis.pop(a.vni, None)

    # -- tenant moves --

    @initialize()
    def start(self) -> None:
        pass

    @rule(kind=st.sampled_from(["Job", "Deployment"]), ns=st.sampled_from(NAMESPACES),
          ann=st.sampled_from(["true", "true", "c1", "true,c1", ""]))
    def create_workload(self, kind, ns, ann):
        uid = self.uid("w")
        self.workloads[uid] = {"kind": kind, "ns": ns, "ann": ann, "finished": False}
        if kind == "Deployment":
            self.rs[self.uid("rs")] = uid

    @precondition(lambda self: self.workloads)
    @rule(data=st.data())
    def create_pod_of_workload(self, data):
        owner = data.draw(st.sampled_from(sorted(self.workloads)))
        w = self.workloads[owner]
        if w["kind"] == "Deployment":
            owner = data.draw(st.sampled_from(sorted(r for r, d in self.rs.items() if d == owner)))
        self.pods[self.uid("p")] = {"ns": w["ns"], "owner": owner, "ann": w["ann"], "cond": None,
                                    "phase": "Running", "terminating": False}

    @rule(ns=st.sampled_from(NAMESPACES), ann=st.sampled_from(["true", "c1", ""]))
    def create_bare_pod(self, ns, ann):
        self.pods[self.uid("p")] = {"ns": ns, "owner": None, "ann": ann, "cond": None,
                                    "phase": "Running", "terminating": False}

    @precondition(lambda self: self.workloads)
    @rule(data=st.data(), ann=st.sampled_from(["true", "c1", ""]))
    def annotate_workload(self, data, ann):
        self.workloads[data.draw(st.sampled_from(sorted(self.workloads)))]["ann"] = ann

    @precondition(lambda self: self.pods)
    @rule(data=st.data(), ann=st.sampled_from(["true", "c1", ""]))
    def annotate_pod(self, data, ann):
        self.pods[data.draw(st.sampled_from(sorted(self.pods)))]["ann"] = ann

    @precondition(lambda self: self.workloads)
    @rule(data=st.data())
    def complete_job(self, data):
        jobs = sorted(u for u, w in self.workloads.items() if w["kind"] == "Job")
        if jobs:
            self.workloads[data.draw(st.sampled_from(jobs))]["finished"] = True

    @precondition(lambda self: self.workloads)
    @rule(data=st.data(), orphan=st.booleans())
    def delete_workload(self, data, orphan):
        uid = data.draw(st.sampled_from(sorted(self.workloads)))
        del self.workloads[uid]
        owners = {uid} | {r for r, d in self.rs.items() if d == uid}
        for r in owners - {uid}:
            del self.rs[r]
        for p in self.pods.values():
            if p["owner"] in owners:
                if orphan:
                    p["owner"] = None  # the garbage collector strips the ownerReference
                else:
                    p["terminating"] = True  # cascading delete: terminating, still there

    @precondition(lambda self: self.pods)
    @rule(data=st.data(), how=st.sampled_from(["terminate", "succeed", "remove", "remove"]))
    def pod_lifecycle(self, data, how):
        uid = data.draw(st.sampled_from(sorted(self.pods)))
        if how == "terminate":
            self.pods[uid]["terminating"] = True
        elif how == "succeed":
            self.pods[uid]["phase"] = "Succeeded"
        else:
            del self.pods[uid]
            self.emit(uid, None)

    @rule(ns=st.sampled_from(NAMESPACES))
    def create_claim(self, ns):
        if self.claim_by_name(ns, "c1")[0] is None:
            self.claims[self.uid("c")] = {"ns": ns, "name": "c1", "deleting": False}

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), strip_finalizer=st.booleans())
    def delete_claim(self, data, strip_finalizer):
        uid = data.draw(st.sampled_from(sorted(self.claims)))
        if strip_finalizer:
            del self.claims[uid]
        else:
            self.claims[uid]["deleting"] = True

    # -- controller moves --

    @rule(r=st.integers(0, 1), data=st.data())
    def controller_reconciles(self, r, data):
        keys = [f"workload:{u}" for u in self.workloads] + [f"claim:{u}" for u in self.claims] + \
            [f"workload:{u}" for u, p in self.pods.items() if p["owner"] is None] + list(self.records)
        if keys:
            self.reconcile_key(self.replicas[r], data.draw(st.sampled_from(sorted(set(keys)))))

    @precondition(lambda self: self.pods)
    @rule(r=st.integers(0, 1), data=st.data())
    def controller_stamps(self, r, data):
        uid = data.draw(st.sampled_from(sorted(self.pods)))
        t = self.top(uid)
        if t is not None:
            self.reconcile_key(self.replicas[r], t[0])
        self.stamp(self.replicas[r], uid)

    @rule(r=st.integers(0, 1))
    def controller_pass(self, r):
        """One replica handles everything it has been told about, in one go."""
        rep = self.replicas[r]
        keys = [f"workload:{u}" for u in self.workloads] + [f"claim:{u}" for u in self.claims] + \
            [f"workload:{u}" for u, p in self.pods.items() if p["owner"] is None] + list(self.records)
        for k in sorted(set(keys)):
            self.reconcile_key(rep, k)
        for uid in sorted(self.pods):
            self.stamp(rep, uid)

    @rule(r=st.integers(0, 1), i=st.integers(0, 100))
    def watch_delivers(self, r, i):
        if self.replicas[r].pending:
            self.deliver(self.replicas[r], i)

    @rule(r=st.integers(0, 1))
    def controller_resyncs(self, r):
        self.resync(self.replicas[r])

    @rule(r=st.integers(0, 1))
    def controller_restarts(self, r):
        rep = self.replicas[r] = Replica()
        for uid, p in self.pods.items():  # warm_up: one LIST before anything is decided
            rep.index(uid, grant_condition(p["cond"]))

    @rule(dt=st.sampled_from([1.0, 2.5]))
    def time_passes(self, dt):
        for r in self.replicas:  # a watch event arrives within the quarantine
            while r.pending:
                self.deliver(r, 0)
        self.now += dt

    @rule()
    def settle_everything(self):
        """Liveness: with events delivered, a resync and a quarantine later, nothing is
        held that neither a key nor a pod holds, and expired quarantines are gone."""
        for r in self.replicas:
            while r.pending:
                self.deliver(r, 0)
        self.resync(self.replicas[0])
        held = self.held_fresh()
        for v, o in self.vnis.items():
            if o["released_at"] is None:
                assert v in held or (self.records.get(o["key"]) == v
                                     and self.key_wants(o["key"])), (v, o)
        self.now += QUARANTINE
        self.resync(self.replicas[1])
        assert all(o["released_at"] is None or v in held for v, o in self.vnis.items())

    # -- safety, after every step --

    @invariant()
    def no_two_namespaces_share_a_vni(self):
        owner: Dict[int, str] = {}
        for p in self.pods.values():
            for v in grant_condition(p["cond"]):
                assert owner.setdefault(v, p["ns"]) == p["ns"], f"VNI {v} in two namespaces"

    @invariant()
    def a_vni_given_to_an_existing_pod_is_never_free(self):
        for uid, p in self.pods.items():
            for v in grant_condition(p["cond"]):
                assert v in self.vnis, f"VNI {v} freed while pod {uid} holds it"


Model.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
test_model = Model.TestCase


def test_the_model_catches_a_release_that_ignores_pods(monkeypatch):
    """The state machine is not vacuous: with the pod check taken out of the rules, it
    finds the hole the service used to have."""
    orig = lifecycle_actions

    def careless(vnis, wants, held, **kw):
        return orig(vnis, wants, (), **kw)

    monkeypatch.setitem(globals(), "lifecycle_actions", careless)

    class Careless(Model):
        def settle(self, r, v):
            o = self.vnis.get(v)
            if o is not None and o["released_at"] is None and self.records.get(o["key"]) != v:
                o["released_at"] = self.now

    # no shrinking: finding the counterexample is the point, making it small is slow;
    # derandomized: the same examples every run (random ones missed the hole now and then)
    Careless.TestCase.settings = settings(max_examples=300, stateful_step_count=50,
                                          deadline=None, database=None, derandomize=True,
                                          phases=[Phase.generate])
    with pytest.raises(AssertionError):
        Careless.TestCase().runTest()


def test_next_candidate_is_next_fit_and_skips_what_pods_hold():
    from pycxi.vni.rules import next_candidate

    kw = dict(now=1000.0, quarantine=90.0, held=set())
    rng = [(9, 13)]
    assert next_candidate(rng, 9, {}, **kw) == (9, False)
    assert next_candidate(rng, 10, {}, **kw) == (11, False), "10 is never handed out"
    known = {11: (True, None), 12: (True, 950.0), 13: (True, 900.0)}
    assert next_candidate(rng, 11, known, **kw) == (13, True), "expired quarantine: reuse"
    assert next_candidate(rng, 11, known, **dict(kw, held={13})) == (9, False), "wraps"
    full = {9: (True, None), **known}
    assert next_candidate(rng, 11, full, **dict(kw, held={13})) == (None, False)
    assert next_candidate(rng, 9, {}, **dict(kw, skip=1)) == (11, False)

"""KubeStore specifics beyond the shared conformance suite (tests/vni/): the races and
crash leftovers that only an API-server-backed store has.  Fake API server: see
fakeapi.py (no kube-apiserver can be installed here)."""
from __future__ import annotations

import threading

import pytest

from pycxi.vni.kstore import KubeStore, format_time, key_hash
from pycxi.vni.kube import API_VERSION
from pycxi.vni.store import VniExhausted

VNIS = "/apis/vni.pycxi.dev/v1alpha1/vnis"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def store(kubeconfig, **kw) -> KubeStore:
    return KubeStore(kubeconfig=kubeconfig, **kw)


def test_same_key_from_16_handles_gets_one_vni(kubeconfig, client):
    handles = [store(kubeconfig, ranges=[(2000, 2099)]) for _ in range(16)]
    got = []
    barrier = threading.Barrier(len(handles))

    def run(h):
        barrier.wait()
        got.append(h.acquire("the-key"))

    ts = [threading.Thread(target=run, args=(h,)) for h in handles]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(got)) == 1
    live = [o for o in client.list(VNIS) if not (o.get("status") or {}).get("releasedAt")]
    assert [o["spec"]["vni"] for o in live] == got[:1], "the losers removed their own Vni"


def test_a_stale_delete_never_removes_a_newer_holder(kubeconfig, client):
    clock = Clock()
    a = store(kubeconfig, ranges=[(2000, 2000)], quarantine=10, clock=clock)
    b = store(kubeconfig, ranges=[(2000, 2000)], quarantine=10, clock=clock)
    assert a.acquire("old") == 2000
    a.release("old")
    a._refresh()  # a has seen the quarantined version of vni-2000
    seen = a._seen[2000]
    clock.t += 10
    assert b.acquire("new") == 2000  # b deleted the expired object and re-created it
    # a, late, deletes the version it saw: the precondition protects b's object
    assert a._delete_vni(2000, seen.uid, seen.rv) is False
    assert client.get(VNIS + "/vni-2000")["spec"]["key"] == "new"
    assert b.get("new") == 2000


def test_gc_quarantines_orphans_and_deletes_expired(kubeconfig, client):
    clock = Clock()
    s = store(kubeconfig, ranges=[(3000, 3009)], quarantine=5, clock=clock, orphan_age=0.0)
    held = s.acquire("held")
    # an orphan: a Vni created by an allocator that died before writing the key record
    client.create(VNIS, {"apiVersion": API_VERSION, "kind": "Vni",
                         "metadata": {"name": "vni-3005",
                                      "labels": {"vni.pycxi.dev/key-hash": key_hash("ghost")}},
                         "spec": {"vni": 3005, "key": "ghost", "allocatedAt": format_time(clock.t)}})
    assert {a.vni for a in s.list()} == {held}, "list() hides an orphan older than orphan_age"
    assert s.gc() == 1
    assert client.get(VNIS + "/vni-3005")["status"]["releasedAt"]
    assert [(a.vni, a.state) for a in s.list()] == [(held, "allocated"), (3005, "quarantined")]
    clock.t += 5
    assert s.gc() == 1  # the expired quarantine is deleted
    assert [o["metadata"]["name"] for o in client.list(VNIS)] == [f"vni-{held}"]
    assert s.get("held") == held


def test_release_then_acquire_by_another_handle_respects_quarantine(kubeconfig):
    clock = Clock()
    a = store(kubeconfig, ranges=[(4000, 4001)], quarantine=30, clock=clock)
    b = store(kubeconfig, ranges=[(4000, 4001)], quarantine=30, clock=clock)
    assert a.acquire("x") == 4000 and b.acquire("y") == 4001
    assert b.release("x") is True  # any handle may release any key
    assert a.get("x") is None
    with pytest.raises(VniExhausted, match="1 in quarantine"):
        a.acquire("z")
    clock.t += 30
    assert a.acquire("z") == 4000


def test_a_slow_commit_never_keeps_a_vni_the_gc_reclaimed(kubeconfig, client):
    """gc reclaims a Vni with no key record after orphan_age; an allocator that was
    that slow between its two creates must notice and allocate anew."""
    import time

    s = store(kubeconfig, ranges=[(5000, 5009)], orphan_age=0.5)
    other = store(kubeconfig, ranges=[(5000, 5009)], orphan_age=0.5)
    v, obj = s._allocate("k", None, None)
    time.sleep(1.1)  # creationTimestamp has a 1 s resolution
    assert other.gc() == 1, "no key record: an orphan"
    record = client.create(s._lease_path(), {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": s._record_name("k"), "namespace": s.namespace},
        "spec": {"holderIdentity": f"vni-{v}"}})
    assert s._confirm(v, obj, record) is False
    assert s.get("k") is None, "the record of the lost allocation is gone"
    # the other order: the commit is confirmed first, the gc's stale judgement loses
    v2, obj2 = s._allocate("k2", None, None)
    time.sleep(1.1)
    snap = other._snapshot()
    rec2 = client.create(s._lease_path(), {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": s._record_name("k2"), "namespace": s.namespace},
        "spec": {"holderIdentity": f"vni-{v2}"}})
    assert s._confirm(v2, obj2, rec2) is True
    [(a, o, _, orphan)] = [t for t in snap if t[0].vni == v2]
    assert orphan
    other._quarantine(v2, 0.0, o["metadata"]["resourceVersion"])  # gc acting on the old view
    assert not (client.get(VNIS + f"/vni-{v2}").get("status") or {}).get("releasedAt")
    assert s.get("k2") == v2
    # and end to end: with a tiny orphan age every commit is confirmed
    fast = store(kubeconfig, ranges=[(5000, 5009)], orphan_age=0.0)
    assert fast.acquire("k3") == fast.get("k3")


def test_a_vni_held_by_a_pod_is_neither_quarantined_nor_reused(kubeconfig, client):
    """drop() only lets the key go; settle()/gc() quarantine and free a VNI only when
    no pod holds it, and the allocator never reuses one a pod holds (``in_use``)."""
    clock = Clock()
    pods = {3000}  # what the controller's pod index says
    s = store(kubeconfig, ranges=[(3000, 3000)], quarantine=5, clock=clock, orphan_age=0.0,
              in_use=lambda v: v in pods)
    assert s.acquire("a") == 3000
    assert s.drop("a") == 3000 and s.drop("a") is None
    assert s.get("a") is None
    [(view, _)] = s.views()
    assert (view.vni, view.committed, view.released_at) == (3000, False, None)
    assert s.gc(held={3000}) == 0, "drained but held: stays allocated"
    assert not (client.get(VNIS + "/vni-3000").get("status") or {}).get("releasedAt")
    with pytest.raises(VniExhausted):
        s.acquire("b")
    assert s.gc(held=set()) == 1  # the pod is gone: quarantined
    clock.t += 10
    assert s.gc(held={3000}) == 0, "a late holder keeps the expired quarantine"
    with pytest.raises(VniExhausted):
        s.acquire("b")  # nor does the allocator delete it for reuse
    pods.clear()
    assert s.acquire("b") == 3000
    assert s.settle(3000) is False, "committed to b: not drained"


def test_release_takes_two_requests_and_stale_knowledge_is_never_trusted(api, kubeconfig, client):
    """A key's release by the handle that allocated it: one preconditioned DELETE of the
    record, one preconditioned quarantine of the Vni (no look-ups).  When another handle
    has meanwhile replaced the record or the Vni, the preconditions fail and the handle
    looks them up: it never drops a record or quarantines a Vni it has not read."""
    clock = Clock()
    a = store(kubeconfig, ranges=[(6000, 6000)], quarantine=5, clock=clock, orphan_age=60)
    b = store(kubeconfig, ranges=[(6000, 6000)], quarantine=5, clock=clock, orphan_age=60)
    assert a.acquire_new("k", probably_new=True) == (6000, True)
    n = len(api.kube._requests)
    assert a.drop("k") == 6000
    assert a.settle(6000, dropped="k") is True
    assert [(r.method.value.upper(), r.resource.plural, r.subresource)
            for r in api.kube._requests[n:]] == [("DELETE", "leases", None),
                                                   ("PATCH", "vnis", "status")]
    assert client.get(VNIS + "/vni-6000")["status"]["releasedAt"]

    # a allocates again; b releases the key and a third key gets the same VNI anew
    clock.t += 5
    assert a.acquire("k") == 6000
    assert b.release("k") is True
    clock.t += 5
    assert b.acquire("other") == 6000  # b deleted the expired Vni and created its own
    assert a.drop("k") is None, "a's record was deleted: nothing to drop"
    assert a.settle(6000, dropped="k") is False, "vni-6000 is other's now"
    assert not (client.get(VNIS + "/vni-6000").get("status") or {}).get("releasedAt")
    assert b.get("other") == 6000

    # the record a created was replaced by another one for the same key: a drops the
    # current one (after a look-up), and reports the VNI that one pointed to
    c = store(kubeconfig, ranges=[(6001, 6002)], quarantine=5, clock=clock, orphan_age=60)
    d = store(kubeconfig, ranges=[(6001, 6002)], quarantine=5, clock=clock, orphan_age=60)
    assert c.acquire("j") == 6001
    assert d.release("j") is True
    assert d.acquire("j") == 6002
    assert c.drop("j") == 6002
    assert c.get("j") is None and d.get("j") is None
    # the Vni a handle created was modified since: its quarantine looks it up first
    clock.t += 5
    assert c.acquire("m") == 6001
    client.patch(VNIS + "/vni-6001", {"metadata": {"annotations": {"touched": "yes"}}})
    assert c.drop("m") == 6001
    assert c.settle(6001, dropped="m") is True
    assert client.get(VNIS + "/vni-6001")["status"]["releasedAt"]

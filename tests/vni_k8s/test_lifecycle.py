"""The VNI lifecycle against hostile tenants: a VNI is free again only when no pod that
was given it exists.  The four ways a tenant with the ``edit`` role used to make the
service let go of a VNI its pods still used, each with a range of ONE VNI and a 2 s
quarantine, so that a second namespace asking is exactly the failure we prevent.

The controller runs in this process (the ``Reconciler`` the kopf wiring drives),
fed each object the way kopf's watch would deliver it, with an injected clock: a test
that checks "nothing was released" calls the handlers and the resync directly and then
asserts, so a slow controller cannot make it pass.  The API server is the fake one
(kmock, no kube-apiserver exists here); it has no garbage collector and no kubelet, so
the tests do what those would: strip ownerReferences on an orphaning delete, mark a pod
terminating, remove it when its grace period is over.
"""
from __future__ import annotations

import time

import pytest

from kcluster import ANN, PATHS, Clock, Feeder

from pycxi.vni.reconciler import Config, Reconciler
from pycxi.vni.kstore import format_time
from pycxi.vni.kube import KubeError

VNI = 3000


@pytest.fixture
def ctl(client, cluster):
    clock = Clock()
    cfg = Config(ranges=((VNI, VNI),), quarantine=2.0, leader_election=False, metrics_port=0,
                 orphan_age=30.0)
    c = Reconciler(cfg, client, clock=clock)
    c.clock_ = clock
    c.warm_up()
    c.feed = Feeder(c, cluster)
    return c


def feed(ctl, cluster, kind: str, ns: str, name: str, deleted: bool = False) -> None:
    ctl.feed(kind, ns, name, deleted)


def vni_state(cluster):
    """'allocated' / 'quarantined' / None for VNI 3000."""
    for o in cluster.vnis():
        if o["spec"]["vni"] == VNI:
            return "quarantined" if (o.get("status") or {}).get("releasedAt") else "allocated"
    return None


def other_namespace_waits(ctl, cluster, name: str) -> None:
    """A pod of another namespace asks now: it must wait (Exhausted), not get VNI 3000."""
    try:
        cluster.get("Pod", "ns2", name)
    except Exception:
        cluster.create("Pod", "ns2", name, annotations={ANN: "true"})
    feed(ctl, cluster, "Pod", "ns2", name)
    assert (cluster.pod_condition("ns2", name) or {}).get("reason") == "Exhausted"
    assert cluster.lookup("ns2", name) == "notready"


def finish_and_hand_over(ctl, cluster, ns: str, pods) -> None:
    """The pods go (kubelet done, API server removes them): now, and only now, the VNI
    is quarantined, and after the quarantine the other namespace gets it."""
    for p in pods:
        cluster.client.patch(PATHS["Pod"].format(ns=ns) + f"/{p}", {"metadata": {"finalizers": None}})
        try:
            cluster.delete("Pod", ns, p)
        except KubeError as e:
            assert e.not_found  # a terminating pod goes with its last finalizer
        feed(ctl, cluster, "Pod", ns, p, deleted=True)
    assert vni_state(cluster) == "quarantined"
    ctl.clock_.advance(1.0)
    ctl.resync()
    other_namespace_waits(ctl, cluster, "late")  # quarantine not over
    ctl.clock_.advance(1.5)
    ctl.resync()
    feed(ctl, cluster, "Pod", "ns2", "late")
    assert cluster.lookup("ns2", "late") == [VNI]


def hold_while_pods_exist(ctl, cluster, ns: str, pods) -> None:
    """The tenant's move is done; long past the quarantine and after a full resync the
    pods still hold the VNI and the other namespace waits."""
    ctl.clock_.advance(4.5)
    ctl.resync()
    assert vni_state(cluster) == "allocated"
    other_namespace_waits(ctl, cluster, "newcomer")
    for p in pods:
        assert cluster.lookup(ns, p) == [VNI], "a grant is never withdrawn"
    # a restarted controller decides the same from the API alone
    fresh = Reconciler(ctl.config, ctl.client, clock=ctl.clock_)
    fresh.warm_up()
    fresh.resync()
    assert vni_state(cluster) == "allocated"


def test_repro1_unannotating_a_running_pod_does_not_release(ctl, cluster):
    cluster.create("Pod", "ns1", "p1", annotations={ANN: "true"})
    feed(ctl, cluster, "Pod", "ns1", "p1")
    assert cluster.lookup("ns1", "p1") == [VNI]
    cluster.client.patch(PATHS["Pod"].format(ns="ns1") + "/p1",
                         {"metadata": {"annotations": {ANN: None}}})
    feed(ctl, cluster, "Pod", "ns1", "p1")
    hold_while_pods_exist(ctl, cluster, "ns1", ["p1"])
    finish_and_hand_over(ctl, cluster, "ns1", ["p1"])


def test_repro2_orphaning_job_delete_does_not_release(ctl, cluster):
    job = cluster.job("ns1", "j")
    pods = ["j-0", "j-1"]
    for p in pods:
        cluster.pod_of(job, p)
        feed(ctl, cluster, "Pod", "ns1", p)
    feed(ctl, cluster, "Job", "ns1", "j")
    assert [cluster.lookup("ns1", p) for p in pods] == [[VNI], [VNI]]
    # kubectl delete job j --cascade=orphan: the Job goes, the garbage collector strips
    # the pods' ownerReferences, the pods keep running
    cluster.delete("Job", "ns1", "j")
    feed(ctl, cluster, "Job", "ns1", "j", deleted=True)
    for p in pods:
        cluster.client.patch(PATHS["Pod"].format(ns="ns1") + f"/{p}",
                             {"metadata": {"ownerReferences": None}})
        feed(ctl, cluster, "Pod", "ns1", p)
    hold_while_pods_exist(ctl, cluster, "ns1", pods)
    finish_and_hand_over(ctl, cluster, "ns1", pods)


def test_repro3_claim_deleted_with_its_finalizer_stripped_does_not_release(ctl, cluster):
    cluster.create("VniClaim", "ns1", "shared")
    feed(ctl, cluster, "VniClaim", "ns1", "shared")
    job = cluster.job("ns1", "j", "shared")
    cluster.pod_of(job, "j-0")
    feed(ctl, cluster, "Job", "ns1", "j")
    feed(ctl, cluster, "Pod", "ns1", "j-0")
    assert cluster.lookup("ns1", "j-0") == [VNI]
    claim = cluster.get("VniClaim", "ns1", "shared")
    assert claim["metadata"]["finalizers"] == ["vni.pycxi.dev/claim-protection"]
    # the tenant strips the finalizer and deletes the claim (the edit role allows both)
    cluster.client.patch(PATHS["VniClaim"].format(ns="ns1") + "/shared",
                         {"metadata": {"finalizers": None}})
    cluster.delete("VniClaim", "ns1", "shared")
    ctl.on_claim(dict(claim, metadata=dict(claim["metadata"], finalizers=None)), True)
    hold_while_pods_exist(ctl, cluster, "ns1", ["j-0"])
    finish_and_hand_over(ctl, cluster, "ns1", ["j-0"])


def test_repro4_completed_job_with_terminating_pods_does_not_release(ctl, cluster):
    job = cluster.job("ns1", "j")
    cluster.pod_of(job, "j-0")
    feed(ctl, cluster, "Job", "ns1", "j")
    feed(ctl, cluster, "Pod", "ns1", "j-0")
    assert cluster.lookup("ns1", "j-0") == [VNI]
    # the pod is terminating with a long, tenant-set grace period (the API server sets
    # these two fields on a graceful delete; the fake has no graceful delete, and keeps
    # an object with a deletionTimestamp only while it has a finalizer)
    cluster.client.patch(PATHS["Pod"].format(ns="ns1") + "/j-0", {"metadata": {
        "finalizers": ["test.pycxi.dev/kubelet"]}})
    cluster.client.patch(PATHS["Pod"].format(ns="ns1") + "/j-0", {"metadata": {
        "deletionTimestamp": format_time(time.time()), "deletionGracePeriodSeconds": 3600}})
    feed(ctl, cluster, "Pod", "ns1", "j-0")
    cluster.finish_job("ns1", "j")
    feed(ctl, cluster, "Job", "ns1", "j")
    hold_while_pods_exist(ctl, cluster, "ns1", ["j-0"])
    finish_and_hand_over(ctl, cluster, "ns1", ["j-0"])


def test_completed_pods_hold_until_removed_and_a_pod_started_later_gets_nothing(ctl, cluster):
    """A finished Job lets go at once (no new pod gets the VNI), but its Succeeded pods
    still hold it until they are removed (ttlSecondsAfterFinished, Job deletion)."""
    job = cluster.job("ns1", "j")
    cluster.pod_of(job, "j-0")
    feed(ctl, cluster, "Job", "ns1", "j")
    feed(ctl, cluster, "Pod", "ns1", "j-0")
    cluster.client.patch(PATHS["Pod"].format(ns="ns1") + "/j-0/status",
                         {"status": {"phase": "Succeeded"}})
    feed(ctl, cluster, "Pod", "ns1", "j-0")
    cluster.finish_job("ns1", "j")
    feed(ctl, cluster, "Job", "ns1", "j")
    # a pod of the finished Job appearing now is not given the VNI
    cluster.pod_of(cluster.get("Job", "ns1", "j"), "j-late")
    feed(ctl, cluster, "Pod", "ns1", "j-late")
    assert cluster.lookup("ns1", "j-late") != [VNI]
    hold_while_pods_exist(ctl, cluster, "ns1", ["j-0"])
    cluster.delete("Pod", "ns1", "j-late")
    feed(ctl, cluster, "Pod", "ns1", "j-late", deleted=True)
    assert vni_state(cluster) == "allocated", "j-late was never given it; j-0 holds it"
    finish_and_hand_over(ctl, cluster, "ns1", ["j-0"])


def test_a_pod_deletion_missed_by_the_watch_is_caught_by_the_resync(ctl, cluster):
    job = cluster.job("ns1", "j")
    cluster.pod_of(job, "j-0")
    feed(ctl, cluster, "Job", "ns1", "j")
    feed(ctl, cluster, "Pod", "ns1", "j-0")
    cluster.delete("Job", "ns1", "j")
    feed(ctl, cluster, "Job", "ns1", "j", deleted=True)
    assert vni_state(cluster) == "allocated"
    cluster.delete("Pod", "ns1", "j-0")  # no event delivered
    assert ctl.held(VNI)
    ctl.resync()
    assert not ctl.held(VNI), "the resync's LIST drops a pod the watch missed"
    assert vni_state(cluster) == "allocated", "younger than orphan_age: could be in flight"
    # a dropped VNI with no holder is judged like an orphan: once it is older than
    # orphan_age (wall clock, against the API server's creationTimestamp)
    ctl.config.orphan_age = ctl.store.orphan_age = 0.0
    ctl.resync()
    assert vni_state(cluster) == "quarantined"


def test_nothing_is_released_or_reused_before_the_pod_index_is_warm(client, cluster):
    """A controller that has not listed the pods yet treats every VNI as held."""
    clock = Clock()
    cfg = Config(ranges=((VNI, VNI),), quarantine=2.0, leader_election=False, metrics_port=0)
    c = Reconciler(cfg, client, clock=clock)
    assert c.held(VNI) and c.held(4242)
    c.warm_up()
    assert not c.held(VNI)

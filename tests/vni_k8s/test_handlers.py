"""What the controller must NOT do, checked by calling its handlers and its resync
directly (in-process, fake API server, injected clock) and asserting afterwards: a
subprocess controller plus a sleep would pass these when the controller is merely slow.
The flows that do happen run against a real controller process in test_controller.py.
"""
from __future__ import annotations

import pytest

from kcluster import ANN, Clock, Feeder

from pycxi.vni.reconciler import Config, Reconciler


@pytest.fixture
def ctl(client, cluster):
    clock = Clock()
    c = Reconciler(Config(quarantine=2.0, leader_election=False, metrics_port=0), client,
                   clock=clock)
    c.clock_ = clock
    c.warm_up()
    c.feed = Feeder(c, cluster)
    return c


def held(cluster) -> list:
    return sorted(v for vs in cluster.allocated().values() for v in vs)


def test_unannotated_workloads_get_nothing(ctl, cluster):
    job = cluster.create("Job", "ns1", "plain", template={})
    cluster.pod_of(job, "plain-0")
    off = cluster.create("Job", "ns1", "off", annotations={ANN: "false"}, template={ANN: "false"})
    cluster.pod_of(off, "off-0")
    for kind, name in (("Job", "plain"), ("Pod", "plain-0"), ("Job", "off"), ("Pod", "off-0")):
        ctl.feed(kind, "ns1", name)
    ctl.resync()
    assert cluster.lookup("ns1", "plain-0") == []
    assert cluster.lookup("ns1", "off-0") == []
    assert cluster.vnis() == []


def test_forged_owner_reference_across_namespaces_gets_nothing(ctl, cluster):
    """ownerReferences are written by the pod's author: a pod in ns2 that claims to
    belong to a Job (or a generic owner) of ns1 must not get ns1's VNI."""
    job = cluster.job("ns1", "victim")
    cluster.pod_of(job, "victim-0")
    ctl.feed("Job", "ns1", "victim")
    ctl.feed("Pod", "ns1", "victim-0")
    [v] = cluster.lookup("ns1", "victim-0")
    forged = dict(job, metadata=dict(job["metadata"], namespace="ns2"))
    cluster.create("Pod", "ns2", "intruder", annotations={ANN: "true"}, owner=forged)
    owner = {"apiVersion": "example.com/v1", "kind": "MpiJob",
             "metadata": {"name": "mpi", "uid": "6a0c3e4e-0000-4000-8000-000000000002"}}
    cluster.create("Pod", "ns1", "mpi-0", annotations={ANN: "true"}, owner=owner)
    ctl.feed("Pod", "ns1", "mpi-0")
    [g] = cluster.lookup("ns1", "mpi-0")
    cluster.create("Pod", "ns2", "intruder2", annotations={ANN: "true"}, owner=owner)
    ctl.feed("Pod", "ns2", "intruder")
    ctl.feed("Pod", "ns2", "intruder2")
    ctl.resync()
    for pod in ("intruder", "intruder2"):
        r = cluster.lookup("ns2", pod)
        assert not (isinstance(r, list) and r), (pod, r)
    assert held(cluster) == sorted([v, g])


def test_a_pod_naming_a_vni_in_everything_it_writes_gets_nothing(ctl, cluster):
    cluster.create("VniClaim", "ns2", "theirs")
    ctl.feed("VniClaim", "ns2", "theirs")
    their = cluster.get("VniClaim", "ns2", "theirs")["status"]["vni"]
    cluster.create("Pod", "ns1", "forger", annotations={
        ANN: str(their), "vni.pycxi.dev/vnis": str(their)},
        labels={"vni.pycxi.dev/vni-object": f"vni-{their}"})
    ctl.feed("Pod", "ns1", "forger")
    ctl.resync()
    r = cluster.lookup("ns1", "forger")
    assert r == "notready" or r.startswith("error"), r
    assert held(cluster) == [their]


def test_a_generic_owner_holds_while_one_of_its_pods_exists(ctl, cluster):
    owner = {"apiVersion": "example.com/v1", "kind": "MpiJob",
             "metadata": {"name": "mpi", "uid": "6a0c3e4e-0000-4000-8000-000000000001"}}
    for p in ("mpi-0", "mpi-1"):
        cluster.create("Pod", "ns1", p, annotations={ANN: "true"}, owner=owner)
        ctl.feed("Pod", "ns1", p)
    [g] = cluster.lookup("ns1", "mpi-0")
    cluster.delete("Pod", "ns1", "mpi-0")
    ctl.feed("Pod", "ns1", "mpi-0", deleted=True)
    ctl.clock_.advance(10)
    ctl.resync()
    assert cluster.allocated() == {owner["metadata"]["uid"]: [g]}, "one pod of the owner remains"
    cluster.delete("Pod", "ns1", "mpi-1")
    ctl.feed("Pod", "ns1", "mpi-1", deleted=True)
    assert cluster.allocated() == {} and g in cluster.released()


def test_a_deployment_keeps_one_vni_across_rollouts_and_resyncs(ctl, cluster):
    dep = cluster.create("Deployment", "ns1", "serve", annotations={ANN: "true"},
                         template={ANN: "true"})
    ctl.feed("Deployment", "ns1", "serve")
    rs1 = cluster.create("ReplicaSet", "ns1", "serve-1", annotations={ANN: "true"},
                         template={ANN: "true"}, owner=dep)
    ctl.feed("ReplicaSet", "ns1", "serve-1")
    cluster.pod_of(rs1, "serve-1-a")
    ctl.feed("Pod", "ns1", "serve-1-a")
    [v] = cluster.lookup("ns1", "serve-1-a")
    rs2 = cluster.create("ReplicaSet", "ns1", "serve-2", annotations={ANN: "true"},
                         template={ANN: "true", "rev": "2"}, owner=dep)
    ctl.feed("ReplicaSet", "ns1", "serve-2")
    cluster.pod_of(rs2, "serve-2-a")
    ctl.feed("Pod", "ns1", "serve-2-a")
    assert cluster.lookup("ns1", "serve-2-a") == [v]
    cluster.delete("Pod", "ns1", "serve-1-a")
    ctl.feed("Pod", "ns1", "serve-1-a", deleted=True)
    cluster.delete("ReplicaSet", "ns1", "serve-1")
    ctl.feed("ReplicaSet", "ns1", "serve-1", deleted=True)
    ctl.clock_.advance(60)
    ctl.resync()
    # a fresh controller (a restart) decides the same from the API alone
    fresh = Reconciler(ctl.config, ctl.client, clock=ctl.clock_)
    fresh.warm_up()
    fresh.resync()
    assert cluster.allocated() == {dep["metadata"]["uid"]: [v]}


def test_a_starving_workload_is_requeued_with_backoff_and_gets_the_vni_once_free(client, cluster):
    """Exhaustion: the reconciler asks its wiring for a retry (exponential backoff, one
    queued per workload) and posts one Warning Event; the retry succeeds once the VNI
    is back from quarantine, and a retry made moot meanwhile does nothing."""
    clock, requeued, events = Clock(), [], []
    ctl = Reconciler(Config(ranges=((3000, 3000),), quarantine=2.0, leader_election=False,
                            metrics_port=0), client, clock=clock,
                     requeue=lambda uid, delay: requeued.append((uid, delay)),
                     post_event=lambda body, t, reason, msg: events.append(
                         (body["metadata"]["name"], t, reason)))
    ctl.warm_up()
    feed = Feeder(ctl, cluster)
    cluster.job("ns1", "a")
    feed("Job", "ns1", "a")
    b = cluster.job("ns2", "b")
    feed("Job", "ns2", "b")
    uid = b["metadata"]["uid"]
    [(u, d0)] = requeued
    assert u == uid and 0.4 <= d0 <= 0.6
    ctl.retry(uid)  # still exhausted: queued again, later
    assert [u for u, _ in requeued] == [uid, uid] and 0.8 <= requeued[1][1] <= 1.2
    assert events.count(("b", "Warning", "Exhausted")) == 1, "one Event per reason a minute"
    cluster.finish_job("ns1", "a")
    feed("Job", "ns1", "a")  # no pods: quarantined at once
    assert cluster.released() and not cluster.allocated()
    clock.advance(2.5)
    ctl.retry(uid)
    assert cluster.allocated() == {uid: [3000]}
    assert not ctl.pending and not ctl.attempts and len(requeued) == 2
    ctl.retry(uid)  # a timer that fires after the success: nothing to do
    assert len(requeued) == 2 and cluster.allocated() == {uid: [3000]}


@pytest.mark.parametrize("allocation_events", [False, True])
def test_normal_allocation_events_only_when_asked(client, cluster, allocation_events):
    """A Normal Event per allocation is one more API write per workload: off by default
    (the pod condition and the Vni object say it), on with --allocation-events."""
    events: list = []
    ctl = Reconciler(Config(leader_election=False, metrics_port=0,
                            allocation_events=allocation_events), client, clock=Clock(),
                     post_event=lambda body, t, reason, msg: events.append(
                         (body["metadata"]["name"], t, reason)))
    ctl.warm_up()
    job = cluster.job("ns1", "a")
    Feeder(ctl, cluster)("Job", "ns1", "a")
    assert cluster.allocated().get(job["metadata"]["uid"])
    assert events == ([("a", "Normal", "VniAllocated")] if allocation_events else [])


def test_a_slow_pending_stamp_never_lands_after_the_grant(client, cluster):
    """Two threads stamp one pod: its workload's first reconcile writes "not yet"
    (the claim does not exist) and that write is slow; meanwhile the claim appears and
    the retry grants the VNI.  The older decision must not land after the grant and
    withdraw it (one writer per pod; the later stamp is decided again afterwards)."""
    import threading

    ctl = Reconciler(Config(leader_election=False, metrics_port=0), client, clock=Clock())
    ctl.warm_up()
    feed = Feeder(ctl, cluster)
    job = cluster.job("ns1", "a", "c")
    cluster.pod_of(job, "a-0")
    feed("Pod", "ns1", "a-0")
    gate, first, patch = threading.Event(), [], client.patch

    def slow_first_pod_stamp(path, body, **kw):
        if "/pods/" in path and path.endswith("/status") and not first:
            first.append(body)
            assert gate.wait(10)
        return patch(path, body, **kw)

    client.patch = slow_first_pod_stamp
    try:
        pending = threading.Thread(target=feed, args=("Job", "ns1", "a"))
        pending.start()  # refused (no claim "c"): stamps "not yet", slowly
        for _ in range(500):
            if first:
                break
            threading.Event().wait(0.01)
        assert first and first[0]["status"]["conditions"][0]["status"] == "False"
        cluster.create("VniClaim", "ns1", "c")
        feed("VniClaim", "ns1", "c")
        ctl.retry(job["metadata"]["uid"])  # the claim has its VNI now: granted
        gate.set()
        pending.join(10)
    finally:
        gate.set()
        client.patch = patch
    assert not pending.is_alive()
    got = cluster.lookup("ns1", "a-0")
    assert isinstance(got, list) and len(got) == 1, f"the grant was withdrawn: {got!r}"
    assert ctl.holders.get(got[0])

"""Controller scenarios against the fake API server (kmock on 127.0.0.1: no
kube-apiserver can be installed here; tests/vni_k8s/e2e_kind.sh runs on a real cluster).

The controller runs as a real subprocess (``python -m pycxi.vni.controller``), so that
it can be SIGKILLed and restarted.  There is no kube-controller-manager: the tests
create ReplicaSets and pods the way the Deployment and Job controllers would, and set
Job conditions themselves.  Pods learn their VNI through pycxi.vni.lookup, exactly as
the CNI plugin does.
"""
from __future__ import annotations

import signal

import pytest

from kcluster import ANN, wait_for, wait_watching


def test_job_gets_a_vni_and_releases_it_on_completion(cluster):
    cluster.start_controller()
    job = cluster.job("ns1", "train")
    cluster.pod_of(job, "train-0")
    cluster.pod_of(job, "train-1")
    [v] = cluster.wait_lookup("ns1", "train-0")
    assert cluster.wait_lookup("ns1", "train-1") == [v]
    assert 1024 <= v <= 65535
    assert cluster.allocated() == {job["metadata"]["uid"]: [v]}
    [obj] = cluster.vnis()
    assert obj["metadata"]["name"] == f"vni-{v}"
    assert obj["spec"]["holder"] == {"apiVersion": "batch/v1", "kind": "Job", "namespace": "ns1",
                                     "name": "train", "uid": job["metadata"]["uid"]}

    cluster.finish_job("ns1", "train", "Complete")
    # the Job lets go at once (its key record goes), but its pods still hold the VNI:
    # it is quarantined when they are gone (test_lifecycle.py checks the "not before")
    wait_for(lambda: not cluster.key_records(), what="the Job let go")
    cluster.delete("Pod", "ns1", "train-0")
    cluster.delete("Pod", "ns1", "train-1")
    wait_for(lambda: cluster.released() == {v: job["metadata"]["uid"]}, what="release")
    # quarantined: the next job gets another VNI even though v is not held
    job2 = cluster.job("ns1", "next")
    cluster.pod_of(job2, "next-0")
    [v2] = cluster.wait_lookup("ns1", "next-0")
    assert v2 != v


def test_failed_job_and_deleted_job_release(cluster):
    cluster.start_controller()
    a, b = cluster.job("ns1", "fails"), cluster.job("ns1", "deleted")
    wait_for(lambda: len(cluster.allocated()) == 2, what="two allocations")
    cluster.finish_job("ns1", "fails", "Failed")
    cluster.delete("Job", "ns1", "deleted")
    wait_for(lambda: cluster.allocated() == {}, what="both released")
    assert set(cluster.released().values()) == {a["metadata"]["uid"], b["metadata"]["uid"]}


def test_deployment_rollout_keeps_one_vni(cluster):
    cluster.start_controller()
    dep = cluster.create("Deployment", "ns1", "serve", annotations={ANN: "true"},
                         template={ANN: "true"})
    # the deployment controller copies the Deployment's annotations to its ReplicaSets
    rs1 = cluster.create("ReplicaSet", "ns1", "serve-1", annotations={ANN: "true"},
                         template={ANN: "true"}, owner=dep)
    cluster.pod_of(rs1, "serve-1-a")
    cluster.pod_of(rs1, "serve-1-b")
    [v] = cluster.wait_lookup("ns1", "serve-1-a")
    # rollout: a new ReplicaSet, new pods, the old ones go away
    rs2 = cluster.create("ReplicaSet", "ns1", "serve-2", annotations={ANN: "true"},
                         template={ANN: "true", "rev": "2"}, owner=dep)
    cluster.pod_of(rs2, "serve-2-a")
    assert cluster.wait_lookup("ns1", "serve-2-a") == [v]
    cluster.delete("Pod", "ns1", "serve-1-a")
    cluster.delete("ReplicaSet", "ns1", "serve-1")
    cluster.pod_of(rs2, "serve-2-b")
    assert cluster.wait_lookup("ns1", "serve-2-b") == [v]
    assert cluster.wait_lookup("ns1", "serve-1-b") == [v]
    # (that a resync keeps it so: test_handlers.py, without sleeping)
    assert cluster.allocated() == {dep["metadata"]["uid"]: [v]}
    cluster.delete("Deployment", "ns1", "serve")
    for pod in ("serve-1-b", "serve-2-a", "serve-2-b"):  # the garbage collector's part
        cluster.delete("Pod", "ns1", pod)
    wait_for(lambda: cluster.allocated() == {}, what="release on deletion")


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet", "VolcanoJob"])
def test_other_workload_kinds(cluster, kind):
    cluster.start_controller()
    wl = cluster.create(kind, "ns1", "w", annotations={ANN: "true"}, template={ANN: "true"})
    cluster.pod_of(wl, "w-0")
    [v] = cluster.wait_lookup("ns1", "w-0")
    assert cluster.allocated() == {wl["metadata"]["uid"]: [v]}
    if kind == "VolcanoJob":
        cluster.client.patch(f"/apis/batch.volcano.sh/v1alpha1/namespaces/ns1/jobs/w/status",
                             {"status": {"state": {"phase": "Completed"}}})
    else:
        cluster.delete(kind, "ns1", "w")
    cluster.delete("Pod", "ns1", "w-0")
    wait_for(lambda: cluster.allocated() == {}, what="release")


def test_bare_pod_and_generic_owner(cluster):
    cluster.start_controller()
    bare = cluster.create("Pod", "ns1", "solo", annotations={ANN: "true"})
    [v] = cluster.wait_lookup("ns1", "solo")
    assert cluster.allocated() == {bare["metadata"]["uid"]: [v]}
    # an owner kind the controller does not watch: the pods ask, the owner holds the VNI
    owner = {"apiVersion": "example.com/v1", "kind": "MpiJob",
             "metadata": {"name": "mpi", "uid": "6a0c3e4e-0000-4000-8000-000000000001"}}
    cluster.create("Pod", "ns1", "mpi-0", annotations={ANN: "true"}, owner=owner)
    cluster.create("Pod", "ns1", "mpi-1", annotations={ANN: "true"}, owner=owner)
    [g] = cluster.wait_lookup("ns1", "mpi-0")
    assert cluster.wait_lookup("ns1", "mpi-1") == [g] and g != v
    cluster.client.patch("/api/v1/namespaces/ns1/pods/solo/status",
                         {"status": {"phase": "Succeeded"}})
    # (that the owner holds while one of its pods exists: test_handlers.py)
    cluster.delete("Pod", "ns1", "mpi-0")
    cluster.delete("Pod", "ns1", "mpi-1")
    cluster.delete("Pod", "ns1", "solo")
    wait_for(lambda: cluster.allocated() == {}, what="both released")


def test_claim_shared_by_two_jobs(cluster):
    cluster.start_controller()
    claim = cluster.create("VniClaim", "ns1", "shared")
    a, b = cluster.job("ns1", "a", "shared"), cluster.job("ns1", "b", "shared")
    cluster.pod_of(a, "a-0")
    cluster.pod_of(b, "b-0")
    [v] = cluster.wait_lookup("ns1", "a-0")
    assert cluster.wait_lookup("ns1", "b-0") == [v]
    st = wait_for(lambda: cluster.get("VniClaim", "ns1", "shared").get("status"), what="status")
    assert st["vni"] == v
    assert [c["status"] for c in st["conditions"] if c["type"] == "Ready"] == ["True"]
    assert cluster.allocated() == {claim["metadata"]["uid"]: [v]}, "jobs hold no VNI of their own"
    # own VNI plus the claim's
    both = cluster.job("ns1", "both", "true,shared")
    cluster.pod_of(both, "both-0")
    vs = cluster.wait_lookup("ns1", "both-0")
    assert len(vs) == 2 and v in vs

    # deleting the claim while jobs use it keeps the VNI until the last one finishes
    cluster.delete("VniClaim", "ns1", "shared")
    wait_for(lambda: any(c.get("reason") == "InUse" for c in (
        cluster.get("VniClaim", "ns1", "shared").get("status") or {}).get("conditions", [])),
        what="InUse")
    for j in ("a", "b", "both"):
        cluster.finish_job("ns1", j)
        cluster.delete("Pod", "ns1", f"{j}-0")
    wait_for(lambda: claim["metadata"]["uid"] in cluster.released().values(), what="claim release")

    def claim_gone():
        try:
            cluster.get("VniClaim", "ns1", "shared")
            return False
        except Exception:
            return True
    wait_for(claim_gone, what="finalizer removed")


def test_claims_are_namespace_local_and_foreign_vnis_are_not_granted(cluster):
    cluster.start_controller()
    theirs = cluster.create("VniClaim", "ns2", "theirs")
    wait_for(lambda: (cluster.get("VniClaim", "ns2", "theirs").get("status") or {}).get("vni"),
             what="their claim allocated")
    their_vni = cluster.get("VniClaim", "ns2", "theirs")["status"]["vni"]
    # a workload naming another namespace's claim is refused
    j = cluster.job("ns1", "sneaky", "ns2/theirs")
    cluster.pod_of(j, "sneaky-0")
    wait_for(lambda: (cluster.pod_condition("ns1", "sneaky-0") or {}).get("reason") == "ClaimRefused",
             what="ClaimRefused")
    assert cluster.lookup("ns1", "sneaky-0").startswith("error")
    # the same name in its own namespace does not exist: not granted, only "wait"
    j2 = cluster.job("ns1", "samename", "theirs")
    cluster.pod_of(j2, "samename-0")
    wait_for(lambda: (cluster.pod_condition("ns1", "samename-0") or {}).get("reason") == "ClaimNotFound",
             what="ClaimNotFound")
    assert cluster.lookup("ns1", "samename-0") == "notready"
    # (a pod naming the VNI in everything it writes: test_handlers.py)
    for pod in ("sneaky-0", "samename-0"):
        r = cluster.lookup("ns1", pod)
        assert not (isinstance(r, list) and their_vni in r), (pod, r)
    assert cluster.allocated() == {theirs["metadata"]["uid"]: [their_vni]}


def test_exhaustion_is_reported_and_retried(cluster):
    cluster.start_controller("--ranges", "3000-3001")
    jobs = [cluster.job("ns1", f"j{i}") for i in range(3)]
    for i, j in enumerate(jobs):
        cluster.pod_of(j, f"j{i}-0")
    wait_for(lambda: len(cluster.allocated()) == 2, what="two allocated")
    starving = wait_for(lambda: [i for i in range(3) if (cluster.pod_condition("ns1", f"j{i}-0") or {})
                                 .get("reason") == "Exhausted"], what="Exhausted condition")
    [i] = starving
    assert cluster.lookup("ns1", f"j{i}-0") == "notready"
    # kopf posts Events in the background: wait for it rather than read once
    wait_for(lambda: any(e.get("reason") == "Exhausted" and e["involvedObject"]["name"] == f"j{i}"
                         for e in cluster.client.list("/api/v1/namespaces/ns1/events")),
             what="the Exhausted Event")
    # free one: after its quarantine (3 s), the starving job gets it by retrying
    other = next(k for k in range(3) if k != i)
    cluster.finish_job("ns1", f"j{other}")
    cluster.delete("Pod", "ns1", f"j{other}-0")
    [v] = cluster.wait_lookup("ns1", f"j{i}-0", timeout=30)
    assert v in (3000, 3001)


def test_sigkilled_controller_restarts_without_duplicate_or_leak(cluster):
    p = cluster.start_controller(name="first")
    jobs = {}
    for i in range(40):
        jobs[f"j{i}"] = cluster.job("ns1", f"j{i}")
    wait_for(lambda: len(cluster.allocated()) >= 10, what="some allocations")
    p.send_signal(signal.SIGKILL)
    p.wait()
    # while it is down: more jobs, some finish, some are deleted
    for i in range(40, 60):
        jobs[f"j{i}"] = cluster.job("ns1", f"j{i}")
    for i in range(0, 60, 5):
        cluster.finish_job("ns1", f"j{i}")
    for i in range(1, 60, 7):
        cluster.delete("Job", "ns1", f"j{i}")
        jobs.pop(f"j{i}")
    # a create the kill cut off before its key record is an orphan: reclaimed after 3 s
    cluster.start_controller("--orphan-age", "3", name="second")
    live = {j["metadata"]["uid"] for n, j in jobs.items() if int(n[1:]) % 5}

    def converged():
        a = cluster.allocated()
        return set(a) == live and all(len(v) == 1 for v in a.values())
    wait_for(converged, timeout=40, what="convergence after restart")
    a = cluster.allocated()
    vnis = [v for vs in a.values() for v in vs]
    assert len(vnis) == len(set(vnis)) == len(live)


def test_two_replicas_racing_on_500_jobs_never_share_a_vni(cluster, api):
    cluster.start_controller(name="r1", resync=5)
    cluster.start_controller(name="r2", resync=5)
    wait_watching(api, replicas=2)
    uids = {cluster.job("ns1", f"j{i}")["metadata"]["uid"] for i in range(500)}
    wait_for(lambda: set(cluster.allocated()) >= uids, timeout=120, interval=0.5,
             what="500 allocations")
    # losers of a race on the same key delete their own Vni right after losing
    wait_for(lambda: all(len(v) == 1 for v in cluster.allocated().values()), timeout=30,
             what="race losers cleaned up")
    objs = [o for o in cluster.vnis() if not (o.get("status") or {}).get("releasedAt")]
    by_holder: dict = {}
    for o in objs:
        by_holder.setdefault(o["spec"]["holder"]["uid"], []).append(o["spec"]["vni"])
    assert set(by_holder) == uids
    assert all(len(v) == 1 for v in by_holder.values()), "a job holds two VNIs"
    vnis = [v[0] for v in by_holder.values()]
    assert len(set(vnis)) == 500, "a VNI held twice"
    assert "Traceback" not in cluster.log("r1") + cluster.log("r2")


def test_leader_election_one_active_replica_and_failover(cluster):
    a = cluster.start_controller("--lease-duration", "3", name="la", leader=True)
    wait_for(lambda: _lease_holder(cluster) == "la", what="la leads")
    b = cluster.start_controller("--lease-duration", "3", name="lb", leader=True)
    job = cluster.job("ns1", "x")
    cluster.pod_of(job, "x-0")
    [v] = cluster.wait_lookup("ns1", "x-0")
    assert _lease_holder(cluster) == "la"
    cluster.stop(a, signal.SIGKILL)
    wait_for(lambda: _lease_holder(cluster) == "lb", timeout=30, what="failover")
    job2 = cluster.job("ns1", "y")
    cluster.pod_of(job2, "y-0")
    [v2] = cluster.wait_lookup("ns1", "y-0", timeout=30)
    assert v2 != v
    cluster.stop(b)


def _lease_holder(cluster):
    try:
        return cluster.client.get("/apis/coordination.k8s.io/v1/namespaces/pycxi-vni/leases/"
                                   "pycxi-vni-controller")["spec"].get("holderIdentity")
    except Exception:
        return None


def test_removing_the_annotation_lets_go_but_the_pods_keep_their_vni(cluster):
    cluster.start_controller()
    dep = cluster.create("Deployment", "ns1", "d", annotations={ANN: "true"}, template={ANN: "true"})
    cluster.pod_of(dep, "d-0")
    [v] = cluster.wait_lookup("ns1", "d-0")
    cluster.client.patch("/apis/apps/v1/namespaces/ns1/deployments/d", {
        "metadata": {"annotations": {ANN: None}},
        "spec": {"template": {"metadata": {"annotations": {ANN: None}}}}})
    wait_for(lambda: not cluster.key_records(), what="the Deployment let go")
    assert cluster.lookup("ns1", "d-0") == [v], "a grant is never withdrawn"
    cluster.delete("Pod", "ns1", "d-0")
    wait_for(lambda: v in cluster.released(), what="release once the pod is gone")


def test_api_errors_are_reported_and_retried(cluster, api):
    """The API server fails every Vni create for a while: the pods wait (ApiError, CNI
    code 11), a Warning Event says why, the controller keeps running and retries."""
    p = cluster.start_controller()
    wait_watching(api)  # started: the faults hit the allocation, not the start
    api.kube.faults[("POST", "vnis")] = 3
    job = cluster.job("ns1", "flaky")
    cluster.pod_of(job, "flaky-0")
    wait_for(lambda: (cluster.pod_condition("ns1", "flaky-0") or {}).get("reason") == "ApiError",
             what="ApiError condition")
    assert cluster.lookup("ns1", "flaky-0") == "notready"
    [v] = cluster.wait_lookup("ns1", "flaky-0", timeout=40)
    assert api.kube.faults[("POST", "vnis")] == 0
    wait_for(lambda: any(e.get("reason") == "ApiError" and e["type"] == "Warning"
                         for e in cluster.client.list("/api/v1/namespaces/ns1/events")),
             what="the ApiError Event")  # posted by kopf in the background
    assert p.poll() is None, "the controller survived"
    assert cluster.allocated() == {job["metadata"]["uid"]: [v]}


def test_lost_create_responses_leave_no_leak(cluster, api):
    """Creates that commit but whose response is lost (500 after the fact) leave Vni
    objects no key record points to; the resync quarantines them (orphan age 2 s)."""
    p = cluster.start_controller("--orphan-age", "2")
    wait_watching(api)
    api.kube.lost[("POST", "vnis")] = 3
    job = cluster.job("ns1", "lossy")
    cluster.pod_of(job, "lossy-0")
    [v] = cluster.wait_lookup("ns1", "lossy-0", timeout=40)
    assert api.kube.lost[("POST", "vnis")] == 0
    wait_for(lambda: cluster.allocated() == {job["metadata"]["uid"]: [v]}, timeout=30,
             what="orphans quarantined")
    assert len(cluster.released()) == 3, "the three orphans are in quarantine, not reused"
    assert p.poll() is None

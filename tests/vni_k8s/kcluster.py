"""Helpers for the controller tests: a controller subprocess and workloads to feed it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pycxi.vni.kube import KubeClient
from pycxi.vni.lookup import VniLookupError, VniNotReady, lookup_pod_vnis

REPO = Path(__file__).resolve().parents[2]
VNIS = "/apis/vni.pycxi.dev/v1alpha1/vnis"
ANN = "vni.pycxi.dev/vni"

PATHS = {
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "VolcanoJob": "/apis/batch.volcano.sh/v1alpha1/namespaces/{ns}/jobs",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "VniClaim": "/apis/vni.pycxi.dev/v1alpha1/namespaces/{ns}/vniclaims",
}
API_VERSIONS = {"Job": "batch/v1", "Deployment": "apps/v1", "ReplicaSet": "apps/v1",
                "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
                "VolcanoJob": "batch.volcano.sh/v1alpha1", "Pod": "v1",
                "VniClaim": "vni.pycxi.dev/v1alpha1"}


def wait_for(fn, timeout: float = 30.0, interval: float = 0.05, what: str = ""):
    """Poll ``fn`` until it returns something truthy; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or fn}")
        time.sleep(interval)


def controller_requests(api, since: int = 0) -> list:
    """The fake API server's log of the requests controllers made (kopf's and our
    client's), from entry ``since`` on."""
    return [r for r in list(api.kube._requests)[since:]
            if r.headers.get("User-Agent", "").startswith(("kopf", "pycxi-vni-controller"))]


def wait_watching(api, replicas: int = 1, plurals=("jobs", "pods")) -> None:
    """Until ``replicas`` controllers watch ``plurals`` (kopf starts its watches after
    the startup handlers, i.e. after the pod index is warm)."""
    def watching():
        n: dict = {}
        for r in controller_requests(api):
            if r.params.get("watch") == "true" and r.resource is not None:
                n[r.resource.plural] = n.get(r.resource.plural, 0) + 1
        return all(n.get(p, 0) >= replicas for p in plurals)
    wait_for(watching, what=f"{replicas} controller(s) watching {plurals}")


class Cluster:
    """The fake API server plus helpers that play the Kubernetes controllers (there is
    no kube-controller-manager here: tests create ReplicaSets and pods themselves)."""

    def __init__(self, client: KubeClient, kubeconfig: str, tmp: Path) -> None:
        self.client = client
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.procs: list = []

    # -- controllers --

    def start_controller(self, *args: str, name: str = "ctl", quarantine: float = 3,
                         resync: float = 1.0, leader: bool = False) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        cmd = [sys.executable, "-m", "pycxi.vni.controller", "--kubeconfig", self.kubeconfig,
               "--metrics-port", "0", "--resync", str(resync), "--quarantine", str(quarantine),
               "--log-format", "plain", *args]
        if not leader:
            cmd.append("--no-leader-election")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
            POD_NAME=name)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        for p in self.procs:
            self.stop(p)

    def log(self, name: str = "ctl") -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    # -- objects --

    def create(self, kind: str, ns: str, name: str, *, annotations=None, template=None,
               owner=None, spec=None, labels=None) -> dict:
        body = {"apiVersion": API_VERSIONS[kind], "kind": "Job" if kind == "VolcanoJob" else kind,
                "metadata": {"name": name, "annotations": annotations or {},
                             "labels": labels or {}},
                "spec": dict(spec or {})}
        if template is not None:
            body["spec"]["template"] = {"metadata": {"annotations": template}}
        if owner is not None:
            body["metadata"]["ownerReferences"] = [{
                "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}]
        return self.client.create(PATHS[kind].format(ns=ns), body)

    def job(self, ns: str, name: str, value: str = "true") -> dict:
        return self.create("Job", ns, name, annotations={ANN: value}, template={ANN: value})

    def pod_of(self, owner: dict, name: str, annotations=None) -> dict:
        """A pod as its controller would create it: template annotations, ownerRef."""
        tmpl = ((owner.get("spec") or {}).get("template") or {}).get("metadata") or {}
        ann = dict(tmpl.get("annotations") or {})
        ann.update(annotations or {})
        return self.create("Pod", owner["metadata"]["namespace"], name, annotations=ann,
                           owner=owner)

    def get(self, kind: str, ns: str, name: str) -> dict:
        return self.client.get(PATHS[kind].format(ns=ns) + f"/{name}")

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.client.delete(PATHS[kind].format(ns=ns) + f"/{name}")

    def finish_job(self, ns: str, name: str, how: str = "Complete") -> None:
        self.client.patch(PATHS["Job"].format(ns=ns) + f"/{name}/status", {"status": {
            "conditions": [{"type": how, "status": "True"}]}})

    def vnis(self) -> list:
        return self.client.list(VNIS)

    def allocated(self) -> dict:
        """holder uid -> [vni] of the Vni objects not released."""
        out: dict = {}
        for o in self.vnis():
            if not (o.get("status") or {}).get("releasedAt"):
                out.setdefault(o["spec"]["holder"]["uid"], []).append(o["spec"]["vni"])
        return out

    def key_records(self) -> list:
        """The controller's key records (which key holds which VNI)."""
        return self.client.list("/apis/coordination.k8s.io/v1/namespaces/pycxi-vni/leases",
                                label_selector="vni.pycxi.dev/role=key")

    def released(self) -> dict:
        return {o["spec"]["vni"]: o["spec"]["holder"]["uid"] for o in self.vnis()
                if (o.get("status") or {}).get("releasedAt")}

    def lookup(self, ns: str, pod: str):
        """What the CNI plugin would get: a VNI list, "notready" or "error"."""
        try:
            return lookup_pod_vnis(ns, pod, kubeconfig=self.kubeconfig)
        except VniNotReady:
            return "notready"
        except VniLookupError as e:
            return f"error: {e}"

    def wait_lookup(self, ns: str, pod: str, timeout: float = 30.0):
        try:
            return wait_for(lambda: (lambda r: r if isinstance(r, list) and r else None)(
                self.lookup(ns, pod)), timeout, what=f"VNI for pod {ns}/{pod}")
        except AssertionError as e:
            # what the controllers said, and whether they still run: a timeout alone says little
            logs = "".join(f"\n--- {f.name} (tail)\n" + f.read_text(errors="replace")[-3000:]
                           for f in sorted(self.tmp.glob("*.log")))
            alive = [(p.args[-1], p.poll()) for p in self.procs]
            raise AssertionError(f"{e}; last lookup: {self.lookup(ns, pod)!r}; "
                                 f"controllers (last arg, exit code): {alive}{logs}") from None

    def pod_condition(self, ns: str, pod: str):
        for c in (self.get("Pod", ns, pod).get("status") or {}).get("conditions") or ():
            if c.get("type") == "vni.pycxi.dev/Allocated":
                return c
        return None



class Clock:
    """An injectable clock (epoch seconds) for an in-process controller."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class Feeder:
    """Delivers objects to an in-process controller the way kopf's watch would: the
    object's current state from the API, or its deletion (with its last state)."""

    def __init__(self, ctl, cluster: Cluster) -> None:
        self.ctl, self.cluster = ctl, cluster
        self.last: dict = {}

    def __call__(self, kind: str, ns: str, name: str, deleted: bool = False) -> None:
        from pycxi.vni.rules import CLAIM, POD, REPLICASET, WATCHED_KINDS

        kinds = {k.kind: k for k in WATCHED_KINDS}
        kinds["VolcanoJob"] = [k for k in WATCHED_KINDS if k.group == "batch.volcano.sh"][0]
        kinds["Job"] = WATCHED_KINDS[0]
        if deleted:
            body = self.last[(kind, ns, name)]
        else:
            body = self.cluster.get(kind, ns, name)
            self.last[(kind, ns, name)] = body
        if kind == "Pod":
            self.ctl.on_workload(POD, body, deleted)
        elif kind == "VniClaim":
            self.ctl.on_claim(body, deleted)
        elif kind == "ReplicaSet":
            self.ctl.on_replicaset(body, deleted)
        else:
            self.ctl.on_workload(kinds[kind], body, deleted)
        assert CLAIM and REPLICASET  # imported for the dispatch above

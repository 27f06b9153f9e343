"""VNI sources in their precedence: static > localAllocator (SQLite) > kubernetes (one GET of
the pod, status condition written by the controller) > none."""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cniutil import index_links, PREV, count_services, cxi_conf, plugin_call, records, services, sim_reset

COND = "vni.pycxi.dev/Allocated"


class FakeApi:
    """GET /api/v1/namespaces/<ns>/pods/<name> from a dict; counts the requests."""

    def __init__(self):
        self.pods = {}
        self.requests = []
        api = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                api.requests.append((self.path, self.headers.get("Authorization")))
                parts = self.path.strip("/").split("/")
                pod = None
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
                    pod = api.pods.get((parts[3], parts[5]))
                body = json.dumps(pod if pod else {"kind": "Status", "code": 404, "reason": "NotFound"})
                self.send_response(200 if pod else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.srv.server_address[1]}"

    def pod(self, ns, name, cond=None, asks=True, uid="u1"):
        obj = {"metadata": {"namespace": ns, "name": name, "uid": uid,
                            "annotations": {"vni.pycxi.dev/vni": "true"} if asks else {}},
               "status": {"conditions": [cond] if cond else []}}
        self.pods[(ns, name)] = obj

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def api(tmp_path):
    a = FakeApi()
    kc = tmp_path / "kubeconfig.json"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": a.url}}],
        "users": [{"name": "u", "user": {"token": "sekret"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    a.kubeconfig = str(kc)
    try:
        yield a
    finally:
        a.close()


def k8s_args(ns, pod, uid="u1"):
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_UID={uid};K8S_POD_INFRA_CONTAINER_ID=x"


def test_kubernetes_source(cni_env, netns, api):
    pod = netns.add()
    c = dict(cxi_conf(cni_env, kubernetes={"kubeconfig": api.kubeconfig, "timeout": 2}),
             cniVersion="1.0.0", name="k8s", prevResult=PREV)
    path = netns.path(pod)

    # asked, not allocated yet -> 11, nothing created
    api.pod("ns1", "p1")
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k1", netns_path=path, args=k8s_args("ns1", "p1"))
    assert rc == 1 and out["code"] == 11, out
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    assert len(api.requests) == 1 and api.requests[0][1] == "Bearer sekret"

    # allocated -> a service with those VNIs; exactly one request per ADD
    api.pod("ns1", "p1", {"type": COND, "status": "True", "reason": "Allocated", "message": "vnis=4242,4243"})
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k1", netns_path=path, args=k8s_args("ns1", "p1"))
    assert rc == 0, out
    assert len(api.requests) == 2
    assert sorted(services()["cxi0"][0]["vnis"]) == [4242, 4243]
    assert plugin_call(cni_env, "DEL", c, cid="k1")[0] == 0
    assert count_services() == 0

    # a replaced pod (other uid) never inherits the answer
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k2", netns_path=path, args=k8s_args("ns1", "p1", "u2"))
    assert rc == 1 and out["code"] == 104, out

    # did not ask -> no service, ADD succeeds
    api.pod("ns1", "p2", asks=False)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k3", netns_path=path, args=k8s_args("ns1", "p2"))
    assert rc == 0 and out == dict(PREV) and count_services() == 0
    assert plugin_call(cni_env, "DEL", c, cid="k3")[0] == 0

    # the pod's own annotation never names a VNI: only the status condition counts
    api.pod("ns1", "p3", asks=True)
    api.pods[("ns1", "p3")]["metadata"]["annotations"]["vni.pycxi.dev/vni"] = "4999"
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k4", netns_path=path, args=k8s_args("ns1", "p3"))
    assert rc == 1 and out["code"] == 11 and count_services() == 0

    # unknown pod, unreachable API -> 104 within the bound
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k5", netns_path=path, args=k8s_args("ns1", "nope"))
    assert rc == 1 and out["code"] == 104
    api.close()
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k6", netns_path=path, args=k8s_args("ns1", "p1"),
                             timeout=20)
    assert rc == 1 and out["code"] == 104 and count_services() == 0


def test_static_wins_over_other_sources(cni_env, netns, api, tmp_path):
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[4300], kubernetes={"kubeconfig": api.kubeconfig},
                      localAllocator={"path": str(tmp_path / "vni.db")}),
             cniVersion="1.0.0", name="prec", prevResult=PREV)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="s1", netns_path=netns.path(pod),
                             args=k8s_args("ns1", "p1"))
    assert rc == 0 and services()["cxi0"][0]["vnis"] == [4300]
    assert api.requests == [] and not (tmp_path / "vni.db").exists()
    assert plugin_call(cni_env, "DEL", c, cid="s1")[0] == 0


def test_local_allocator(cni_env, netns, tmp_path):
    db = str(tmp_path / "vni.db")
    c = dict(cxi_conf(cni_env, localAllocator={"path": db, "ranges": [[5000, 5009]], "quarantine": 0}),
             cniVersion="1.0.0", name="local", prevResult=PREV)
    pods = [netns.add() for _ in range(3)]
    got = []
    for i, pod in enumerate(pods):
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid=f"l{i}", netns_path=netns.path(pod),
                                 args=f"K8S_POD_NAME=ctr{i}")
        assert rc == 0, out
        [row] = [r for r in services()["cxi0"] if r["netns"] == os.stat(netns.path(pod)).st_ino]
        got.append(row["vnis"][0])
    assert len(set(got)) == 3 and all(5000 <= v <= 5009 for v in got)
    for i in range(3):
        assert plugin_call(cni_env, "DEL", c, cid=f"l{i}")[0] == 0
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    from pycxi.vni.sqlite import SqliteStore
    s = SqliteStore(db, ranges=[(5000, 5009)], quarantine=0)
    try:
        assert s.list() == []            # per-pod VNIs released on DEL
    finally:
        s.close()


@pytest.mark.parametrize("strict", [False, True])
def test_local_allocator_job_key_shared(cni_env, netns, tmp_path, strict):
    """A configured job key: every container of the network gets the job's VNI.  Two pods of
    the job on one node: fine where exact-VNI profiles may overlap (fd6adba, the software
    device's default); refused with 101 under the strict 13.1/14.0.0 rule."""
    if strict:
        assert sim_reset(2, dict(os.environ, PYCXI_SIM_STRICT_VNI_OVERLAP="1")).returncode == 0
    db = str(tmp_path / "vni.db")
    c = dict(cxi_conf(cni_env, localAllocator={"path": db, "key": "job42"}),
             cniVersion="1.0.0", name="job", prevResult=PREV)
    a, b = netns.add(), netns.add()
    assert plugin_call(cni_env, "ADD", c, cid="j1", netns_path=netns.path(a))[0] == 0
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="j2", netns_path=netns.path(b))
    if strict:
        assert rc == 1 and out["code"] == 101
    else:
        assert rc == 0, out
        rows = services()["cxi0"]
        assert len(rows) == 2 and rows[0]["vnis"] == rows[1]["vnis"]
    assert plugin_call(cni_env, "DEL", c, cid="j2")[0] == 0
    assert plugin_call(cni_env, "DEL", c, cid="j1")[0] == 0
    assert count_services() == 0


def test_kubernetes_path_imports_stdlib_only(cni_env, netns, api):
    """The Kubernetes source adds the standard library's HTTP client and nothing else: no
    PyYAML (the kubeconfig is JSON), no Kubernetes client, no kopf, no asyncio, no sqlite3."""
    import subprocess
    pod = netns.add()
    api.pod("ns1", "p1", {"type": COND, "status": "True", "reason": "Allocated", "message": "vnis=4400"})
    c = dict(cxi_conf(cni_env, kubernetes={"kubeconfig": api.kubeconfig}), cniVersion="1.0.0",
             name="k8si", prevResult=PREV)
    env = dict(os.environ, **cni_env.env, CNI_COMMAND="ADD", CNI_CONTAINERID="ki", CNI_IFNAME="eth0",
               CNI_NETNS=netns.path(pod), CNI_PATH=cni_env.bin, CNI_ARGS=k8s_args("ns1", "p1"))
    from cniutil import PY
    p = subprocess.run([PY, "-IS", "-X", "importtime", os.path.join(cni_env.bin, "cxi")],
                       input=json.dumps(c), env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    mods = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if "import time:" in line}
    assert "pycxi.vni.lookup" in mods and "http.client" in mods
    bad = {m for m in mods if m.split(".")[0] in ("yaml", "kubernetes", "kopf", "asyncio", "sqlite3",
                                                   "aiohttp", "requests", "logging")}
    assert not bad, bad
    assert plugin_call(cni_env, "DEL", c, cid="ki")[0] == 0

"""VNI sources in their precedence: static > localAllocator (SQLite) > kubernetes (one GET of
the pod, status condition written by the controller) > none."""
import json
import os
import threading
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cniutil import (index_links, PREV, count_services, cxi_conf, netns_mounts_under, plugin_call,
                     records, services, sim_reset)

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
    """The Kubernetes source adds a socket and JSON and nothing else: not even http.client
    (and the email package under it), no PyYAML (the kubeconfig is JSON), no Kubernetes
    client, no kopf, no asyncio, no sqlite3."""
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
    assert "pycxi.vni.lookup" in mods and "socket" in mods
    bad = {m for m in mods if m.split(".")[0] in ("yaml", "kubernetes", "kopf", "asyncio", "sqlite3",
                                                   "aiohttp", "requests", "logging", "http",
                                                   "email", "ssl")}
    assert not bad, bad
    assert plugin_call(cni_env, "DEL", c, cid="ki")[0] == 0


# --- errors a user can act on ----------------------------------------------------------------

class OddApi:
    """A real HTTP server on loopback that answers the pod GET badly, in one of several ways
    (no kube-apiserver here: this stands in for a slow API or a proxy in front of it)."""

    def __init__(self, mode):
        self.mode = mode
        self.stop = threading.Event()
        api = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _answer(self):
                m = api.mode
                if m == "trickle":       # headers at once, then one byte every 0.2 s
                    body = json.dumps({"metadata": {"name": "p1"}, "pad": "x" * 400}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.flush()
                    for b in body:
                        if api.stop.wait(0.2):
                            return
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                    return
                if m == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "https://login.example/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if m == "html":
                    body = b"<html><body>Please log in</body></html>"
                elif m == "conditions-not-a-list":
                    body = json.dumps({"kind": "Pod", "metadata": {"namespace": "ns1", "name": "p1",
                                       "annotations": {"vni.pycxi.dev/vni": "true"}},
                                       "status": {"conditions": {"type": COND}}}).encode()
                elif m == "condition-status-odd":
                    body = json.dumps({"kind": "Pod", "metadata": {"namespace": "ns1", "name": "p1",
                                       "annotations": {"vni.pycxi.dev/vni": "true"}},
                                       "status": {"conditions": [{"type": COND, "status": 1}]}}).encode()
                elif m == "not-a-pod":
                    body = json.dumps({"kind": "Status", "status": "Success"}).encode()
                else:
                    body = b"[]"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.srv.shutdown()
        self.srv.server_close()


def _odd_kubeconfig(cni_env, api):
    with open(cni_env.kubeconfig, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "x",
                   "clusters": [{"name": "c", "cluster": {
                       "server": f"http://127.0.0.1:{api.srv.server_address[1]}"}}],
                   "users": [{"name": "u", "user": {"token": "t"}}],
                   "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}, f)


def test_kubernetes_timeout_is_a_total_deadline(cni_env, netns):
    """`timeout: 1` bounds the whole lookup: an API that trickles its answer a byte at a time
    (each recv well within 1 s; the body would take 80 s) fails the ADD after ~1 s."""
    import time
    api = OddApi("trickle")
    try:
        _odd_kubeconfig(cni_env, api)
        pod = netns.add()
        c = dict(cxi_conf(cni_env, kubernetes={"timeout": 1}), cniVersion="1.0.0", name="k8s",
                 prevResult=PREV)
        t0 = time.monotonic()
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid="t1", netns_path=netns.path(pod),
                                 args=k8s_args("ns1", "p1"), timeout=60)
        took = time.monotonic() - t0
    finally:
        api.close()
    assert rc == 1 and out["code"] == 104 and "timed out" in out["details"], out
    assert took < 6, took        # 1 s of lookup + the interpreter's start on a loaded machine
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


@pytest.mark.parametrize("mode,why", [("redirect", "302"), ("html", "not JSON"),
                                      ("conditions-not-a-list", "malformed"),
                                      ("condition-status-odd", "malformed"),
                                      ("not-a-pod", "no Pod"), ("array", "not a JSON object")])
def test_kubernetes_bad_answers_fail_the_add(cni_env, netns, mode, why):
    """A pod that asked for a VNI must not start without its service because the API (or a
    proxy) answered a redirect, an HTML page or a mangled pod: 104, nothing created."""
    api = OddApi(mode)
    try:
        _odd_kubeconfig(cni_env, api)
        pod = netns.add()
        c = dict(cxi_conf(cni_env, kubernetes={"timeout": 2}), cniVersion="1.0.0", name="k8s",
                 prevResult=PREV)
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid="b1", netns_path=netns.path(pod),
                                 args=k8s_args("ns1", "p1"))
    finally:
        api.close()
    assert rc == 1 and out["code"] == 104 and why in out["details"], out
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


@pytest.mark.parametrize("where", ["/proc/1/no/vni.db", "dir", "/dev/null"])
def test_unopenable_local_database_is_an_io_error(cni_env, netns, where):
    """The node's localAllocator.path cannot be opened (no such directory, a directory, not a
    file): code 5 naming the path, not 999; nothing created."""
    from cniutil import write_node_conf
    path = str(cni_env.tmp / "dbdir") if where == "dir" else where
    if where == "dir":
        os.mkdir(path)
    cni_env.env["PYCXI_CNI_POLICY"] = write_node_conf(
        cni_env.tmp / "p.json", {"localAllocator": {"path": path, "quarantine": 0},
                                 "logDir": str(cni_env.tmp)})
    pod = netns.add()
    c = dict(cxi_conf(cni_env, localAllocator={}), cniVersion="1.0.0", name="loc", prevResult=PREV)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="d1", netns_path=netns.path(pod),
                             args="K8S_POD_NAME=p")
    assert rc == 1 and out["code"] == 5 and path in out["msg"], out
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def test_enospc_names_the_exhausted_resource_once(cni_env, netns):
    """The first pod reserves every TXQ; the second cannot: code 11 naming TXQ, and the
    driver's fail info appears once in the details."""
    a, b = netns.add(), netns.add()
    c = dict(cxi_conf(cni_env, vnis=[4500], devices=["cxi0"],
                      limits={"TXQ": {"max": 1024, "res": 1024}}),
             cniVersion="1.0.0", name="full", prevResult=PREV)
    assert plugin_call(cni_env, "ADD", c, cid="f1", netns_path=netns.path(a))[0] == 0
    rc, out, _ = plugin_call(cni_env, "ADD", dict(c, vnis=[4501]), cid="f2", netns_path=netns.path(b))
    assert rc == 1 and out["code"] == 11, out
    assert "TXQ: 1024 to reserve, 0 left" in out["msg"], out
    assert out["details"].count("[") == 1 and out["details"].count("ENOSPC") == 1, out
    assert plugin_call(cni_env, "DEL", c, cid="f1")[0] == 0
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


# --- the embedded allocator's holders ----------------------------------------------------------

def _held(cni_env, key):
    from pycxi.vni.sqlite import SqliteStore
    s = SqliteStore(cni_env.vni_db, ranges=[(5000, 65535)], quarantine=0)
    try:
        return s.get(key), s.holders(key)
    finally:
        s.close()


def test_local_vni_kept_while_another_network_holds_it(cni_env, netns):
    """Two networks share the node's database; the pod (same K8S_POD_* identity) is attached
    to both, so both attachments hold its key.  DEL on one keeps the VNI; DEL on the last
    releases it."""
    pod = netns.add()
    args = "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1"
    n1 = dict(cxi_conf(cni_env, localAllocator={}, devices=["cxi0"]), cniVersion="1.0.0",
              name="net1", prevResult=PREV)
    n2 = dict(n1, name="net2", devices=["cxi1"])
    assert plugin_call(cni_env, "ADD", n1, cid="c1", netns_path=netns.path(pod), args=args)[0] == 0
    assert plugin_call(cni_env, "ADD", n2, cid="c1", netns_path=netns.path(pod), args=args,
                       ifname="net1")[0] == 0
    vni, holders = _held(cni_env, "pod/ns1/p1")
    assert holders == ["net1/c1/eth0", "net2/c1/net1"]
    assert [r["vnis"] for r in services()["cxi1"]] == [[vni]]
    assert plugin_call(cni_env, "DEL", n1, cid="c1", args=args)[0] == 0
    assert _held(cni_env, "pod/ns1/p1") == (vni, ["net2/c1/net1"])
    # another pod does not get it meanwhile
    other = netns.add()
    assert plugin_call(cni_env, "ADD", n1, cid="o1", netns_path=netns.path(other),
                       args="K8S_POD_NAMESPACE=ns2;K8S_POD_NAME=q")[0] == 0
    assert services()["cxi0"][0]["vnis"] != [vni]
    assert plugin_call(cni_env, "DEL", n2, cid="c1", args=args, ifname="net1")[0] == 0
    assert _held(cni_env, "pod/ns1/p1") == (None, [])
    assert plugin_call(cni_env, "DEL", n1, cid="o1")[0] == 0
    assert count_services() == 0


def test_local_vni_kept_for_the_next_sandbox(cni_env, netns):
    """containerd starts sandbox attempt 1 before attempt 0's DEL: the late DEL of attempt 0
    must not release the VNI attempt 1 is using."""
    s0, s1 = netns.add(), netns.add()
    args = "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1"
    c = dict(cxi_conf(cni_env, localAllocator={}), cniVersion="1.0.0", name="net1", prevResult=PREV)
    assert plugin_call(cni_env, "ADD", c, cid="att0", netns_path=netns.path(s0), args=args)[0] == 0
    assert plugin_call(cni_env, "ADD", c, cid="att1", netns_path=netns.path(s1), args=args)[0] == 0
    vni, _ = _held(cni_env, "pod/ns1/p1")
    assert plugin_call(cni_env, "DEL", c, cid="att0", args=args)[0] == 0
    assert _held(cni_env, "pod/ns1/p1") == (vni, ["net1/att1/eth0"])
    assert [r["vnis"] for r in services()["cxi0"]] == [[vni]]
    assert plugin_call(cni_env, "DEL", c, cid="att1", args=args)[0] == 0
    assert _held(cni_env, "pod/ns1/p1") == (None, [])


def test_gc_drops_holders_the_runtime_no_longer_knows(cni_env, netns):
    """The records are gone (dataDir on tmpfs, a reboot) but the database kept the holders:
    GC with the runtime's valid attachments drops the others and releases their VNIs; a
    valid attachment keeps its VNI."""
    import shutil
    a, b = netns.add(), netns.add()
    c = dict(cxi_conf(cni_env, localAllocator={}), cniVersion="1.1.0", name="net1", prevResult=PREV)
    for cid, pod in (("g1", a), ("g2", b)):
        assert plugin_call(cni_env, "ADD", c, cid=cid, netns_path=netns.path(pod),
                           args=f"K8S_POD_NAME={cid}")[0] == 0
    v2, _ = _held(cni_env, "pod/g2")
    # what a reboot does to the services and to /run
    assert sim_reset(2, dict(os.environ)).returncode == 0
    for m in reversed(netns_mounts_under(cni_env.data_dir)):      # the netns pins go too
        subprocess.run(["umount", m], check=True)
    shutil.rmtree(cni_env.data_dir)
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "g2", "ifname": "eth0"}]})
    rc, out, _ = plugin_call(cni_env, "GC", gc)
    assert rc == 0, out
    assert _held(cni_env, "pod/g1") == (None, [])
    assert _held(cni_env, "pod/g2") == (v2, ["net1/g2/eth0"])
    rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": []}))
    assert rc == 0, out
    assert _held(cni_env, "pod/g2") == (None, [])

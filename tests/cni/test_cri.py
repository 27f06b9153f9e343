"""containerd's CRI end to end: a REAL container runtime, driven the way a kubelet drives it.

There is no kubelet or kube-apiserver here; what the kubelet would call is containerd's CRI plugin,
and that is what this test calls, over the CRI gRPC API (``runtime.v1``): RunPodSandbox ->
containerd's CNI library -> the conflist (bridge, then ``cxi``) -> the plugins, each as its own
process, with the environment and ``CNI_ARGS`` (``K8S_POD_NAMESPACE``/``K8S_POD_NAME``/
``K8S_POD_UID``) containerd sets.  Debian's containerd 1.6 with runc; the sandbox image is a static
pause binary built here and imported with ``ctr images import``; containerd's root, state, socket,
CNI dirs and the plugins' state are private, and containerd runs in a network namespace of its own
(the machine's is untouched).  The CXI devices are pycxi's software device (no NIC here):
``PYCXI_SIM_ROOT`` is in containerd's environment, which its CNI library passes to the plugins.

Shown: pods in two namespaces each get their own service bound to their netns, with a VNI keyed
by the pod's identity from CNI_ARGS; a process in pod A's netns cannot use pod B's service (nor
can the host); Stop/Remove leave no service, record or index link; a containerd restart under
running pods loses nothing and calls no plugin; a network renamed under a running pod leaks its
services on DEL (containerd uses the conflist loaded now and never sends GC) and the node
component's sweep removes them, seen through its Prometheus metrics; with the production
conflist (VNIs from the VNI service: a stand-in API server, there is no kube-apiserver here) a pod
not allocated yet fails RunPodSandbox with nothing left, its retry gets the allocated VNIs, and a
replaced pod (other K8S_POD_UID) is refused.
"""
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from cniutil import (PY, Netns, _core_ready, index_links, pycxi_cmd, records, run, services,
                     write_node_conf)
import criutil

pytestmark = pytest.mark.containerd

_MISSING = criutil.missing_tools()
if os.geteuid() != 0:
    _MISSING.append("root")
if not os.access("/usr/lib/cni/bridge", os.X_OK):
    _MISSING.append("containernetworking-plugins")
if not _core_ready():
    _MISSING.append("the pycxi extension")
if _MISSING:
    pytestmark = [pytestmark, pytest.mark.skip(reason=f"the CRI test needs {', '.join(_MISSING)}")]

NET = "cxinet"
CONFLIST = "10-cxinet.conflist"


def _conflist(c, name):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": "cxcbr0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.90.1.0/24"}]],
                  "dataDir": f"{c.dir}/ipam"}},
        {"type": "cxi", "dataDir": c.data_dir, "logFile": c.cxi_log, "logLevel": "debug",
         "localAllocator": {"path": f"{c.dir}/vni.db", "ranges": [[5000, 5099]]}}]}


def _write_conflist(c, name):
    with open(os.path.join(c.conf_dir, CONFLIST), "w") as f:      # in place: containerd's
        json.dump(_conflist(c, name), f)                           # watcher sees the write


def _loaded_network(c):
    """The network name containerd's CNI library has loaded now (CRI Status, verbose)."""
    info = c.call("Status", c.pb.StatusRequest(verbose=True)).info
    cfg = json.loads(info.get("cniconfig", "{}"))
    for net in cfg.get("Networks") or ():
        name = (net.get("Config") or {}).get("Name")
        if name and name != "cni-loopback":
            return name
    return None


def _wait(pred, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cri(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("cri"))
    ns = Netns()
    host = ns.add("cxtr")      # cxt*: scripts/test.sh removes them even after a crash
    sim = os.path.join(work, "sim")
    os.makedirs(sim)
    os.chmod(work, 0o755)
    env = dict(os.environ, PYCXI_SIM_ROOT=sim)
    p = run(pycxi_cmd() + ["sim", "reset", "--devices", "2"], env=env)
    assert p.returncode == 0, p.stderr
    from pycxi.cni import install
    bindir = os.path.join(work, "cxibin")
    install.install_launcher(bindir, python=PY)
    c = criutil.Containerd(host, [bindir, "/usr/lib/cni"], env)
    c.data_dir = f"{c.dir}/cxi-state"
    c.cxi_log = f"{c.dir}/cxi.log"
    # the node's policy (docs/cni.md): the local allocator's database, the kubeconfig and the
    # log directory the conflists below use; in containerd's environment, like PYCXI_SIM_ROOT
    env["PYCXI_CNI_POLICY"] = write_node_conf(f"{c.dir}/cni-policy.json", {
        "localAllocator": {"path": f"{c.dir}/vni.db", "ranges": [[5000, 65535]]},
        "kubernetes": {"kubeconfig": f"{c.dir}/cxi.kubeconfig"}, "logDir": c.dir})
    c.sim_env = env
    try:
        c.set_stubs(*criutil.cri_stubs(work))
        image = criutil.build_pause_image(work)
        _write_conflist(c, NET)
        c.start()
        c.ctr("images", "import", image)
        v = c.call("Version", c.pb.VersionRequest(version="v1"))
        assert v.runtime_name == "containerd" and v.runtime_api_version == "v1"
        _wait(lambda: _loaded_network(c) == NET, what="containerd to load the conflist")
        yield c
    finally:
        c.cleanup()
        ns.cleanup()


def _record(c, sid):
    for path in records(c.data_dir):
        with open(path) as f:
            rec = json.load(f)
        if rec["containerID"] == sid:
            return rec
    return None


def _svc_of(c, inode):
    """{device: service} bound to ``inode``."""
    return {d: s for d, rows in services(c.sim_env).items() for s in rows if s["netns"] == inode}


def _log_lines(c, pattern):
    try:
        with open(c.cxi_log) as f:
            return [line for line in f if re.search(pattern, line)]
    except FileNotFoundError:
        return []


def _access(c, netns_path, svc, vni):
    cmd = pycxi_cmd() + ["-d", "cxi0", "access-check", "--svc", str(svc), "--vni", str(vni)]
    return subprocess.run(["nsenter", f"--net={netns_path}"] + cmd, env=c.sim_env,
                          capture_output=True, text=True, timeout=60)


def _assert_clean(c):
    assert services(c.sim_env) == {"cxi0": [], "cxi1": []}
    assert records(c.data_dir) == []
    assert index_links(c.data_dir) == []


def test_two_namespaces_isolated_and_removed(cri):
    c = cri
    pods = {}
    for ns, name in (("tenant-a", "pa"), ("tenant-b", "pb")):
        sid = c.run_pod(name, ns)
        path = c.netns_path(sid)
        pods[ns] = (sid, path, os.stat(path).st_ino)
    try:
        got = {}
        for ns, (sid, path, inode) in pods.items():
            rec = _record(c, sid)
            assert rec is not None and rec["phase"] == "ready"
            assert rec["netns"] == path and rec["netnsInode"] == inode
            # K8S_POD_NAMESPACE / K8S_POD_NAME from containerd's CNI_ARGS key the pod's VNI
            name = "pa" if ns == "tenant-a" else "pb"
            assert rec["vniKey"] == f"pod/{ns}/{name}" and rec["vniSource"] == "local"
            svcs = _svc_of(c, inode)
            assert set(svcs) == {"cxi0", "cxi1"}, svcs          # one per NIC, bound to this netns
            assert all(s["enable"] and s["vnis"] == rec["vnis"] for s in svcs.values())
            assert {(e["device"], e["svc"]) for e in rec["services"]} == \
                {(d, s["svc"]) for d, s in svcs.items()}
            got[ns] = (path, svcs["cxi0"]["svc"], rec["vnis"][0])
        assert got["tenant-a"][2] != got["tenant-b"][2]          # per-pod VNIs
        assert got["tenant-a"][1] != got["tenant-b"][1]

        (pa, sa, va), (pb, sb, vb) = got["tenant-a"], got["tenant-b"]
        ok = _access(c, pa, sa, va)
        assert ok.returncode == 0, ok.stdout + ok.stderr                  # A on its own service
        ok = _access(c, pb, sb, vb)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for path, svc, vni in ((pa, sb, vb), (pb, sa, va)):               # A on B's, B on A's
            no = _access(c, path, svc, vni)
            assert no.returncode != 0 and "EPERM" in no.stdout + no.stderr, no.stdout + no.stderr
        no = _access(c, f"/run/netns/{c.host_ns}", sa, va)               # the runtime's own netns
        assert no.returncode != 0 and "EPERM" in no.stdout + no.stderr
        assert len(_log_lines(c, r"info: ADD ")) >= 2
    finally:
        for sid, _, _ in pods.values():
            c.stop_pod(sid)
            c.stop_pod(sid)      # as the kubelet repeats it: DEL again, with an empty CNI_NETNS
            c.remove_pod(sid)    # and once more
    _assert_clean(c)
    for sid, path, _ in pods.values():
        assert not os.path.exists(path)
        assert len(_log_lines(c, rf"DEL {sid}/eth0 done")) == 1   # the later DELs had nothing to do
    assert c.pods() == []


def test_containerd_restart_loses_nothing(cri):
    c = cri
    sid = c.run_pod("pr", "tenant-r")
    try:
        path = c.netns_path(sid)
        inode = os.stat(path).st_ino
        before = (services(c.sim_env), _record(c, sid))
        assert _svc_of(c, inode)
        calls = len(_log_lines(c, r"cxi\["))
        c.stop()                     # SIGTERM: the pod's shim and pause live on
        assert os.stat(path).st_ino == inode
        c.start()
        [pod] = [p for p in c.pods() if p.id == sid]
        assert pod.state == c.pb.SANDBOX_READY
        assert c.netns_path(sid) == path
        assert (services(c.sim_env), _record(c, sid)) == before
        assert len(_log_lines(c, r"cxi\[")) == calls            # no plugin call on restart
    finally:
        c.stop_pod(sid)
        c.remove_pod(sid)
    _assert_clean(c)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def test_renamed_network_leaks_and_node_sweep_removes_it(cri):
    """containerd's DEL uses the conflist loaded now and it never sends GC: rename the network
    under a running pod, and the pod's DEL finds no record under the new name; its services stay.
    The node component (``pycxi node sweep``) finds the record whose netns is gone and releases
    it; its metrics show the services per NIC before and the removal after."""
    c = cri
    port = _free_port()
    node = subprocess.Popen(pycxi_cmd() + ["node", "sweep", "--data-dir", c.data_dir, "--interval",
                                           "0.3", "--metrics-address", "127.0.0.1",
                                           "--metrics-port", str(port), "--log-level", "debug"],
                            env=c.sim_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sid = None
    try:
        sid = c.run_pod("pl", "tenant-l")
        inode = os.stat(c.netns_path(sid)).st_ino
        assert set(_svc_of(c, inode)) == {"cxi0", "cxi1"}

        def seen():
            try:
                m = _scrape(port)
            except OSError:
                return None
            return m if m.get('pycxi_node_services{device="cxi0"}') == 1 else None
        m = _wait(seen, what="the node component's metrics to show the pod's service")
        assert m['pycxi_node_services{device="cxi1"}'] == 1
        assert m[f'pycxi_node_records{{network="{NET}"}}'] == 1
        assert m['pycxi_node_rsrc_total{device="cxi0",resource="PTE"}'] > 0
        assert m['pycxi_node_tle_pools_in_use{device="cxi0"}'] >= 0
        removed0 = m.get('pycxi_node_leaked_removed_total{reason="netns_gone"}', 0)

        # rename the network under the running pod: containerd reloads the conflist
        _write_conflist(c, "cxinet-renamed")
        _wait(lambda: _loaded_network(c) == "cxinet-renamed", what="containerd to reload")
        c.stop_pod(sid)
        c.remove_pod(sid)
        sid = None

        # DEL ran under the new name (nothing to do there), so the services leaked: until the
        # sweep (0.3 s) releases the record, whose netns is gone
        def swept():
            m = _scrape(port)
            done = m.get('pycxi_node_leaked_removed_total{reason="netns_gone"}', 0) >= removed0 + 1
            return m if done and m['pycxi_node_services{device="cxi0"}'] == 0 else None
        m = _wait(swept, what="the sweep to release the leaked services")
        assert m['pycxi_node_services{device="cxi1"}'] == 0
        assert m["pycxi_node_sweep_errors_total"] == 0
        assert m["pycxi_node_sweeps_total"] >= 2
        _assert_clean(c)
        node.send_signal(signal.SIGTERM)
        assert node.wait(20) == 0
        err = node.stderr.read().decode()
        assert re.search(rf"sweep: releasing {NET}/[0-9a-f]+/eth0 \(netns_gone\)", err), err
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        if sid:
            c.stop_pod(sid)
            c.remove_pod(sid)
        _write_conflist(c, NET)
        _wait(lambda: _loaded_network(c) == NET, what="containerd to reload")


# A stand-in for the kube-apiserver (none exists here): GET /api/v1/namespaces/<ns>/pods/<name>
# answered from a JSON file the test rewrites.  It runs in containerd's network namespace, where
# the plugins run, on its loopback.
_API = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
pods_file = sys.argv[1]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        with open(pods_file) as f:
            pods = json.load(f)
        pod = None
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            pod = pods.get(parts[3] + "/" + parts[5])
        body = json.dumps(pod or {"kind": "Status", "code": 404, "reason": "NotFound"}).encode()
        self.send_response(200 if pod else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


def test_vnis_from_the_vni_service(cri):
    """The production conflist on Kubernetes (one network for every pod: the VNI comes from the
    VNI service): the plugin GETs the pod named by K8S_POD_NAMESPACE/K8S_POD_NAME and takes the
    VNIs from the controller's status condition, only if K8S_POD_UID matches.  Not allocated yet ->
    RunPodSandbox fails (code 11, the kubelet retries) leaving nothing; allocated -> the retry
    gets its service; a replaced pod (other UID) is refused."""
    import grpc
    c = cri
    pods_file = os.path.join(c.dir, "pods.json")
    uid = "6b1f7c1e-0000-4000-8000-000000000001"

    def set_pod(vnis):
        cond = [{"type": "vni.pycxi.dev/Allocated", "status": "True", "reason": "Allocated",
                 "message": "vnis=" + ",".join(map(str, vnis))}] if vnis else []
        with open(pods_file, "w") as f:
            json.dump({"hpc/job-0": {"metadata": {"namespace": "hpc", "name": "job-0", "uid": uid,
                                                  "annotations": {"vni.pycxi.dev/vni": "true"}},
                                     "status": {"conditions": cond}}}, f)
    set_pod(None)
    api = subprocess.Popen(["ip", "netns", "exec", c.host_ns, PY, "-c", _API, pods_file],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sid = None
    try:
        port = int(api.stdout.readline())
        kc = os.path.join(c.dir, "cxi.kubeconfig")
        with open(kc, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "x",
                       "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                       "users": [{"name": "u", "user": {"token": "t"}}],
                       "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}, f)
        conf = _conflist(c, "k8snet")
        conf["plugins"][1] = {"type": "cxi", "dataDir": c.data_dir, "logFile": c.cxi_log,
                              "logLevel": "debug", "kubernetes": {"kubeconfig": kc, "timeout": 2}}
        with open(os.path.join(c.conf_dir, CONFLIST), "w") as f:
            json.dump(conf, f)
        _wait(lambda: _loaded_network(c) == "k8snet", what="containerd to load the k8s conflist")

        with pytest.raises(grpc.RpcError) as exc:            # asked, not allocated yet
            c.run_pod("job-0", "hpc", uid=uid)
        assert "is not allocated yet" in exc.value.details(), exc.value.details()
        _assert_clean(c)
        assert [p for p in c.pods() if p.metadata.name == "job-0"] == []

        set_pod([4242, 4243])                                 # the controller allocated
        sid = c.run_pod("job-0", "hpc", uid=uid, attempt=1)
        inode = os.stat(c.netns_path(sid)).st_ino
        svcs = _svc_of(c, inode)
        assert set(svcs) == {"cxi0", "cxi1"}
        assert all(sorted(s["vnis"]) == [4242, 4243] for s in svcs.values())
        assert _record(c, sid)["vniSource"] == "kubernetes"

        with pytest.raises(grpc.RpcError) as exc:            # same name, another pod (UID)
            c.run_pod("job-0", "hpc", uid="6b1f7c1e-0000-4000-8000-00000000dead", attempt=2)
        assert "the pod was replaced" in exc.value.details(), exc.value.details()
        c.stop_pod(sid)
        c.remove_pod(sid)
        sid = None
        _assert_clean(c)
    finally:
        if sid:
            c.stop_pod(sid)
            c.remove_pod(sid)
        api.kill()
        api.wait()
        _write_conflist(c, NET)
        _wait(lambda: _loaded_network(c) == NET, what="containerd to reload")

"""What a pod's configured limits really allow: processes inside the pod's network namespace
(real ``ip netns``, a real drop to a non-root uid) allocate NIC objects on the service the
plugin created, up to the limits from the plugin's configuration, and fail one past each.
The NIC is the software device (no Slingshot NIC here); the plugin, the namespaces, the
processes and the privilege drop are real."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from cniutil import PREV, PY, cxi_conf, plugin_call, run, services, sim_reset

NOBODY = 65534

# Runs in the pod: ``ip netns exec <pod> python -c`` imports pycxi as root, drops to
# nobody for real, then allocates each type until the device refuses.
POD = r"""
import errno, json, mmap, os, sys, weakref  # weakref: alloc_lni imports it lazily
import pycxi
svc_id, vni, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([]); os.setgid(%(uid)d); os.setuid(%(uid)d)
assert os.getuid() == %(uid)d and os.geteuid() == %(uid)d
if go != "-":
    os.read(int(go), 1)                     # all pods start together
dev = pycxi.Device(0)
lni = dev.alloc_lni(svc_id)
cp = lni.alloc_cp(vni)
kinds = sys.argv[4].split(",")
flags = [0xd | f for f in (0, 1 << 5, 1 << 7, 1 << 8, 1 << 10, 0x80000, 0x20 | 0x80)]
md = None
got, why, keep = {}, {}, []
for k in kinds:
    if k == "EQ":
        md = lni.map(mmap.mmap(-1, 4096), flags=flags.pop(0))
    n = 0
    while True:
        try:
            if k == "AC":
                keep.append(lni.map(mmap.mmap(-1, 4096), flags=flags.pop(0)))
            elif k == "EQ":
                keep.append(lni.alloc_evtq(md))
            elif k == "PTE":
                keep.append(lni.alloc_pte())
            elif k == "TXQ":
                keep.append(lni.alloc_cmdq(transmit=True, lcid=cp.lcid))
            elif k == "TGQ":
                keep.append(lni.alloc_cmdq())
            elif k == "CT":
                keep.append(lni.alloc_ct())
            n += 1
        except pycxi.CxiLibError as e:
            why[k] = errno.errorcode[e.errno]
            break
    got[k] = n
print(json.dumps({"got": got, "why": why, "in_use": dev.svc_rsrc_use(svc_id).in_use}), flush=True)
if sys.argv[5:] == ["hold"]:                # keep the objects until killed
    sys.stdin.read()
""" % {"uid": NOBODY}


@pytest.fixture
def sim(monkeypatch):
    """The device root must be reachable by the unprivileged pod processes."""
    root = tempfile.mkdtemp(prefix="pycxi-lim-", dir="/tmp")
    os.chmod(root, 0o755)
    monkeypatch.setenv("PYCXI_SIM_ROOT", root)
    p = sim_reset(1, dict(os.environ))
    assert p.returncode == 0, p.stderr
    yield root
    shutil.rmtree(root, ignore_errors=True)


def add_pod(cni_env, netns, conf, i):
    pod = netns.add()
    rc, out, err = plugin_call(cni_env, "ADD", conf, cid=f"lim{i}", netns_path=netns.path(pod))
    return pod, rc, out


def svc_of(pod_ino):
    [row] = [r for r in services()["cxi0"] if r["netns"] == pod_ino]
    return row["svc"]


def pod_cmd(netns_name, svc_id, vni, kinds, go="-"):
    return ["ip", "netns", "exec", netns_name, PY, "-c", POD, str(svc_id), str(vni), go,
            ",".join(kinds)]


def test_a_pod_allocates_up_to_its_configured_limits(cni_env, netns):
    limits = {"PTE": {"max": 6, "res": 2}, "TXQ": [5, 0], "TGQ": [4, 4], "EQ": [7, 1],
              "CT": [3, 0], "AC": [3, 1], "LE": [0, 0], "TLE": [0, 0]}
    conf = dict(cxi_conf(cni_env, devices=["cxi0"], vnis=[3100], limits=limits),
                cniVersion="1.0.0", name="lim", prevResult=PREV)
    pod, rc, out = add_pod(cni_env, netns, conf, 0)
    assert rc == 0, out
    svc_id = svc_of(os.stat(netns.path(pod)).st_ino)
    kinds = ["PTE", "TXQ", "TGQ", "EQ", "CT", "AC"]
    p = run(pod_cmd(pod, svc_id, 3100, kinds))
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    # the EQs' buffer took one AC before the AC sweep
    assert r["got"] == {"PTE": 6, "TXQ": 5, "TGQ": 4, "EQ": 7, "CT": 3, "AC": 2}, r
    assert set(r["why"].values()) == {"ENOSPC"}
    assert r["in_use"] == {"PTE": 6, "TXQ": 5, "TGQ": 4, "EQ": 7, "CT": 3, "LE": 0, "TLE": 0,
                           "AC": 3}
    # the same service from the host (another netns) is refused before any allocation
    q = run([PY, "-c", POD, str(svc_id), "3100", "-", "CT"])
    assert q.returncode != 0 and "EPERM" in q.stderr, q.stderr
    # the pod's process exited: its objects went with its LNI; DEL removes the service
    assert plugin_call(cni_env, "DEL", conf, cid="lim0")[0] == 0
    assert services()["cxi0"] == []
    run([PY, "-c", "from pycxi.device import sim_check; sim_check()"], check=True)


def test_pods_per_nic_with_reservations_all_reach_them_at_once(cni_env, netns):
    """docs/cni.md: with `res > 0`, pods per NIC <= total / res.  TGQ res = max = 64 on a
    device with 512 TGQs: 8 pods fit (the 9th ADD is refused with code 11), and all 8,
    allocating at the same moment as an unprivileged user in their own namespaces, each
    get their 64."""
    limits = {"TGQ": [64, 64], "LE": [0, 0], "TLE": [0, 0], "AC": [1, 0]}
    conf = dict(cxi_conf(cni_env, devices=["cxi0"], limits=limits, logLevel="warning"),
                cniVersion="1.0.0", name="res", prevResult=PREV)
    pods = []
    for i in range(9):
        pod, rc, out = add_pod(cni_env, netns, dict(conf, vnis=[3200 + i]), i)
        if i < 8:
            assert rc == 0, (i, out)
            pods.append(pod)
        else:
            assert rc == 1 and out["code"] == 11 and "TGQ reservation 64 > 0" in out["details"], out
    go_r, go_w = os.pipe()
    procs = []
    try:
        for i, pod in enumerate(pods):
            svc_id = svc_of(os.stat(netns.path(pod)).st_ino)
            procs.append(subprocess.Popen(pod_cmd(pod, svc_id, 3200 + i, ["TGQ"], str(go_r)),
                                          pass_fds=(go_r,), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        os.write(go_w, b"x" * len(pods))
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        os.close(go_r)
        os.close(go_w)
    for (out, err), p in zip(results, procs):
        assert p.returncode == 0, err
        r = json.loads(out)
        assert r["got"] == {"TGQ": 64} and r["why"] == {"TGQ": "ENOSPC"}, r
    for i in range(9):
        assert plugin_call(cni_env, "DEL", dict(conf, vnis=[3200 + i]), cid=f"lim{i}")[0] == 0
    run([PY, "-c", "from pycxi.device import sim_check; sim_check()"], check=True)


def test_with_the_default_limits_one_pod_can_take_a_whole_type(cni_env, netns):
    """The hostile neighbour docs/cni.md warns about: the default limits reserve nothing and cap
    each type at the device total, so one pod's process can take every TGQ of the NIC and the
    next pod gets none.  (Sites that need a floor set res = max.)"""
    conf = dict(cxi_conf(cni_env, devices=["cxi0"], logLevel="warning"), cniVersion="1.0.0",
                name="dflt", prevResult=PREV)
    pods = []
    for i in range(2):
        pod, rc, out = add_pod(cni_env, netns, dict(conf, vnis=[3300 + i]), i)
        assert rc == 0, out
        pods.append(pod)
    hog_svc = svc_of(os.stat(netns.path(pods[0])).st_ino)
    victim_svc = svc_of(os.stat(netns.path(pods[1])).st_ino)
    go_r, go_w = os.pipe()
    hog = subprocess.Popen(pod_cmd(pods[0], hog_svc, 3300, ["TGQ"], str(go_r)) + ["hold"],
                           pass_fds=(go_r,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        os.write(go_w, b"x")
        line = hog.stdout.readline()
        assert line, hog.stderr.read()
        assert json.loads(line)["got"] == {"TGQ": 512}
        p = run(pod_cmd(pods[1], victim_svc, 3301, ["TGQ"]))
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["got"] == {"TGQ": 0}
    finally:
        hog.kill()
        hog.wait()
        os.close(go_r)
        os.close(go_w)
    p = run(pod_cmd(pods[1], victim_svc, 3301, ["TGQ"]))     # the hog's death freed them
    assert json.loads(p.stdout)["got"] == {"TGQ": 512}, p.stdout + p.stderr
    for i in range(2):
        assert plugin_call(cni_env, "DEL", dict(conf, vnis=[3300 + i]), cid=f"lim{i}")[0] == 0

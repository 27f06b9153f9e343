"""``pycxi node sweep`` (pycxi/cni/node.py) without a runtime: the installed plugin, real network
namespaces, the software device.  The CRI test (test_cri.py) runs it under containerd; here the
edge cases: what it must leave alone, orphans, busy services, the fast DEL path."""
import json
import os
import subprocess

import pytest

from cniutil import (PY, count_services, cxi_conf, index_links, need_core, need_root, plugin_call,
                     pycxi_cmd, records, run, services)

pytestmark = [need_core, need_root]

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": []}


def _sweep(cni_env, *extra):
    p = run(pycxi_cmd() + ["node", "sweep", "--once", "--data-dir", cni_env.data_dir,
                           "--log-level", "debug", *extra], env=dict(os.environ))
    return p.returncode, p.stderr


def _add(cni_env, path, cid, vni, name="n1"):
    c = dict(cxi_conf(cni_env, vnis=[vni]), cniVersion="1.0.0", name=name, prevResult=PREV)
    rc, out, err = plugin_call(cni_env, "ADD", c, cid=cid, netns_path=path)
    assert rc == 0, (out, err)
    return c


def test_sweep_releases_lost_pods_only(cni_env, netns):
    """A pod whose netns is gone without a DEL is released; a live one is not; a record whose
    netns path cannot be checked from here (its directory is not visible) is left alone."""
    live, lost = netns.add(), netns.add()
    _add(cni_env, netns.path(live), "live", 1601)
    _add(cni_env, netns.path(lost), "lost", 1602, name="n2")
    assert count_services() == 4
    netns.delete(lost)                     # the runtime lost the pod without a DEL
    # a record as a runtime with its netns pins elsewhere would leave (a dead inode, a path in a
    # directory this process cannot see): unverifiable, so kept
    d = os.path.join(cni_env.data_dir, "n3")
    os.makedirs(d)
    with open(os.path.join(d, "far_eth0.json"), "w") as f:
        json.dump({"containerID": "far", "ifname": "eth0", "network": "n3", "phase": "ready",
                   "netns": "/not-mounted-here/netns/x", "netnsInode": 999999999, "vnis": [1603],
                   "services": [], "version": 1}, f)
    rc, err = _sweep(cni_env)
    assert rc == 0, err
    assert "releasing n2/lost/eth0 (netns_gone)" in err
    left = {os.path.basename(p) for p in records(cni_env.data_dir)}
    assert left == {"live.eth0.json", "far.eth0.json"}     # (far's: migrated to the new layout)
    ino = os.stat(netns.path(live)).st_ino
    assert {s["netns"] for rows in services().values() for s in rows} == {ino}
    assert set(index_links(cni_env.data_dir)) == {f"{ino}.n1.live.eth0", "999999999.n3.far.eth0"}


def test_orphans_counted_then_removed_on_request(cni_env, netns):
    """Services no record knows: bound to a dead netns -> orphan (destroyed only with
    --remove-orphans); bound to a live netns, or with a uid member -> never touched."""
    from pycxi.cni.netns import in_use
    mk = ("import pycxi,sys\nwith pycxi.Device('cxi0') as d:\n"
          " print(d.alloc_netns_svc(pycxi.netns_inode(sys.argv[1]), vnis=[int(sys.argv[2])], "
          "limits={'TLE': (0, 0)}))")
    alive = netns.add()
    keep = int(run([PY, "-c", mk, netns.path(alive), "1702"], env=dict(os.environ), check=True).stdout)
    uid = run(pycxi_cmd() + ["-d", "cxi0", "svc", "create", "--uid", "4242", "--vni", "1703",
                             "--limit", "TLE=0:0"], env=dict(os.environ), check=True)
    os.makedirs(cni_env.data_dir)
    uid_svc = int(uid.stdout.split()[-1])
    for attempt in range(5):
        dead = netns.add()
        ino = os.stat(netns.path(dead)).st_ino
        orphan = int(run([PY, "-c", mk, netns.path(dead), str(1710 + attempt)], env=dict(os.environ),
                         check=True).stdout)
        netns.delete(dead)
        rc, err = _sweep(cni_env)
        assert rc == 0, err
        counted = f"orphaned service cxi0/{orphan}" in err and "--remove-orphans" in err
        if counted:
            assert count_services() == 3                  # only counted
            rc, err = _sweep(cni_env, "--remove-orphans")
            assert rc == 0, err
            if f"destroyed orphaned service cxi0/{orphan}" in err:
                break
        # the kernel gave the freed inode to a namespace made meanwhile (other tests on this
        # machine): then the service is not an orphan -- it would admit that namespace
        assert in_use(None, ino, None), err
        run(pycxi_cmd() + ["-d", "cxi0", "svc", "delete", str(orphan)], env=dict(os.environ), check=True)
    else:
        pytest.skip("netns inode reused by concurrent namespaces 5 times in a row")
    assert sorted(s["svc"] for s in services()["cxi0"]) == sorted([keep, uid_svc])


def test_busy_service_kept_until_its_lnis_close(cni_env, netns):
    """A service still used by LNIs cannot be destroyed: the sweep keeps the record, reports
    the problem (exit 1 with --once), and releases it once the LNIs are gone."""
    pod = netns.add()
    c = _add(cni_env, netns.path(pod), "busy", 1801)
    [svc] = [s["svc"] for s in services()["cxi0"]]
    # hold an LNI on cxi0 from inside the pod until stdin closes
    holder = subprocess.Popen(
        ["ip", "netns", "exec", pod, PY, "-c",
         "import pycxi,sys\nd=pycxi.Device('cxi0'); l=d.alloc_lni(%d); print('held', flush=True); "
         "sys.stdin.read()" % svc],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == b"held"
        rc, out, err = plugin_call(cni_env, "DEL", dict(c, destroyRetries=1, destroyRetryDelay=0.01),
                                   cid="busy", netns_path=netns.path(pod))
        # DEL says the truth: the service is still enabled (the driver refuses to disable a
        # service with LNIs); the record stays for a retried DEL or the sweep
        assert rc == 1 and out["code"] == 11 and "still ENABLED" in out["details"], (out, err)
        [rec] = records(cni_env.data_dir)
        assert json.load(open(rec))["phase"] == "deleting"
        rc, err = _sweep(cni_env)
        assert rc == 1 and "busy" in err                  # still in use: kept, reported
        assert len(records(cni_env.data_dir)) == 1
    finally:
        holder.stdin.close()
        holder.wait(30)
    rc, err = _sweep(cni_env)
    assert rc == 0, err
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def test_del_with_nothing_to_do_skips_the_commands(cni_env, netns):
    """The DEL fast path: no record, no index link -> success without importing the dispatcher,
    the config parser or the commands; a record present -> the full DEL."""
    conf = dict(cxi_conf(cni_env, vnis=[1901]), cniVersion="1.0.0", name="n1")
    probe = ("import os, sys, runpy\nsys.argv=['cxi']\n"
             "try:\n runpy.run_path(os.environ['LAUNCHER'], run_name='__main__')\n"
             "except SystemExit as e:\n"
             " sys.stderr.write('rc=%s mods=%s' % (e.code, ','.join(m for m in sys.modules if m.startswith('pycxi'))))\n")
    launcher = os.path.join(cni_env.bin, "cxi")
    env = dict(os.environ, CNI_COMMAND="DEL", CNI_CONTAINERID="nobody", CNI_IFNAME="eth0",
               LAUNCHER=launcher, CNI_PATH=cni_env.bin)
    p = subprocess.run([PY, "-IS", "-c", probe], input=json.dumps(conf).encode(), env=env,
                       capture_output=True)
    err = p.stderr.decode()
    assert "rc=0" in err and p.stdout == b"", err
    mods = set(err.split("mods=", 1)[1].split(","))
    assert not mods & {"pycxi.cni.skel", "pycxi.cni.config", "pycxi.cni.commands", "pycxi.device"}, mods
    # run as the runtime runs it, the launcher loads json and four small modules of pycxi's:
    # not os, fcntl, __future__, the errors or the record store
    p = subprocess.run([PY, "-IS", "-X", "importtime", launcher], input=json.dumps(conf).encode(),
                       env=env, capture_output=True)
    assert p.returncode == 0 and p.stdout == b"", p.stderr
    loaded = {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
              if "import time:" in line and "|" in line}
    assert {m for m in loaded if m.startswith("pycxi")} == {
        "pycxi", "pycxi.cni", "pycxi.cni.plugin", "pycxi.cni.layout"}, loaded
    assert not loaded & {"os", "fcntl", "__future__", "typing"}, loaded
    # an attachment with a record takes the full path (and is deleted)
    pod = netns.add()
    _add(cni_env, netns.path(pod), "some", 1901)
    p = subprocess.run([PY, "-IS", "-c", probe], input=json.dumps(conf).encode(),
                       env=dict(env, CNI_CONTAINERID="some"), capture_output=True)
    err = p.stderr.decode()
    assert "rc=0" in err and "pycxi.cni.commands" in err, err
    assert count_services() == 0 and records(cni_env.data_dir) == []
    # a config the full path refuses is not answered by the fast path: an unknown version, and
    # (hostile, e.g. written through Multus) a network name or container ID that walks out of
    # dataDir
    p = subprocess.run([launcher], input=json.dumps(dict(conf, cniVersion="9.9.9")).encode(),
                       env=env, capture_output=True)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 1
    for bad_conf, bad_env in ((dict(conf, name="../../etc"), {}),
                              (conf, {"CNI_CONTAINERID": "../n1/some"})):
        p = subprocess.run([launcher], input=json.dumps(bad_conf).encode(),
                           env=dict(env, **bad_env), capture_output=True)
        assert p.returncode == 1 and json.loads(p.stdout)["code"] in (4, 7), p.stdout


def test_metrics_text_parses():
    """The exposition is valid Prometheus text (the reference parser reads every family back)."""
    parser = pytest.importorskip("prometheus_client.parser")
    from pycxi.cni import node
    st = node.Stats()
    st.services = {"cxi0": 3, "cxi1": 0}
    st.records = {'net"with\\quotes': 2}
    st.in_use = {("cxi0", "PTE"): 10}
    st.totals = {("cxi0", "PTE"): 2048}
    st.tle_pools = {"cxi0": 1}
    st.orphans = {"cxi0": 1}
    st.removed["netns_gone"] = 4
    st.sweeps = 7
    fams = {f.name: f for f in parser.text_string_to_metric_families(node.render(st))}
    assert fams["pycxi_node_services"].samples[0].labels == {"device": "cxi0"}
    assert fams["pycxi_node_services"].samples[0].value == 3
    assert fams["pycxi_node_records"].samples[0].labels == {"network": 'net"with\\quotes'}
    # counters are exposed with the _total suffix the parser strips from the family name
    [s] = [s for s in fams["pycxi_node_leaked_removed"].samples if s.labels == {"reason": "netns_gone"}]
    assert s.value == 4 and s.name == "pycxi_node_leaked_removed_total"
    assert fams["pycxi_node_sweeps"].samples[0].value == 7

"""The cxi plugin in real network namespaces, chained after Debian's bridge (or the test-only
vethplug for 1.1.0), driven by a libcni-style driver, against the software CXI device."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cniutil import (index_links, netns_mounts_under, pins, PREV, PY, VERSIONS, PluginError, conflist, count_services, cxi_conf,
                      need_bridge, plugin_call, access_cmd, records, run, services, sim_reset, pyrun)

pytestmark = [need_bridge]


def access(svc, vni, dev="cxi0", netns=None, env=None):
    return run(access_cmd(svc, vni, dev), env=env or dict(os.environ), netns=netns)


def inode(path):
    return os.stat(path).st_ino


@pytest.fixture
def host(netns):
    return netns.add("cxh")


@pytest.mark.parametrize("version,method", [(v, "auto") for v in VERSIONS] + [("1.0.0", "set_netns")])
def test_add_access_check_del(version, method, cni_env, netns, host, tool_factory):
    tool = tool_factory(host)
    pod, other = netns.add(), netns.add()
    net = conflist(version, "cxinet", cxi_conf(cni_env, vnis=[1100], netnsMethod=method), cni_env)
    res = tool.add(net, netns.path(pod), "eth0", "ctrA")
    assert res["cniVersion"] == version
    assert any(i.get("sandbox") == netns.path(pod) for i in res["interfaces"])   # passed through

    svcs = services()
    assert set(svcs) == {"cxi0", "cxi1"}
    for dev, rows in svcs.items():
        assert len(rows) == 1, (dev, rows)
        assert rows[0]["netns"] == inode(netns.path(pod)) and rows[0]["vnis"] == [1100]
        assert rows[0]["enable"]
    sid = svcs["cxi0"][0]["svc"]
    [rec] = records(cni_env.data_dir)
    r = json.load(open(rec))
    assert r["phase"] == "ready" and r["containerID"] == "ctrA" and r["netnsInode"] == inode(netns.path(pod))

    ok = access(sid, 1100, netns=pod)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for where in (other, None):          # another pod's netns, and the host (this process's)
        p = access(sid, 1100, netns=where)
        assert p.returncode != 0 and "EPERM" in p.stdout + p.stderr, (where, p.stdout, p.stderr)

    tool.check(net, netns.path(pod), "eth0", "ctrA")
    # destroyed behind the plugin's back -> CHECK fails
    pyrun(f"import pycxi; pycxi.Device('cxi1').destroy_svc({svcs['cxi1'][0]['svc']})")
    with pytest.raises(PluginError) as ei:
        tool.check(net, netns.path(pod), "eth0", "ctrA")
    assert ei.value.plugin == "cxi" and ei.value.code == 105 and "does not exist" in ei.value.details

    tool.delete(net, netns.path(pod), "eth0", "ctrA")
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    tool.delete(net, netns.path(pod), "eth0", "ctrA")          # DEL twice
    assert count_services() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_del_after_netns_gone(version, cni_env, netns, host, tool_factory):
    tool = tool_factory(host)
    pod = netns.add()
    net = conflist(version, "cxinet", cxi_conf(cni_env, vnis=[1200]), cni_env)
    tool.add(net, netns.path(pod), "eth0", "ctrB")
    assert count_services() == 2
    netns.delete(pod)
    tool.delete(net, netns.path(pod), "eth0", "ctrB")           # netns path no longer exists
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    # DEL without CNI_NETNS and without prevResult, from the record alone
    rc, out, err = plugin_call(cni_env, "DEL", dict(cxi_conf(cni_env), cniVersion=version, name="cxinet"),
                               cid="ctrB")
    assert rc == 0, out


def test_gc_empty_list_removes_everything(cni_env, netns, host, tool_factory):
    tool = tool_factory(host)
    net = conflist("1.1.0", "cxinet", cxi_conf(cni_env), cni_env)
    pods = [netns.add() for _ in range(3)]
    for i, pod in enumerate(pods):
        n = json.loads(json.dumps(net))
        n["plugins"][1]["vnis"] = [1300 + i]
        tool.add(n, netns.path(pod), "eth0", f"ctr{i}")
    assert count_services() == 6
    plain = dict(cxi_conf(cni_env), cniVersion="1.1.0", name="cxinet")
    # GC keeps the valid ones
    rc, out, _ = plugin_call(cni_env, "GC", dict(plain, **{"cni.dev/valid-attachments": [
        {"containerID": "ctr0", "ifname": "eth0"}]}))
    assert rc == 0, out
    assert count_services() == 2 and len(records(cni_env.data_dir)) == 1
    rc, out, _ = plugin_call(cni_env, "GC", dict(plain, **{"cni.dev/valid-attachments": []}))
    assert rc == 0, out
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def test_gc_sweeps_services_whose_netns_is_gone(cni_env, netns):
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[1400]), cniVersion="1.1.0", name="n1", prevResult=PREV)
    rc, out, err = plugin_call(cni_env, "ADD", c, cid="ctrS", netns_path=netns.path(pod))
    assert rc == 0, (out, err)
    assert count_services() == 2
    netns.delete(pod)            # the runtime lost the pod without a DEL
    rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": [
        {"containerID": "ctrS", "ifname": "eth0"}]}))
    assert rc == 0, out
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def test_no_vni_no_service(cni_env, netns, host, tool_factory):
    tool = tool_factory(host)
    pod = netns.add()
    net = conflist("1.0.0", "cxinet", cxi_conf(cni_env), cni_env)
    res = tool.add(net, netns.path(pod), "eth0", "ctrN")
    assert res["ips"] and count_services() == 0
    tool.check(net, netns.path(pod), "eth0", "ctrN")
    tool.delete(net, netns.path(pod), "eth0", "ctrN")
    assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


@pytest.mark.parametrize("version", VERSIONS)
def test_prev_result_passed_through(version, cni_env, netns):
    pod = netns.add()
    prev = dict(PREV, cniVersion=version, dns={"nameservers": ["10.0.0.1"]})
    c = dict(cxi_conf(cni_env, vnis=[1500]), cniVersion=version, name="n1", prevResult=prev)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="ctrP", netns_path=netns.path(pod))
    assert rc == 0 and out == prev
    assert plugin_call(cni_env, "DEL", c, cid="ctrP")[0] == 0


def test_add_without_prev_result_is_refused(cni_env, netns):
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[1500]), cniVersion="1.0.0", name="n1")
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="ctrQ", netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and "chained" in out["msg"]
    assert count_services() == 0


def test_status(cni_env):
    base = dict(cxi_conf(cni_env), cniVersion="1.1.0", name="n1")
    rc, out, _ = plugin_call(cni_env, "STATUS", base)
    assert rc == 0 and out is None
    rc, out, _ = plugin_call(cni_env, "STATUS", dict(base, devices=["cxi7"]))
    assert rc == 1 and out["code"] == 50 and "cxi7" in out["details"]


def test_status_without_devices(cni_env):
    # a software device root that cannot exist: no device at all
    rc, out, _ = plugin_call(cni_env, "STATUS", dict(cxi_conf(cni_env), cniVersion="1.1.0", name="n1"),
                             extra_env={"PYCXI_SIM_ROOT": "/proc/nonexistent/sim"})
    assert rc == 1 and out["code"] == 50 and "no CXI device" in out["msg"]


def test_multi_nic_failure_rolls_back_first(cni_env, netns):
    # 13.1/14.0.0 rule on the software device: any profile overlap is EEXIST
    assert sim_reset(2, dict(os.environ, PYCXI_SIM_STRICT_VNI_OVERLAP="1")).returncode == 0
    # cxi1 refuses: VNI 1600 is already owned by another service there (EEXIST)
    blocker = int(pyrun("import pycxi; print(pycxi.Device('cxi1').alloc_svc("
                        "pycxi.SvcDesc(vnis=[1600], members=[pycxi.SvcMember.uid(4242)])))"))
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[1600]), cniVersion="1.0.0", name="n1", prevResult=PREV)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="ctrM", netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 101, out
    svcs = services()
    assert svcs["cxi0"] == [] and [r["svc"] for r in svcs["cxi1"]] == [blocker]
    assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    assert plugin_call(cni_env, "DEL", c, cid="ctrM")[0] == 0      # the runtime's DEL after it


def test_del_busy_service_is_kept_reported_then_gc(cni_env, netns):
    """A service with LNIs cannot be destroyed, nor disabled (the driver refuses while LNIs
    exist): DEL and GC say so (code 11 / 106, "still ENABLED"), keep the record and the netns
    pin, and GC removes all of it once the LNIs are gone."""
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[1700], destroyRetries=2, destroyRetryDelay=0.05),
             cniVersion="1.1.0", name="n1", prevResult=PREV)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="ctrD", netns_path=netns.path(pod))
    assert rc == 0, out
    sid = services()["cxi0"][0]["svc"]
    holder = subprocess.Popen(["ip", "netns", "exec", pod, PY, "-c",
                               "import sys, time, pycxi\n"
                               f"d = pycxi.Device('cxi0'); l = d.alloc_lni({sid})\n"
                               "print('ready', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        t = time.monotonic()
        rc, out, _ = plugin_call(cni_env, "DEL", c, cid="ctrD")
        assert rc == 1 and out["code"] == 11, out
        assert f"cxi0 service {sid} is in use by LNIs and still ENABLED" in out["details"], out
        assert time.monotonic() - t < 5
        row = [r for r in services()["cxi0"] if r["svc"] == sid][0]
        assert row["enable"]                                      # what DEL said
        [rec] = records(cni_env.data_dir)
        r = json.load(open(rec))
        assert r["phase"] == "deleting" and r["pin"] is True
        assert {e["state"] for e in r["services"]} == {"busy"}
        assert len(pins(cni_env.data_dir)) == 1                   # the netns stays pinned
        # GC while still busy: reported truthfully, record and pin kept
        rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": []}))
        assert rc == 1 and out["code"] == 106 and count_services() >= 1
        assert "still ENABLED" in out["details"] and "disabled" not in out["details"], out
        assert len(pins(cni_env.data_dir)) == 1
    finally:
        holder.stdin.close()
        holder.wait(10)
    rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": []}))
    assert rc == 0, out
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    assert pins(cni_env.data_dir) == [] == netns_mounts_under(cni_env.data_dir)


def test_reused_netns_inode_reclaims_stale_record(cni_env, netns):
    """A record whose netns vanished but whose inode now names a new pod's netns (the kernel
    reuses inode numbers): the new pod's ADD removes the stale services first."""
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[1800]), cniVersion="1.0.0", name="n1", prevResult=PREV)
    assert plugin_call(cni_env, "ADD", c, cid="old", netns_path=netns.path(pod))[0] == 0
    [rec] = records(cni_env.data_dir)
    r = json.load(open(rec))
    # as if made before pinning (version 1) and its netns gone since
    r["netns"] = "/run/netns/was-deleted-long-ago"
    r["pin"] = False
    json.dump(r, open(rec, "w"))
    [pin] = pins(cni_env.data_dir)
    subprocess.run(["umount", pin], check=True)
    os.unlink(pin)
    c2 = dict(c, vnis=[1801])
    rc, out, _ = plugin_call(cni_env, "ADD", c2, cid="new", netns_path=netns.path(pod))
    assert rc == 0, out
    svcs = services()
    assert [x["vnis"] for x in svcs["cxi0"]] == [[1801]]
    assert len(records(cni_env.data_dir)) == 1
    assert plugin_call(cni_env, "DEL", c2, cid="new")[0] == 0
    assert plugin_call(cni_env, "DEL", c, cid="old")[0] == 0
    assert count_services() == 0


def test_plugin_import_set(cni_env, netns):
    """The hot path imports only the standard library and pycxi (no logging, asyncio, sqlite3,
    http, yaml, kubernetes, dataclasses, typing)."""
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[1900]), cniVersion="1.0.0", name="n1", prevResult=PREV)
    env = dict(os.environ, **cni_env.env, CNI_COMMAND="ADD", CNI_CONTAINERID="imp", CNI_IFNAME="eth0",
               CNI_NETNS=netns.path(pod), CNI_PATH=cni_env.bin)
    p = subprocess.run([PY, "-IS", "-X", "importtime", os.path.join(cni_env.bin, "cxi")],
                       input=json.dumps(c), env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    mods = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if "import time:" in line}
    bad = {m for m in mods if m.split(".")[0] in (
        "logging", "asyncio", "sqlite3", "http", "urllib", "yaml", "kubernetes", "kopf",
        "dataclasses", "ssl", "typing") or m == "pycxi.vni" or m.startswith("pycxi.vni.")}
    assert not bad, bad
    assert plugin_call(cni_env, "DEL", c, cid="imp")[0] == 0


def test_pool_ceilings_per_nic(cni_env, netns):
    """The documented arithmetic (docs/cni.md): per-pod services take no TLE pool; with the
    default limits each takes one of the 15 free LE pools (13.1 semantics, as the software device
    models), so the 16th pod on a NIC gets code 11 and nothing leaks."""
    c = dict(cxi_conf(cni_env, devices=["cxi0"], logLevel="warning"), cniVersion="1.0.0",
             name="pools", prevResult=PREV)
    pods = [netns.add() for _ in range(16)]
    for i, pod in enumerate(pods):
        rc, out, _ = plugin_call(cni_env, "ADD", dict(c, vnis=[2500 + i]), cid=f"p{i}",
                                 netns_path=netns.path(pod))
        if i < 15:
            assert rc == 0, (i, out)
        else:
            assert rc == 1 and out["code"] == 11 and "LE pools" in out["details"], out
    st = json.loads(pyrun("import json; from pycxi.device import sim_status; "
                          "print(json.dumps(sim_status(0)))"))
    assert st["tle_pools_used"] == 1          # only the default service's
    assert st["le_pools_used"] == 16 and st["services"] == 16
    assert len(records(cni_env.data_dir)) == 15
    for i in range(16):
        assert plugin_call(cni_env, "DEL", dict(c, vnis=[2500 + i]), cid=f"p{i}")[0] == 0
    assert count_services() == 0


def test_del_when_a_device_is_gone(cni_env, netns):
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[2600]), cniVersion="1.0.0", name="n1", prevResult=PREV)
    assert plugin_call(cni_env, "ADD", c, cid="g1", netns_path=netns.path(pod))[0] == 0
    assert sim_reset(1, dict(os.environ)).returncode == 0      # cxi1 vanished (and cxi0 was reset)
    rc, out, _ = plugin_call(cni_env, "DEL", c, cid="g1")
    assert rc == 0, out
    assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def test_add_without_any_device(cni_env, netns):
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[2700]), cniVersion="1.0.0", name="n1", prevResult=PREV)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="z1", netns_path=netns.path(pod),
                             extra_env={"PYCXI_SIM_ROOT": "/proc/nonexistent/sim"})
    assert rc == 1 and out["code"] == 102, out
    assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def test_del_never_destroys_a_service_that_reused_the_id(cni_env, netns):
    """Our service was destroyed behind the plugin's back and its ID handed to someone else's
    (uid member): DEL drops the record and leaves that service alone."""
    pod = netns.add()
    c = dict(cxi_conf(cni_env, vnis=[2800], devices=["cxi0"]), cniVersion="1.0.0", name="n1",
             prevResult=PREV)
    assert plugin_call(cni_env, "ADD", c, cid="r1", netns_path=netns.path(pod))[0] == 0
    [row] = services()["cxi0"]
    other = int(pyrun(f"import pycxi; d = pycxi.Device('cxi0'); d.destroy_svc({row['svc']}); "
                      "print(d.alloc_svc(pycxi.SvcDesc(vnis=[2800], members=[pycxi.SvcMember.uid(7)])))"))
    assert other == row["svc"]                     # lowest free ID: reused
    assert plugin_call(cni_env, "DEL", c, cid="r1")[0] == 0
    assert [r["svc"] for r in services()["cxi0"]] == [other]
    assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)

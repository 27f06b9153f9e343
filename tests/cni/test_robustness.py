"""Concurrency, SIGKILL during ADD, and generated bad input."""
import json
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cniutil import (index_links, netns_mounts_under, pins, PREV, count_services, cxi_conf, plugin_call,
                     records, services)

NO_LE = {"LE": {"max": 0, "res": 0}}     # 50 services per NIC exceed the 15 LE pools (13.1)


def test_50_parallel_adds_then_dels(cni_env, netns):
    n = 50
    pods = [netns.add() for _ in range(n)]

    def conf(i):
        return dict(cxi_conf(cni_env, vnis=[2000 + i], limits=NO_LE, logLevel="warning"),
                    cniVersion="1.0.0", name="par", prevResult=PREV)

    def add(i):
        return plugin_call(cni_env, "ADD", conf(i), cid=f"par{i}", netns_path=netns.path(pods[i]))

    def dele(i):
        return plugin_call(cni_env, "DEL", conf(i), cid=f"par{i}")

    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(add, range(n)))
    assert all(r[0] == 0 for r in res), [r for r in res if r[0]][:3]
    svcs = services()
    assert len(svcs["cxi0"]) == n and len(svcs["cxi1"]) == n
    inodes = {os.stat(netns.path(p)).st_ino for p in pods}
    assert {r["netns"] for r in svcs["cxi0"]} == inodes
    assert len(records(cni_env.data_dir)) == n
    assert len(pins(cni_env.data_dir)) == n == len(netns_mounts_under(cni_env.data_dir))
    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(dele, range(n)))
    assert all(r[0] == 0 for r in res), [r for r in res if r[0]][:3]
    assert count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
    assert pins(cni_env.data_dir) == [] == netns_mounts_under(cni_env.data_dir)


def _start_add(cni_env, conf, cid, netns_path, extra_env=None):
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
           "CNI_IFNAME": "eth0", "CNI_NETNS": netns_path, "CNI_PATH": ":".join(cni_env.path)}
    env.update(cni_env.env)
    env.update(extra_env or {})
    p = subprocess.Popen([os.path.join(cni_env.bin, "cxi")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdin.write(json.dumps(conf).encode())
    p.stdin.close()
    return p


def _cleanup_like_a_runtime(cni_env, conf, cid, gc=True):
    rc, out, _ = plugin_call(cni_env, "DEL", conf, cid=cid)
    assert rc == 0, out
    if gc:
        rc, out, _ = plugin_call(cni_env, "GC", dict(conf, cniVersion="1.1.0",
                                                     **{"cni.dev/valid-attachments": []}))
        assert rc == 0, out


def test_sigkill_at_random_times_during_add(cni_env, netns):
    pod = netns.add()
    conf = dict(cxi_conf(cni_env, vnis=[2100], logLevel="warning"), cniVersion="1.1.0",
                name="kill", prevResult=PREV)
    # calibrate: how long does a full ADD take here?
    t = time.monotonic()
    assert plugin_call(cni_env, "ADD", conf, cid="cal", netns_path=netns.path(pod))[0] == 0
    span = time.monotonic() - t
    _cleanup_like_a_runtime(cni_env, conf, "cal", gc=False)
    rnd = random.Random(4)
    outcomes = set()
    for i in range(24):
        p = _start_add(cni_env, conf, f"k{i}", netns.path(pod))
        time.sleep(rnd.uniform(0.2, 1.0) * span)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()
        outcomes.add(p.returncode)
        # the runtime: DEL after a failed ADD (every other time: GC alone)
        if i % 2:
            _cleanup_like_a_runtime(cni_env, conf, f"k{i}")
        else:
            rc, out, _ = plugin_call(cni_env, "GC", dict(conf, **{"cni.dev/valid-attachments": []}))
            assert rc == 0, out
        assert count_services() == 0, (i, services())
        assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir), i
        assert pins(cni_env.data_dir) == [] == netns_mounts_under(cni_env.data_dir), i


@pytest.mark.parametrize("method", ["member", "set_netns"])
def test_crash_at_every_device_write_during_add(cni_env, netns, method):
    """PYCXI_SIM_CRASHPOINT=N kills the plugin at the N-th journalled write of the device model:
    every step of both allocations (and the record writes between them), for both ways of
    binding the netns (set_netns: a service exists for a while with no member at all)."""
    pod = netns.add()
    conf = dict(cxi_conf(cni_env, vnis=[2200], logLevel="error", netnsMethod=method),
                cniVersion="1.1.0", name="crash", prevResult=PREV)
    crashed = 0
    for n in range(1, 80):
        p = _start_add(cni_env, conf, f"c{n}", netns.path(pod), {"PYCXI_SIM_CRASHPOINT": str(n)})
        p.wait(30)
        p.stdout.close()
        p.stderr.close()
        if p.returncode == 0:
            _cleanup_like_a_runtime(cni_env, conf, f"c{n}", gc=False)
            assert count_services() == 0
            break
        crashed += 1
        _cleanup_like_a_runtime(cni_env, conf, f"c{n}", gc=bool(n % 2))
        assert count_services() == 0, (n, services())
        assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir), n
        assert pins(cni_env.data_dir) == [] == netns_mounts_under(cni_env.data_dir), n
    assert crashed >= 2
    print(f"crashed at {crashed} device writes before an ADD completed")


def test_sigkill_during_del_then_del_again(cni_env, netns):
    pod = netns.add()
    conf = dict(cxi_conf(cni_env, vnis=[2300], logLevel="warning"), cniVersion="1.1.0",
                name="kdel", prevResult=PREV)
    rnd = random.Random(7)
    for i in range(10):
        assert plugin_call(cni_env, "ADD", conf, cid=f"d{i}", netns_path=netns.path(pod))[0] == 0
        env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "DEL", "CNI_CONTAINERID": f"d{i}",
               "CNI_IFNAME": "eth0", "CNI_PATH": ":".join(cni_env.path)}
        env.update(cni_env.env)
        p = subprocess.Popen([os.path.join(cni_env.bin, "cxi")], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        p.stdin.write(json.dumps(conf).encode())
        p.stdin.close()
        time.sleep(rnd.uniform(0.01, 0.12))
        p.send_signal(signal.SIGKILL)
        p.wait()
        rc, out, _ = plugin_call(cni_env, "DEL", conf, cid=f"d{i}")      # the runtime retries
        assert rc == 0, out
        assert count_services() == 0, (i, services())
        assert records(cni_env.data_dir) == [] == index_links(cni_env.data_dir), i
        assert pins(cni_env.data_dir) == [] == netns_mounts_under(cni_env.data_dir), i

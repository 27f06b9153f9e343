"""What a network configuration may not decide: the node's policy file (pycxi.cni.policy), the
explicit choice of the software device, and the plugin's own output channel.

Under Multus a tenant writes the cxi plugin's network configuration (a NetworkAttachmentDefinition),
so these tests play that tenant: a config naming another job's VNI, another database, another
quarantine, another API server.  Each is refused with the spec's error JSON (code 7) and leaves
nothing behind: no service, no record, no index link, no request to the API, no database.
"""
import json
import os
import stat
import subprocess

import pytest

from cniutil import (PREV, count_services, cxi_conf, index_links, plugin_call, records, services,
                     write_node_conf)


def nothing_left(cni_env):
    return count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)


def policy(cni_env, doc, name="policy.json"):
    """Point the plugin at a node policy of this test's own (logs in the test's directory)."""
    doc = dict({"logDir": str(cni_env.tmp)}, **doc)
    cni_env.env["PYCXI_CNI_POLICY"] = write_node_conf(cni_env.tmp / name, doc)
    return cni_env.env["PYCXI_CNI_POLICY"]


def net(cni_env, name="tenant", **kw):
    return dict(cxi_conf(cni_env, **kw), cniVersion="1.0.0", name=name, prevResult=PREV)


# --- static VNIs ----------------------------------------------------------------------------

def test_hostile_static_vni_refused(cni_env, netns):
    """The admin allows the tenant's network 4100 (its job); the tenant's config names 3002,
    another job's VNI: refused, nothing created.  Its own VNI still works."""
    path = policy(cni_env, {"staticVnis": [[4100, 4100]]})
    pod = netns.add()
    for vnis in ([3002], [4100, 3002]):
        rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env, vnis=vnis), cid="h1",
                                 netns_path=netns.path(pod))
        assert rc == 1 and out["code"] == 7, out
        assert "3002" in out["msg"] and "not allowed on this node" in out["msg"]
        assert path in out["details"] and "4100-4100" in out["details"]
        assert nothing_left(cni_env)
    rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env, vnis=[4100]), cid="h1",
                             netns_path=netns.path(pod))
    assert rc == 0, out
    assert [r["vnis"] for r in services()["cxi0"]] == [[4100]]
    assert plugin_call(cni_env, "DEL", net(cni_env, vnis=[4100]), cid="h1")[0] == 0
    assert nothing_left(cni_env)


def test_no_policy_file_grants_no_static_vni(cni_env, netns):
    """Without the node file (a Kubernetes node: VNIs come from the VNI service only), no
    static VNI and no local allocator; a network without VNI still gets its pass-through."""
    cni_env.env["PYCXI_CNI_POLICY"] = str(cni_env.tmp / "absent.json")
    pod = netns.add()

    def conf(**kw):         # no logFile: the default logDir is /var/log
        return {k: v for k, v in net(cni_env, **kw).items() if k != "logFile"}

    rc, out, _ = plugin_call(cni_env, "ADD", conf(vnis=[1]), cid="n1", netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and "staticVnis" in out["details"], out
    rc, out, _ = plugin_call(cni_env, "ADD", conf(localAllocator={"key": "j"}), cid="n1",
                             netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and "localAllocator is not enabled" in out["msg"], out
    assert nothing_left(cni_env) and not os.path.exists(cni_env.vni_db)
    rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env), cid="n1", netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and "/var/log" in out["details"], out     # logFile
    rc, out, _ = plugin_call(cni_env, "ADD", conf(), cid="n1", netns_path=netns.path(pod))
    assert rc == 0 and out == dict(PREV)
    assert plugin_call(cni_env, "DEL", conf(), cid="n1")[0] == 0


def test_policy_path_comes_from_the_environment_only(cni_env, netns):
    """A network configuration cannot point the plugin at a policy of its own making: the key
    is unknown there (ignored, logged), the environment's file decides."""
    own = write_node_conf(cni_env.tmp / "mine.json", {"staticVnis": [[1, 65535]]})
    policy(cni_env, {"staticVnis": [[4100, 4100]]})
    pod = netns.add()
    c = net(cni_env, vnis=[3002], nodeConf=own, PYCXI_CNI_POLICY=own)
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="e1", netns_path=netns.path(pod),
                             args=f"IgnoreUnknown=1;PYCXI_CNI_POLICY={own}")
    assert rc == 1 and out["code"] == 7, out
    assert nothing_left(cni_env)


# --- the local allocator's knobs ------------------------------------------------------------

@pytest.mark.parametrize("la,what", [
    ({"path": "/tmp/tenant-own.db"}, "localAllocator.path"),
    ({"quarantine": 0.5}, "localAllocator.quarantine"),
    ({"ranges": [[4000, 5000]]}, "localAllocator.ranges"),
    ({"ranges": [[6000, 6000], [3002, 3002]]}, "localAllocator.ranges"),
])
def test_hostile_local_allocator_knobs_refused(cni_env, netns, la, what):
    """Another database is another pool (duplicate VNIs); a shorter quarantine hands a VNI to
    a new pod while the old one may still send; ranges outside the node's reach into static
    VNIs.  All refused before the database is even opened."""
    policy(cni_env, {"staticVnis": [[3000, 4999]],
                     "localAllocator": {"path": cni_env.vni_db, "ranges": [[5000, 9999]],
                                        "quarantine": 30}})
    pod = netns.add()
    rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env, localAllocator=la), cid="l1",
                             netns_path=netns.path(pod), args="K8S_POD_NAME=p")
    assert rc == 1 and out["code"] == 7 and what in out["msg"], out
    assert nothing_left(cni_env)
    assert not os.path.exists(cni_env.vni_db) and not os.path.exists("/tmp/tenant-own.db")


def test_local_allocator_takes_the_nodes_values(cni_env, netns):
    """The network may narrow the node's ranges and repeat its path; the record and the store
    use the node's path and quarantine."""
    policy(cni_env, {"localAllocator": {"path": cni_env.vni_db, "ranges": [[5000, 9999]],
                                        "quarantine": 30}})
    pod = netns.add()
    c = net(cni_env, localAllocator={"path": cni_env.vni_db, "ranges": [[7000, 7001]]})
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="l1", netns_path=netns.path(pod),
                             args="K8S_POD_NAME=p")
    assert rc == 0, out
    [rec] = [json.load(open(p)) for p in records(cni_env.data_dir)]
    assert rec["localAllocator"] == {"path": cni_env.vni_db, "ranges": [[7000, 7001]],
                                     "quarantine": 30}
    assert services()["cxi0"][0]["vnis"] == [7000]
    assert plugin_call(cni_env, "DEL", c, cid="l1")[0] == 0
    assert nothing_left(cni_env)


def test_hostile_kubeconfig_refused(cni_env, netns, tmp_path):
    """A kubeconfig names the API server that says which VNI a pod has: a tenant's own (in
    its container's rootfs, say) would let it pick any VNI.  Only the node's kubeconfig."""
    policy(cni_env, {"kubernetes": {"kubeconfig": cni_env.kubeconfig}})
    evil = tmp_path / "evil.kubeconfig"
    evil.write_text("{}")
    pod = netns.add()
    c = net(cni_env, kubernetes={"kubeconfig": str(evil)})
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="k1", netns_path=netns.path(pod),
                             args="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p")
    assert rc == 1 and out["code"] == 7 and "kubeconfig" in out["msg"], out
    assert nothing_left(cni_env)


@pytest.mark.parametrize("doc,why", [
    ({"staticVnis": [[5000, 5100]], "localAllocator": {"ranges": [[5050, 6000]]}}, "overlaps"),
    ({"staticVnis": [[10, 5]]}, "staticVnis"),
    ({"staticVnis": [[1, 2]], "typo": 1}, "unknown key"),
    ({"localAllocator": {"path": "relative.db"}}, "localAllocator.path"),
    ("not json", "not JSON"),
])
def test_bad_policy_file_refused(cni_env, netns, doc, why):
    path = str(cni_env.tmp / "bad.json")
    with open(path, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    cni_env.env["PYCXI_CNI_POLICY"] = path
    pod = netns.add()
    rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env, vnis=[5001]), cid="b1",
                             netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and path in out["msg"] and why in out["details"], out
    assert nothing_left(cni_env)


def test_policy_file_others_may_write_grants_nothing(cni_env, netns):
    path = policy(cni_env, {"staticVnis": [[1, 65535]]})
    os.chmod(path, 0o666)
    pod = netns.add()
    rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env, vnis=[3002]), cid="w1",
                             netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and "writable by its owner only" in out["details"], out
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o644)
    rc, out, _ = plugin_call(cni_env, "ADD", net(cni_env, vnis=[3002]), cid="w1",
                             netns_path=netns.path(pod))
    assert rc == 1 and out["code"] == 7 and "uid 65534" in out["details"], out
    assert nothing_left(cni_env)


def test_one_default_for_the_embedded_allocator():
    """`pycxi vni` and the plugin's localAllocator share one database and one quarantine."""
    from pycxi.cni import policy
    from pycxi.vni import cli, store
    assert cli.DEFAULT_DB == store.DEFAULT_DB == "/var/lib/pycxi/vni.db"
    p = policy.load(os.path.join(os.path.dirname(__file__), "no-such-file.json"))
    assert p.local is None and p.static == [] and p.kubeconfigs == policy.DEFAULT_KUBECONFIGS
    # where the installer writes it: <conf dir>/cxi.d/cxi.kubeconfig, standard and k3s
    from pycxi.cni import install
    assert policy.DEFAULT_KUBECONFIGS == tuple(f"{d}/cxi.d/cxi.kubeconfig" for d in (
        install.DEFAULT_CONF_DIR, install.K3S_CONF_DIR))


def test_policy_defaults_for_the_local_allocator(tmp_path):
    from pycxi.cni import policy
    from pycxi.vni import store
    p = policy.load(write_node_conf(tmp_path / "n.json", {"localAllocator": {}}))
    assert policy.local_settings(p) == {"path": store.DEFAULT_DB, "ranges": [(1024, 65535)],
                       "quarantine": store.DEFAULT_QUARANTINE}


# --- the software device only on purpose ----------------------------------------------------

def _is_sim():
    import subprocess as sp
    from cniutil import PY
    p = sp.run([PY, "-c", "import pycxi; print(pycxi.BACKEND)"], capture_output=True, text=True)
    return p.stdout.strip() == "sim"


@pytest.mark.skipif(not _is_sim(), reason="this pycxi is built against libcxi (no software device)")
def test_software_device_only_when_chosen(cni_env, netns):
    """A build on the software device refuses ADD/CHECK and reports STATUS not ready unless
    PYCXI_SIM_ROOT is in the plugin's environment; the library's default root is not used.
    DEL/GC with nothing recorded succeed; DEL of a record made on the chosen device still
    reaches it (the record remembers the root, for runtimes that scrub the environment)."""
    pod = netns.add()
    no_sim = {"PYCXI_SIM_ROOT": None}
    c = dict(net(cni_env, vnis=[4100]), cniVersion="1.1.0")
    for cmd in ("ADD", "CHECK"):
        rc, out, _ = plugin_call(cni_env, cmd, c, cid="s0", netns_path=netns.path(pod),
                                 extra_env=no_sim)
        assert rc == 1, out
        if cmd == "ADD":
            assert out["code"] == 50 and "software CXI device" in out["msg"], out
            assert "PYCXI_SIM_ROOT" in out["details"]
    assert nothing_left(cni_env)
    rc, out, _ = plugin_call(cni_env, "STATUS", c, extra_env=no_sim)
    assert rc == 1 and out["code"] == 50 and "software CXI device" in out["msg"], out
    assert plugin_call(cni_env, "DEL", c, cid="s0", extra_env=no_sim)[0] == 0
    rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": []}),
                             extra_env=no_sim)
    assert rc == 0, out

    # chosen: works; CHECK without the variable is refused even though the record knows the root
    assert plugin_call(cni_env, "ADD", c, cid="s1", netns_path=netns.path(pod))[0] == 0
    assert plugin_call(cni_env, "STATUS", c)[0] == 0
    assert plugin_call(cni_env, "CHECK", c, cid="s1", netns_path=netns.path(pod))[0] == 0
    rc, out, _ = plugin_call(cni_env, "CHECK", c, cid="s1", netns_path=netns.path(pod),
                             extra_env=no_sim)
    assert rc == 1 and out["code"] == 50, out
    assert [len(v) for v in services().values()] == [1, 1]    # one per NIC
    assert plugin_call(cni_env, "DEL", c, cid="s1", extra_env=no_sim)[0] == 0
    assert nothing_left(cni_env)


def test_hostile_log_file_outside_the_log_dir_refused(cni_env, netns, tmp_path):
    """The plugin appends to logFile as root, with text a tenant partly controls (its unknown
    keys): a network may not point it at a file outside the node's logDir (a shell profile,
    an authorized_keys).  Refused, and the file is untouched; a symlink out is no way round."""
    outside = tmp_path.parent / f"{tmp_path.name}-victim"
    outside.mkdir()
    victim = outside / "profile"
    victim.write_text("# mine\n")
    policy(cni_env, {"staticVnis": [[4100, 4100]], "logDir": str(cni_env.tmp / "logs")})
    os.mkdir(cni_env.tmp / "logs")
    os.symlink(victim, cni_env.tmp / "logs" / "link.log")
    pod = netns.add()
    for target in (str(victim), str(cni_env.tmp / "logs" / "link.log"),
                   str(cni_env.tmp / "logs" / ".." / "x.log")):
        c = net(cni_env, vnis=[4100], logFile=target, logLevel="debug", **{"$(reboot)": 1})
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid="v1", netns_path=netns.path(pod))
        assert rc == 1 and out["code"] == 7 and "log directory" in out["details"], out
        assert victim.read_text() == "# mine\n"
        assert nothing_left(cni_env)
    c = net(cni_env, vnis=[4100], logFile=str(cni_env.tmp / "logs" / "cxi.log"))
    assert plugin_call(cni_env, "ADD", c, cid="v1", netns_path=netns.path(pod))[0] == 0
    # DEL never fails over where to log (a refused DEL would leak the service): stderr only
    rc, out, err = plugin_call(cni_env, "DEL", dict(c, logFile=str(victim)), cid="v1")
    assert rc == 0 and "logFile ignored" in err, (out, err)
    assert victim.read_text() == "# mine\n" and nothing_left(cni_env)


# --- unknown keys, the plugin's stdout --------------------------------------------------------

def test_unknown_keys_ignored_and_logged(cni_env, netns):
    pod = netns.add()
    c = net(cni_env, vnis=[4100], futureKnob={"x": 1}, limits={"NEWRSRC": [1, 0]})
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="u1", netns_path=netns.path(pod))
    assert rc == 0 and out == dict(PREV, cniVersion="1.0.0"), out
    log = open(c["logFile"]).read()
    assert "ignoring unknown configuration key(s) 'futureKnob'" in log
    assert "'NEWRSRC' in limits" in log
    assert plugin_call(cni_env, "DEL", c, cid="u1")[0] == 0
    assert nothing_left(cni_env)


@pytest.mark.parametrize("target", ["/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "fifo",
                                    "/dev/null", "stdout-file"])
def test_log_file_never_the_result_channel(cni_env, netns, tmp_path, target):
    """The result is JSON on stdout: a logFile that is stdout/stderr, a pipe, a tty or a device
    would corrupt it (or block).  Refused with code 7 before anything is done."""
    policy(cni_env, {"staticVnis": [[4100, 4100]], "logDir": "/"})   # only the type check refuses
    pod = netns.add()
    extra = {}
    if target == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    c = net(cni_env, vnis=[4100], logFile=target, logLevel="debug")
    if target == "stdout-file":
        # the runtime captured stdout into a regular file, and logFile names that very file
        out_path = tmp_path / "stdout.txt"
        c["logFile"] = str(out_path)
        env = dict(os.environ, **cni_env.env, CNI_COMMAND="ADD", CNI_CONTAINERID="o1",
                   CNI_IFNAME="eth0", CNI_NETNS=netns.path(pod), CNI_PATH=cni_env.bin)
        with open(out_path, "w") as f:
            rc = subprocess.run([os.path.join(cni_env.bin, "cxi")], input=json.dumps(c).encode(),
                                env=env, stdout=f, stderr=subprocess.PIPE).returncode
        out = json.loads(out_path.read_text())
        assert rc == 1 and out["code"] == 7 and "stdout" in out["details"], out
        assert nothing_left(cni_env)
        return
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="o1", netns_path=netns.path(pod), extra_env=extra)
    assert rc == 1 and out["code"] == 7 and "logFile" in out["msg"], out
    assert nothing_left(cni_env)
    if target.endswith("fifo"):
        assert stat.S_ISFIFO(os.stat(target).st_mode)

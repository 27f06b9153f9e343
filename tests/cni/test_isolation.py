"""The node-level attacks on the cxi plugin, run for real (issue: isolation at the node).

* CNI_NETNS that is not a pod's network namespace (the host's, another kind of namespace, a
  plain file, a directory, a FIFO): refused with code 4, nothing created.
* A dead pod's netns inode inherited by a namespace made later: an unprivileged user (``nobody``)
  loops ``unshare -Urn`` to get the inode of a pod whose namespace died without a DEL and tries
  to use its service.  The plugin pins the namespace while the service exists, so the number
  cannot be handed out again; GC then releases service and pin.
* Network names, container IDs and ifnames that collide with the plugin's own state files or
  with each other (``by-netns``, ``lock``, ``x_y``+``eth0`` vs ``x``+``y_eth0``, ...).
* Records of the previous state layout (a plugin upgrade under running pods).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from coreutil import run_forked  # noqa: E402
from cniutil import (PREV, PY, count_services, cxi_conf, index_links,  # noqa: E402
                     netns_mounts_under, pins, plugin_call, records, services, sim_reset)


def conf_of(cni_env, name="n1", vnis=(3100,), version="1.1.0", **kw):
    return dict(cxi_conf(cni_env, vnis=list(vnis), devices=["cxi0"], **kw), cniVersion=version,
                name=name, prevResult=PREV)


def nothing_left(cni_env):
    return (count_services() == 0 and records(cni_env.data_dir) == [] == index_links(cni_env.data_dir)
            and pins(cni_env.data_dir) == [] == netns_mounts_under(cni_env.data_dir))


def pinned_inode(path):
    st = os.stat(path)
    return st.st_ino if st.st_dev == os.stat("/proc/self/ns/net").st_dev else None


# ---------------------------------------------------------------------------------------------
# bad CNI_NETNS

@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p)
    return str(p)


BAD_NETNS = [
    ("/proc/self/ns/net", "own network namespace"),       # the plugin's own: the host's
    ("/proc/1/ns/net", "(pid 1's)|Permission denied"),    # the initial one (if readable)
    ("/etc/passwd", "not a namespace file"),
    ("/", "not a namespace file"),
    ("/dev/null", "not a namespace file"),
    ("/proc/self/ns/user", "a user namespace"),
    ("/proc/self/ns/mnt", "a mount namespace"),
    ("/proc/self/ns/uts", "a uts namespace"),
    ("/run/netns/does-not-exist-cxi", "FileNotFoundError"),
    ("relative/path", "FileNotFoundError"),
]


@pytest.mark.parametrize("path,why", BAD_NETNS, ids=[p for p, _ in BAD_NETNS])
def test_add_refuses_what_is_not_a_pod_netns(cni_env, path, why):
    c = conf_of(cni_env)
    rc, out, err = plugin_call(cni_env, "ADD", c, cid="bad", netns_path=path, timeout=30)
    assert rc == 1 and out["code"] == 4, (out, err)
    assert "CNI_NETNS" in out["msg"] and any(w in out["details"] for w in why.split("|")), out
    assert "Traceback" not in err
    assert nothing_left(cni_env)


def test_add_refuses_the_hosts_netns_bound_like_a_pods(cni_env, tmp_path):
    """The node's namespace bind-mounted where a runtime keeps pods' (/run/netns/<x>)."""
    fake = tmp_path / "looks-like-a-pod"
    fake.touch()
    subprocess.run(["mount", "--bind", "/proc/self/ns/net", str(fake)], check=True)
    try:
        rc, out, _ = plugin_call(cni_env, "ADD", conf_of(cni_env), cid="bad", netns_path=str(fake))
        assert rc == 1 and out["code"] == 4 and "own network namespace" in out["details"], out
        assert nothing_left(cni_env)
    finally:
        subprocess.run(["umount", str(fake)], check=True)


def test_add_refuses_a_fifo_without_hanging(cni_env, fifo):
    rc, out, err = plugin_call(cni_env, "ADD", conf_of(cni_env), cid="bad", netns_path=fifo,
                               timeout=30)
    assert rc == 1 and out["code"] == 4 and "not a namespace file" in out["details"], out
    assert nothing_left(cni_env)


def test_check_refuses_what_is_not_a_pod_netns(cni_env, netns, fifo):
    pod = netns.add()
    c = conf_of(cni_env)
    assert plugin_call(cni_env, "ADD", c, cid="ck", netns_path=netns.path(pod))[0] == 0
    assert plugin_call(cni_env, "CHECK", c, cid="ck", netns_path=netns.path(pod))[0] == 0
    for path, why in BAD_NETNS + [(fifo, "not a namespace file")]:
        rc, out, _ = plugin_call(cni_env, "CHECK", c, cid="ck", netns_path=path, timeout=30)
        assert rc == 1 and out["code"] == 4, (path, out)
        assert any(w in out["details"] for w in why.split("|")), (path, out)
    # the pod is untouched by all that
    assert plugin_call(cni_env, "CHECK", c, cid="ck", netns_path=netns.path(pod))[0] == 0
    assert plugin_call(cni_env, "DEL", c, cid="ck")[0] == 0
    assert nothing_left(cni_env)


# ---------------------------------------------------------------------------------------------
# a dead pod's inode

@pytest.fixture
def open_sim(cni_env, monkeypatch):
    """The software device in a directory any user can reach (the attacker is ``nobody``)."""
    root = tempfile.mkdtemp(prefix="cxi-isol-sim-")
    os.chmod(root, 0o755)
    monkeypatch.setenv("PYCXI_SIM_ROOT", root)
    assert sim_reset(1, dict(os.environ)).returncode == 0
    for n in os.listdir(root):
        os.chmod(os.path.join(root, n), 0o666 if os.path.isfile(os.path.join(root, n)) else 0o755)
    cni_env.env["PYCXI_SIM_ROOT"] = root
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def attack(target, tries, svc, vni, pace=0.04):
    """As ``nobody`` (setgroups/setgid/setuid for real), ``tries`` times: a child makes a new
    user+network namespace (``unshare -Urn``'s unshare(2)), reports its netns inode, and --
    when that is ``target``, and on the first try to show the device is reachable -- allocates
    an LNI and a domain on ``svc``.  Forked from this process, not exec'd: the interpreter may
    live where ``nobody`` cannot execute it.  Tries are paced like a shell loop of
    ``unshare -Urn`` (the kernel frees a namespace asynchronously).  Returns the report lines."""
    def fn():
        import ctypes
        import errno
        import time
        libc = ctypes.CDLL(None, use_errno=True)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        for i in range(tries):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                out = []
                try:
                    if libc.unshare(0x10000000 | 0x40000000) != 0:
                        out.append(f"UNSHARE-FAILED {errno.errorcode.get(ctypes.get_errno())}")
                    else:
                        x = os.stat("/proc/self/ns/net").st_ino
                        out.append(str(x))
                        if x == target:
                            out.append(f"HIT {x}")
                        if x == target or i == 0:
                            import pycxi
                            from pycxi.errors import CxiLibError
                            try:
                                with pycxi.Device("cxi0") as d:
                                    lni = d.alloc_lni(svc)
                                    lni.alloc_domain(vni)
                                    out.append("ALLOWED")
                            except CxiLibError as e:
                                out.append(f"DENIED {errno.errorcode.get(e.errno, e.errno)}")
                except BaseException as e:
                    out.append(f"ERROR {e!r}")
                os.write(w, ("\n".join(out) + "\n").encode())
                os._exit(0)
            os.close(w)
            with os.fdopen(r) as f:
                sys.stdout.write(f.read())
            os.waitpid(pid, 0)
            time.sleep(pace)
        return 0
    import sys
    res = run_forked(fn, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:]
    return res.stdout.split("\n")


def test_dead_pod_inode_cannot_be_inherited(cni_env, netns, open_sim):
    pod = netns.add()
    c = conf_of(cni_env, vnis=[3200])
    rc, out, _ = plugin_call(cni_env, "ADD", c, cid="victim", netns_path=netns.path(pod))
    assert rc == 0, out
    target = os.stat(netns.path(pod)).st_ino
    [row] = services()["cxi0"]
    assert row["netns"] == target and row["enable"]
    [pin] = pins(cni_env.data_dir)
    assert pinned_inode(pin) == target

    probe = attack(0, 1, row["svc"], 3200)
    if any(x.startswith("UNSHARE-FAILED") for x in probe):
        pytest.skip(f"unprivileged user namespaces unavailable: {probe}")

    # the runtime loses the pod: its netns file goes, no process is left, no DEL
    netns.delete(pod)
    assert not os.path.exists(netns.path(pod))

    lines = attack(target, 300, row["svc"], 3200)
    seen = [int(x) for x in lines if x.isdigit()]
    assert len(seen) == 300, lines[-5:]
    assert lines[1] == "DENIED EPERM", lines[:3]     # the device is reachable; not a member
    assert target not in seen and not any(x.startswith("HIT") for x in lines)
    assert "ALLOWED" not in lines
    # the pin held the namespace (so its number) the whole time; the service is still there
    assert pinned_inode(pin) == target
    assert [r["svc"] for r in services()["cxi0"]] == [row["svc"]]

    # GC (the attachment still listed as valid: the runtime does not know it is dead) sweeps it:
    # nothing but the plugin's own pin refers to the namespace any more
    rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": [
        {"containerID": "victim", "ifname": "eth0"}]}))
    assert rc == 0, out
    assert nothing_left(cni_env)


def test_gc_leaves_a_live_pinned_pod_alone(cni_env, netns):
    pod = netns.add()
    c = conf_of(cni_env, vnis=[3300])
    assert plugin_call(cni_env, "ADD", c, cid="live", netns_path=netns.path(pod))[0] == 0
    rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": [
        {"containerID": "live", "ifname": "eth0"}]}))
    assert rc == 0, out
    assert count_services() == 1 and len(pins(cni_env.data_dir)) == 1
    assert plugin_call(cni_env, "CHECK", c, cid="live", netns_path=netns.path(pod))[0] == 0
    assert plugin_call(cni_env, "DEL", c, cid="live")[0] == 0
    assert nothing_left(cni_env)


def test_sweep_entry_point_all_networks(cni_env, netns):
    """``pycxi.cni.commands.sweep`` -- what a node component calls periodically -- releases the
    dead pods of every network, leaves the live ones."""
    live, dead = netns.add(), netns.add()
    for name, pod, vni in (("na", live, 3400), ("nb", dead, 3401), ("nc", dead, 3402)):
        c = conf_of(cni_env, name=name, vnis=[vni])
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid=f"s-{name}", netns_path=netns.path(pod))
        assert rc == 0, out
    assert count_services() == 3 and len(pins(cni_env.data_dir)) == 3
    netns.delete(dead)
    code = ("from pycxi.cni.log import Log; from pycxi.cni.commands import sweep\n"
            f"r = sweep({cni_env.data_dir!r}, Log('warning'))\n"
            "print(r.problems, sorted(r.removed.items()), r.unverifiable)")
    p = subprocess.run([PY, "-c", code], env=dict(os.environ, **cni_env.env), capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[] [('netns_gone', 2)] 0", p.stdout + p.stderr
    svcs = services()["cxi0"]
    assert [r["vnis"] for r in svcs] == [[3400]] and len(pins(cni_env.data_dir)) == 1
    assert plugin_call(cni_env, "DEL", conf_of(cni_env, name="na"), cid="s-na")[0] == 0
    assert nothing_left(cni_env)


# ---------------------------------------------------------------------------------------------
# hostile names

def test_hostile_network_names_touch_nothing_else(cni_env, netns):
    """Networks named like the plugin's own files (and each other) live side by side; GC of any
    of them with an empty list releases only its own."""
    names = ["by-netns", "lock", "networks", "_networks", "_index", ".", "..", "a/b", "../n1", "n" * 254,
             "n1", "n1.json", "x.y", "x_y", "n" * 253]
    pods = {}
    made = []
    for i, name in enumerate(names):
        pods[name] = netns.add()
        c = conf_of(cni_env, name=name, vnis=[3500 + i])
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid="same", netns_path=netns.path(pods[name]))
        if not name[0].isalnum() or "/" in name or len(name) > 253:
            assert rc == 1 and out["code"] == 7, (name, out)       # not a valid CNI name
            continue
        assert rc == 0, (name, out)
        made.append(name)
    assert count_services() == len(made) and len(records(cni_env.data_dir)) == len(made)
    assert len(index_links(cni_env.data_dir)) == len(made) == len(pins(cni_env.data_dir))
    assert sorted(os.listdir(cni_env.data_dir)) == ["_index", "_networks", "lock"]
    for k, name in enumerate(made):
        c = conf_of(cni_env, name=name, vnis=[3500 + names.index(name)])
        rc, out, _ = plugin_call(cni_env, "GC", dict(c, **{"cni.dev/valid-attachments": []}))
        assert rc == 0, (name, out)
        left = len(made) - k - 1
        assert count_services() == left and len(records(cni_env.data_dir)) == left, name
        assert len(index_links(cni_env.data_dir)) == left == len(pins(cni_env.data_dir)), name
        for other in made[k + 1:]:               # every other network still works
            oc = conf_of(cni_env, name=other, vnis=[3500 + names.index(other)])
            rc, out, _ = plugin_call(cni_env, "CHECK", oc, cid="same",
                                     netns_path=netns.path(pods[other]))
            assert rc == 0, (name, other, out)
    assert nothing_left(cni_env)


def test_container_ids_and_ifnames_that_used_to_collide(cni_env, netns):
    """``x_y``+``eth_0`` and ``x``+``y_eth_0`` (and ``.``-separated twins) were one file in the
    old layout; a 1024-character containerID gets a hashed file name."""
    pod = netns.add()
    keys = [("x_y", "eth_0"), ("x", "y_eth_0"), ("x.y", "e"), ("x", "y.e"), ("a" * 1024, "eth0"),
            ("a" * 1023, "aeth0")]
    for i, (cid, ifname) in enumerate(keys):
        c = conf_of(cni_env, vnis=[3600 + i])
        rc, out, _ = plugin_call(cni_env, "ADD", c, cid=cid, ifname=ifname, netns_path=netns.path(pod))
        assert rc == 0, (cid[:10], ifname, out)
    assert count_services() == len(keys) == len(records(cni_env.data_dir)) == len(pins(cni_env.data_dir))
    assert all(len(os.path.basename(p)) <= 255 for p in records(cni_env.data_dir))
    for i, (cid, ifname) in enumerate(keys):
        c = conf_of(cni_env, vnis=[3600 + i])
        assert plugin_call(cni_env, "CHECK", c, cid=cid, ifname=ifname,
                           netns_path=netns.path(pod))[0] == 0
        assert plugin_call(cni_env, "DEL", c, cid=cid, ifname=ifname)[0] == 0
        rest = [r["vnis"] for r in services()["cxi0"]]
        assert rest == [[3600 + j] for j in range(i + 1, len(keys))], (i, rest)
    assert nothing_left(cni_env)


def test_state_names_are_injective_and_contained(tmp_path):
    """At the store level any string is safe as a network name, containerID or ifname: every
    path stays under dataDir/_networks, and distinct keys get distinct files."""
    from pycxi.cni import state as st
    hostile = [".", "..", "/", "a/b", "../../etc", "%2E", "%", "~x", "by-netns", "lock", "_index",
               "x.y", "x%2Ey", "x%252Ey", "", " ", "\n", "é", "\udcff", "a" * 300, "a" * 301,
               "." * 100, st.encode("x.y"), st.name_of("a" * 300)]
    data = str(tmp_path / "d")
    seen = {}
    for net in hostile:
        s = st.StateStore(data, net)
        assert os.path.dirname(s.dir) == os.path.join(data, "_networks"), net
        assert os.path.basename(s.dir) not in (".", "..", "") and "/" not in os.path.basename(s.dir)
        assert seen.setdefault(s.dir, net) == net, (net, seen[s.dir])
        for cid, ifn in (("a.b", "c"), ("a", "b.c"), (net, net)):
            p = s.path(cid, ifn)
            assert os.path.dirname(p) == s.dir and seen.setdefault(p, (net, cid, ifn)) == (net, cid, ifn)
        assert st.decode(st.encode(net)) == net
    # a record round-trips through the store
    s = st.StateStore(data, "../x")
    s.ensure_dirs()
    rec = s.new_record("c/1", "e.0", netns="/run/netns/p", netns_inode=5, vnis=[7],
                       services=[st.ServiceEntry("cxi0", 3, "enabled")], phase=st.PHASE_READY)
    s.save(rec)
    back = s.load("c/1", "e.0")
    assert back.to_dict() == rec.to_dict() and back.network == "../x"
    assert os.listdir(data) == ["_networks"]


@pytest.mark.parametrize("bad", [b"[]", b"{", b'{"version": 9, "network": "n1"}',
                                 b'{"containerID": "c", "ifname": "e", "network": "n1", "vnis": ["x"]}',
                                 b'{"containerID": "c", "ifname": "e", "network": "n1", "services": [{"svc": 2}]}'])
def test_record_validation(tmp_path, bad):
    from pycxi.cni import state as st
    s = st.StateStore(str(tmp_path), "n1")
    s.ensure_dirs()
    with open(s.path("c", "e"), "wb") as f:
        f.write(bad)
    assert isinstance(s.load("c", "e"), st.Unreadable)


# ---------------------------------------------------------------------------------------------
# upgrade from the previous layout

def to_legacy(cni_env, net, cid, ifname="eth0"):
    """Rewrite a record as the previous plugin version kept it (and drop its pin)."""
    [path] = [p for p in records(cni_env.data_dir) if os.path.basename(p) == f"{cid}.{ifname}.json"]
    r = json.load(open(path))
    for k in ("version", "pin"):
        r.pop(k)
    pin = path[:-5] + ".netns"
    subprocess.run(["umount", pin], check=True)
    os.unlink(pin)
    os.unlink(path)
    for link in index_links(cni_env.data_dir):
        os.unlink(os.path.join(cni_env.data_dir, "_index", link))
    d = os.path.join(cni_env.data_dir, net)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{cid}_{ifname}.json"), "w") as f:
        json.dump(r, f)
    os.makedirs(os.path.join(cni_env.data_dir, "by-netns"), exist_ok=True)
    os.symlink(f"../{net}/{cid}_{ifname}.json",
               os.path.join(cni_env.data_dir, "by-netns", f"{r['netnsInode']}:{net}:{cid}_{ifname}.json"))


def test_records_of_the_previous_layout_are_found(cni_env, netns):
    live, dead = netns.add(), netns.add()
    ca, cb = conf_of(cni_env, name="old-a", vnis=[3700]), conf_of(cni_env, name="old-b", vnis=[3701])
    assert plugin_call(cni_env, "ADD", ca, cid="la", netns_path=netns.path(live))[0] == 0
    assert plugin_call(cni_env, "ADD", cb, cid="lb", netns_path=netns.path(dead))[0] == 0
    to_legacy(cni_env, "old-a", "la")
    to_legacy(cni_env, "old-b", "lb")
    assert pins(cni_env.data_dir) == [] and count_services() == 2
    from pycxi.cni.state import StateStore
    assert not StateStore(cni_env.data_dir, "old-a").nothing_for("la", "eth0")   # no DEL fast path
    netns.delete(dead)
    # the first locked call of the new plugin migrates every network; the live pod gets its pin
    rc, out, _ = plugin_call(cni_env, "GC", dict(ca, **{"cni.dev/valid-attachments": [
        {"containerID": "la", "ifname": "eth0"}]}))
    assert rc == 0, out
    assert sorted(os.listdir(cni_env.data_dir)) == ["_index", "_networks", "lock"]
    assert len(records(cni_env.data_dir)) == 2 and count_services() == 2
    [pin] = pins(cni_env.data_dir)
    assert pinned_inode(pin) == os.stat(netns.path(live)).st_ino
    # GC of old-b finds its record and sweeps it (its pod is gone); DEL of old-a finds its own
    rc, out, _ = plugin_call(cni_env, "GC", dict(cb, **{"cni.dev/valid-attachments": [
        {"containerID": "lb", "ifname": "eth0"}]}))
    assert rc == 0, out
    assert [r["vnis"] for r in services()["cxi0"]] == [[3700]]
    assert plugin_call(cni_env, "DEL", ca, cid="la")[0] == 0
    assert nothing_left(cni_env)


def test_del_from_another_mount_namespace_releases_the_pin(cni_env, netns):
    """The pin is a mount in the plugin's mount namespace; a DEL run in another one (a private
    copy: ``unshare -m``) still removes it everywhere (unlinking a mount point detaches it in
    the other namespaces)."""
    pod = netns.add()
    c = conf_of(cni_env, vnis=[3800])
    assert plugin_call(cni_env, "ADD", c, cid="mnt", netns_path=netns.path(pod))[0] == 0
    assert len(netns_mounts_under(cni_env.data_dir)) == 1
    env = dict(cni_env.env, PATH=os.environ["PATH"], CNI_COMMAND="DEL", CNI_CONTAINERID="mnt",
               CNI_IFNAME="eth0", CNI_PATH=cni_env.bin)
    p = subprocess.run(["unshare", "-m", "--propagation", "private", os.path.join(cni_env.bin, "cxi")],
                       input=json.dumps(c).encode(), env=env, capture_output=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert nothing_left(cni_env)

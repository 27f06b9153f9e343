"""Membership is enforced with the caller's real credentials: network namespaces made
with `ip netns`, privilege drops with setuid/seteuid, a user namespace with `unshare`.
(The NIC itself is pycxi's software device; everything around it is real.)"""
import errno
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import pycxi
from pycxi import CxiLibError, SvcDesc, SvcMember
from coreutil import netns_inode_of, pycxi_cli, run_forked, run_py

LIMITS = {"PTE": (16, 0), "TXQ": (16, 0), "EQ": (16, 0), "CT": (16, 0), "AC": (16, 0),
          "TLE": (0, 0)}


def needs_netns(method=None):
    """Skip unless this build binds a netns by ``method`` (None: by any method)."""
    m = pycxi.NETNS_METHODS
    ok = bool(m) if method is None else method in m
    return pytest.mark.skipif(not ok, reason=f"netns method {method or 'member/set_netns'} not "
                              f"available in this build ({pycxi.BACKEND}, netns flavour "
                              f"{'none' if not m else '+'.join(sorted(m))})")


def check(svc, vni=None, netns=None, user=None):
    args = ["access-check", "--svc", str(svc)] + (["--vni", str(vni)] if vni else [])
    return pycxi_cli(*args, netns=netns, user=user)


@pytest.mark.parametrize("method", [pytest.param(m, marks=needs_netns(m))
                                    for m in ("member", "set_netns")])
def test_netns_service_admits_only_its_namespace(dev, netns_factory, method):
    pod_a, pod_b = netns_factory(), netns_factory()
    svc = dev.alloc_netns_svc(netns_inode_of(pod_a), [1234], limits=LIMITS, method=method)

    inside = check(svc, 1234, netns=pod_a)
    assert inside.returncode == 0, inside.stderr
    assert "allowed" in inside.stdout

    other = check(svc, 1234, netns=pod_b)
    assert other.returncode != 0 and "EPERM" in other.stderr

    host = check(svc, 1234)  # root in the host's namespace is refused too
    assert host.returncode != 0 and "EPERM" in host.stderr


@needs_netns()
def test_root_in_another_netns_cannot_use_the_vni_either(dev, netns_factory):
    """VNI checks run against the profiles with the caller's netns (c.3): a pod of
    tenant B with an LNI of its own service cannot open a domain on tenant A's VNI."""
    pod_a, pod_b = netns_factory(), netns_factory()
    svc_a = dev.alloc_netns_svc(netns_inode_of(pod_a), [1111], limits=LIMITS)
    svc_b = dev.alloc_netns_svc(netns_inode_of(pod_b), [2222], limits=LIMITS)
    assert check(svc_b, 2222, netns=pod_b).returncode == 0
    cross = run_py(textwrap.dedent(f"""
        import pycxi, sys
        with pycxi.Device(0) as dev, dev.alloc_lni({svc_b}) as lni:
            try:
                lni.alloc_domain(1111)
            except pycxi.CxiLibError as e:
                print(e.errno); sys.exit(0)
        sys.exit(3)
    """), netns=pod_b)
    assert cross.returncode == 0, cross.stderr
    assert int(cross.stdout) == errno.EPERM
    assert check(svc_a, 1111, netns=pod_b).returncode != 0


@needs_netns()
def test_two_pods_of_one_job_share_the_vni_each_through_its_own_service(dev, netns_factory):
    pod1, pod2 = netns_factory(), netns_factory()
    s1 = dev.alloc_netns_svc(netns_inode_of(pod1), [3333], limits=LIMITS)
    s2 = dev.alloc_netns_svc(netns_inode_of(pod2), [3333], limits=LIMITS)
    assert check(s1, 3333, netns=pod1).returncode == 0
    assert check(s2, 3333, netns=pod2).returncode == 0
    assert "EPERM" in check(s1, 3333, netns=pod2).stderr
    assert "EPERM" in check(s2, 3333, netns=pod1).stderr
    assert "EPERM" in check(s1, 3333).stderr


@needs_netns()
def test_netns_is_read_per_thread(dev, netns_factory):
    pod = netns_factory()
    svc = dev.alloc_netns_svc(netns_inode_of(pod), [1234], limits=LIMITS)
    code = textwrap.dedent(f"""
        import ctypes, os, threading, pycxi
        libc = ctypes.CDLL(None, use_errno=True)
        out = {{}}
        def in_pod():
            fd = os.open("/run/netns/{pod}", os.O_RDONLY)
            assert libc.setns(fd, 0x40000000) == 0   # CLONE_NEWNET, this thread only
            with pycxi.Device(0) as dev, dev.alloc_lni({svc}):
                out["thread"] = "ok"
        t = threading.Thread(target=in_pod); t.start(); t.join()
        try:
            with pycxi.Device(0) as dev:
                dev.alloc_lni({svc})
            out["main"] = "ok"
        except pycxi.CxiLibError as e:
            out["main"] = e.errno
        print(out["thread"], out["main"])
    """)
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", str(errno.EPERM)]


def test_uid_and_gid_members_with_a_real_privilege_drop(dev):
    svc_u = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.uid(4321)], limits=LIMITS))
    svc_g = dev.alloc_svc(SvcDesc(vnis=[101], members=[SvcMember.gid(5555)], limits=LIMITS))
    assert check(svc_u, 100, user=(4321, 100)).returncode == 0
    r = check(svc_u, 100, user=(4322, 100))
    assert r.returncode != 0 and "EPERM" in r.stderr
    assert check(svc_g, 101, user=(7000, 5555)).returncode == 0
    assert check(svc_g, 101, user=(7000, 5556)).returncode != 0
    # root is not a member of either
    assert "EPERM" in check(svc_u).stderr


def test_only_the_effective_gid_counts(dev):
    """13.x compares egid only; supplementary groups do not count (c.1)."""
    svc = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.gid(5555)], limits=LIMITS))
    def fn():
        os.setgroups([5555])
        os.setgid(100)
        os.setuid(7000)
        try:
            with pycxi.Device(0) as d:
                d.alloc_lni(svc)
        except pycxi.CxiLibError as e:
            return e.errno
        return 0
    assert run_forked(fn).returncode == errno.EPERM


def test_seteuid_in_process_changes_the_answer(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.uid(4321)], limits=LIMITS))
    with pytest.raises(CxiLibError) as e:
        dev.alloc_lni(svc)
    assert e.value.errno == errno.EPERM
    os.seteuid(4321)
    try:
        lni = dev.alloc_lni(svc)
        # admin ops need CAP_SYS_ADMIN, which seteuid(non-zero) dropped
        with pytest.raises(CxiLibError) as e2:
            dev.alloc_svc(SvcDesc(vnis=[300], limits=LIMITS))
    finally:
        os.seteuid(0)
    assert e2.value.errno == errno.EPERM
    lni.close()


def test_netns_member_and_uid_member_both_count(dev, netns_factory):
    """Our driver patch considers every member (the original returned on the first
    netns member): a uid member after a netns member still admits that uid."""
    pod, other = netns_factory(), netns_factory()
    svc = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.netns(netns_inode_of(pod)),
                                                      SvcMember.uid(4321)], limits=LIMITS))
    assert check(svc, netns=pod, user=(9999, 9999)).returncode == 0
    assert check(svc, netns=other, user=(4321, 100)).returncode == 0
    assert check(svc, netns=other, user=(9999, 9999)).returncode != 0


@pytest.mark.parametrize("op", ["alloc", "destroy", "enable",
                                pytest.param("set_netns", marks=needs_netns("set_netns")),
                                "set_vni_range", "update", "lpr", "exclusive_cp"])
def test_admin_ops_need_cap_sys_admin(dev, op):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=LIMITS))
    calls = {
        "alloc": "dev.alloc_svc(pycxi.SvcDesc(vnis=[200]))",
        "destroy": f"dev.destroy_svc({svc})",
        "enable": f"dev.svc_enable({svc}, False)",
        "set_netns": f"dev.set_netns({svc}, 5)",
        "set_vni_range": f"dev.set_vni_range({svc}, 32, 63)",
        "update": f"dev.update_svc(dev.get_svc({svc}))",
        "lpr": f"dev.set_svc_lpr({svc}, 2)",
        "exclusive_cp": f"dev.set_exclusive_cp({svc}, True)",
    }
    def fn():
        with pycxi.Device(0) as dev2:
            dev2.get_svc(svc)
            dev2.svc_list()   # readers need no privilege
            try:
                eval(calls[op], {"dev": dev2, "pycxi": pycxi})
            except pycxi.CxiLibError as e:
                return e.errno
        return 0
    assert run_forked(fn, user=(4321, 4321)).returncode == errno.EPERM
    assert dev.get_svc(svc).enable  # nothing changed


@pytest.mark.skipif(not shutil.which("unshare"), reason="util-linux unshare missing")
def test_root_of_a_user_namespace_is_not_capable(dev):
    """capable() asks about the initial user namespace: a container's root is refused."""
    code = textwrap.dedent("""
        import sys, pycxi
        with pycxi.Device(0) as dev:
            try:
                dev.alloc_svc(pycxi.SvcDesc(vnis=[200]))
            except pycxi.CxiLibError as e:
                sys.exit(e.errno)
    """)
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    if "unshare failed" in r.stderr:
        pytest.skip(f"user namespaces unavailable: {r.stderr.strip()}")
    assert r.returncode == errno.EPERM, r.stderr

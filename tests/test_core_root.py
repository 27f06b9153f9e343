"""Root is not special: the attacks of a pod's root and of user-namespace root, run for real.

Real parts: network namespaces (`ip netns`), privilege drops (setuid), user namespaces made
with unshare(2) and uid_map/gid_map written as `unshare -Ur` (or a root runtime) writes them,
the real `pycxi` command, a second process holding the device's lock.  The NIC is pycxi's
software device, which models our patched driver by default and the stock driver with
``PYCXI_SIM_STOCK_ROOT_PROFILE=1`` at device creation.
"""
import ctypes
import errno
import mmap
import os
import signal
import subprocess
import sys
import time

import pytest

import pycxi
import pycxi.device as device
from pycxi import CxiLibError, SvcDesc, SvcMember
from coreutil import netns_inode_of, run_forked

LIMITS = {"PTE": (16, 0), "TXQ": (16, 0), "EQ": (16, 0), "CT": (16, 0), "AC": (16, 0),
          "TLE": (0, 0)}
NOBODY = (65534, 65534)
CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4
PYCXI = os.path.join(os.path.dirname(sys.executable), "pycxi")

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare_user():
    if _libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def unshare_r():
    """What `unshare -Ur` does: a new user namespace whose root is the caller."""
    uid, gid = os.geteuid(), os.getegid()
    # setuid() made this forked child non-dumpable, which an exec()ed process of that user
    # is not; /proc/self/*_map would stay root's
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    _unshare_user()
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def in_mapped_userns(fn, uid_map, gid_map):
    """Run fn() as uid/gid 0 of a user namespace whose maps a root runtime writes (as for a
    pod with hostUsers: false); returns its exit status.  Call in a forked child."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 98
        try:
            _unshare_user()
            os.write(w, b"x")
            os.read(r2, 1)           # maps written
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            status = int(fn() or 0)
        except BaseException as e:
            print(f"userns child failed: {e!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(status)
    os.read(r, 1)
    _write(f"/proc/{pid}/uid_map", uid_map)
    _write(f"/proc/{pid}/gid_map", gid_map)
    os.write(w2, b"x")
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)


def errno_of(call):
    """0 if call() succeeds, else the CxiLibError's errno."""
    try:
        call()
    except CxiLibError as e:
        return e.errno
    return 0


def domain_errno(svc, vni):
    """As the calling process: an LNI on svc, then a domain on vni."""
    with pycxi.Device(0) as d, d.alloc_lni(svc) as lni:
        return errno_of(lambda: lni.alloc_domain(vni).close())


def lni_errno(svc):
    def call():
        with pycxi.Device(0) as d:
            d.alloc_lni(svc).close()
    return errno_of(call)


def cli_in_netns(netns, *args):
    """The real `pycxi` executable, as root, inside a named netns (`ip netns exec`)."""
    return subprocess.run(["ip", "netns", "exec", netns, PYCXI, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["patched", "stock"])
def any_dev(request, sim_root, monkeypatch):
    if request.param == "stock":
        monkeypatch.setenv("PYCXI_SIM_STOCK_ROOT_PROFILE", "1")
        device.sim_reset(1)
        monkeypatch.delenv("PYCXI_SIM_STOCK_ROOT_PROFILE")   # the device keeps its model
    with pycxi.Device(0) as d:
        yield request.param, d


# -- 1. root's implicit profile ------------------------------------------------------------

def test_root_in_a_pod_netns_cannot_take_a_free_vni(any_dev, netns_factory):
    """Issue 13 §1: root in pod A asks for VNI 3002 (another job's, no profile on this NIC).
    Stock driver: allowed.  Patched driver (the default device): ENOENT, as for non-root."""
    model, dev = any_dev
    pod = netns_factory()
    svc = dev.alloc_netns_svc(netns_inode_of(pod), [3001], limits=LIMITS)

    own = cli_in_netns(pod, "access-check", "--svc", str(svc), "--vni", "3001")
    assert own.returncode == 0, own.stderr
    other = cli_in_netns(pod, "access-check", "--svc", str(svc), "--vni", "3002",
                         "--tc", "BEST_EFFORT")
    api = run_forked(lambda: domain_errno(svc, 3002), netns=pod).returncode
    as_user = run_forked(lambda: domain_errno(svc, 3002), netns=pod, user=NOBODY).returncode
    assert as_user == errno.ENOENT
    if model == "stock":
        assert other.returncode == 0 and "allowed" in other.stdout, other.stderr
        assert api == 0
    else:
        assert other.returncode == 1 and "ENOENT" in other.stderr, other.stderr
        assert api == as_user            # exactly a non-root caller's answer
    assert device.sim_status(0)["profiles"] == 3   # the defaults' 2 and the service's: none left
    device.sim_check(0)


def test_root_in_the_initial_netns_keeps_its_implicit_profile(any_dev, netns_factory):
    """Host daemons (init_net) still get the implicit profile on both models; while one holds
    it, root in a pod gets what a non-root caller gets (EPERM) on the patched model."""
    model, dev = any_dev
    pod = netns_factory()
    open_svc = dev.alloc_svc(SvcDesc(vnis=[3001], restricted_members=False, limits=LIMITS))
    with dev.alloc_lni(open_svc) as lni, lni.alloc_domain(3002):
        assert device.sim_status(0)["profiles"] == 4      # defaults' 2, svc's 1, root's 1
        rc = run_forked(lambda: domain_errno(open_svc, 3002), netns=pod).returncode
        user = run_forked(lambda: domain_errno(open_svc, 3002), netns=pod,
                          user=NOBODY).returncode
        assert user == errno.EPERM
        assert rc == (0 if model == "stock" else errno.EPERM)
        host = subprocess.run([PYCXI, "access-check", "--svc", str(open_svc), "--vni", "3003"],
                              capture_output=True, text=True, timeout=60)
        assert host.returncode == 0, host.stderr
    assert device.sim_status(0)["profiles"] == 3          # root's profile went with its domain
    device.sim_check(0)


def test_stock_root_profile_switch_on_the_command_line(sim_root, netns_factory):
    pod = netns_factory()
    r = subprocess.run([PYCXI, "sim", "reset", "--stock-root-profile"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with pycxi.Device(0) as dev:
        svc = dev.alloc_netns_svc(netns_inode_of(pod), [3001], limits=LIMITS)
    assert cli_in_netns(pod, "access-check", "--svc", str(svc), "--vni", "3002").returncode == 0
    assert subprocess.run([PYCXI, "sim", "reset"], timeout=60).returncode == 0
    with pycxi.Device(0) as dev:
        svc = dev.alloc_netns_svc(netns_inode_of(pod), [3001], limits=LIMITS)
    assert cli_in_netns(pod, "access-check", "--svc", str(svc), "--vni", "3002").returncode == 1


# -- 2. global ids -------------------------------------------------------------------------

def test_nobody_under_unshare_r_is_not_root(dev, netns_factory):
    """Issue 13 §1: `unshare -Ur` as nobody used to pass uid-0 and gid-0 members."""
    s_uid = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.uid(0)], limits=LIMITS))
    s_gid = dev.alloc_svc(SvcDesc(vnis=[101], members=[SvcMember.gid(0)], limits=LIMITS))

    def attack():
        unshare_r()
        assert os.geteuid() == 0 and os.getegid() == 0
        for svc in (s_uid, s_gid):
            if lni_errno(svc) != errno.EPERM:
                return 3
        from pycxi.cli import main
        return main(["access-check", "--svc", str(s_uid)])   # the command, same process
    r = run_forked(attack, user=NOBODY)
    assert r.returncode == 1 and "EPERM" in r.stdout, r.stdout
    # nested: `unshare -Ur` inside `unshare -Ur` maps 0 -> 0 one level up; still not root
    def nested():
        unshare_r()
        unshare_r()
        return lni_errno(s_uid)
    assert run_forked(nested, user=NOBODY).returncode == errno.EPERM
    # in a pod's netns, on a free VNI: no implicit profile either
    pod = netns_factory()
    s_pod = dev.alloc_netns_svc(netns_inode_of(pod), [3001], limits=LIMITS)
    def in_pod():
        unshare_r()
        return domain_errno(s_pod, 3002)
    assert run_forked(in_pod, netns=pod, user=NOBODY).returncode == errno.ENOENT
    # and the real root passes the uid-0 member
    assert run_forked(lambda: lni_errno(s_uid)).returncode == 0


def test_userns_root_is_its_mapped_host_uid(dev):
    """A namespace whose root is host uid 1234 (as a root runtime maps it): a uid-1234 and a
    gid-1234 member admit it, a uid-0 member does not, and it gets no implicit profile."""
    s_1234 = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.uid(1234)], limits=LIMITS))
    s_g1234 = dev.alloc_svc(SvcDesc(vnis=[101], members=[SvcMember.gid(1234)], limits=LIMITS))
    s_root = dev.alloc_svc(SvcDesc(vnis=[102], members=[SvcMember.uid(0)], limits=LIMITS))
    # line 2 maps the host's root too (as uid 1), which lets the device prove that the
    # namespace's parent is the initial one (see global_id in src/sim.c)
    uid_map, gid_map = "0 1234 1\n1 0 1\n", "0 1234 1\n1 0 1\n"

    def inside():
        got = (lni_errno(s_1234), lni_errno(s_g1234), lni_errno(s_root),
               domain_errno(s_1234, 3002))
        print(got, flush=True)
        return 0 if got == (0, 0, errno.EPERM, errno.ENOENT) else 3
    assert run_forked(lambda: in_mapped_userns(inside, uid_map, gid_map)).returncode == 0

    def cli():
        from pycxi.cli import main
        return main(["access-check", "--svc", str(s_1234)])
    r = run_forked(lambda: in_mapped_userns(cli, uid_map, gid_map))
    assert r.returncode == 0 and "allowed: svc" in r.stdout, r.stdout


def test_unresolvable_userns_ids_match_no_member(dev):
    """A namespace that does not map the host's root cannot be placed from inside (the kernel
    hides a namespace's ancestry); the device then denies: no member matches, not even a
    uid-65534 (overflow id) one.  The kernel would admit host uid 1234 here: the software
    device is stricter, never more permissive."""
    s_1234 = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.uid(1234)], limits=LIMITS))
    s_nobody = dev.alloc_svc(SvcDesc(vnis=[101], members=[SvcMember.uid(65534)],
                                     limits=LIMITS))
    open_svc = dev.alloc_svc(SvcDesc(vnis=[102], restricted_members=False, limits=LIMITS))

    def inside():
        got = (lni_errno(s_1234), lni_errno(s_nobody), lni_errno(open_svc))
        print(got, flush=True)
        return 0 if got == (errno.EPERM, errno.EPERM, 0) else 3
    r = run_forked(lambda: in_mapped_userns(inside, "0 1234 1\n", "0 1234 1\n"))
    assert r.returncode == 0, r.stdout


def test_capabilities_are_asked_at_every_call(dev):
    """capable() asks about the initial user namespace at each call.  A single-threaded
    process may unshare(CLONE_NEWUSER) between two calls: root that did is refused from then
    on, though it holds every capability -- of its own namespace."""
    svc = dev.alloc_svc(SvcDesc(vnis=[100], restricted_members=False, limits=LIMITS))

    def attack():
        with pycxi.Device(0) as d:
            first = d.alloc_svc(SvcDesc(vnis=[200], limits=LIMITS))
            unshare_r()
            second = errno_of(lambda: d.alloc_svc(SvcDesc(vnis=[201], limits=LIMITS)))
            destroy = errno_of(lambda: d.destroy_svc(first))
            with d.alloc_lni(svc) as lni:
                eth = errno_of(lambda: lni.alloc_cp(1, "ETH"))     # CAP_NET_RAW
        print(first, second, destroy, eth, flush=True)
        return 0 if (second, destroy, eth) == (errno.EPERM,) * 3 else 3
    r = run_forked(attack)
    assert r.returncode == 0, r.stdout
    assert [d.svc_id for d in dev.svc_list()] == [1, svc, int(r.stdout.split()[0])]
    # and a user namespace made by nobody is no better
    def nobody():
        unshare_r()
        with pycxi.Device(0) as d:
            return errno_of(lambda: d.alloc_svc(SvcDesc(vnis=[202], limits=LIMITS)))
    assert run_forked(nobody, user=NOBODY).returncode == errno.EPERM


# -- 3. the lock: anyone can take it, nobody can hang the others ---------------------------

LOCK_OFFSET = 24   # struct sim_file: magic u64, version/dev_id/flags/recoveries u32, then lock


def hold_device_lock(path, ready_fd):
    """As an unprivileged local user: map the state file, take its mutex, keep it."""
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, LOCK_OFFSET + 64)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m, LOCK_OFFSET))
    rc = _libc.pthread_mutex_lock(ctypes.c_void_p(addr))
    os.write(ready_fd, str(rc).encode())
    while True:
        signal.pause()


def test_a_local_user_holding_the_lock_cannot_hang_callers(sim_root, monkeypatch):
    """Issue 13 §6: the state file is world-writable (the device models /dev/cxi0), so nobody
    can take the mutex.  Callers give up after PYCXI_SIM_LOCK_TIMEOUT with EAGAIN (CNI code
    11, try again); when the holder dies the next caller recovers."""
    path = os.path.join(sim_root, "cxi0")
    assert os.stat(path).st_mode & 0o777 == 0o666
    before = device.sim_status(0)["recoveries"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY[1])
            os.setuid(NOBODY[0])
            hold_device_lock(path, w)
        finally:
            os._exit(97)
    try:
        assert os.read(r, 16) == b"0"
        monkeypatch.setenv("PYCXI_SIM_LOCK_TIMEOUT", "0.5")
        code = """if True:
            import sys, time, pycxi
            t = time.monotonic()
            try:
                with pycxi.Device(0) as d:
                    d.svc_list()
            except pycxi.CxiLibError as e:
                print(e.errno, e.func, round(time.monotonic() - t, 2))
                sys.exit(0)
            sys.exit(3)
        """
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        err, func, waited = res.stdout.split()
        assert int(err) == errno.EAGAIN and func == "cxil_get_svc_list"
        assert 0.4 <= float(waited) and time.monotonic() - t0 < 10
        from pycxi.cni.errors import from_exception
        assert from_exception(CxiLibError(int(err), func)).code == 11
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with pycxi.Device(0) as d:
        assert [s.svc_id for s in d.svc_list()] == [1]
    # the holder died owning the mutex: the next caller took it over ("owner died")
    assert device.sim_status(0)["recoveries"] == before + 1
    device.sim_check(0)


# -- 4. a build on the software device says so -----------------------------------------------

def test_the_software_device_is_unmistakable():
    assert pycxi.SOFTWARE_DEVICE is (pycxi.BACKEND == "sim")
    r = subprocess.run([PYCXI, "-V"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    if pycxi.SOFTWARE_DEVICE:
        assert "SOFTWARE CXI device" in r.stdout and "not a NIC" in r.stdout
        assert device.sim_root() in r.stdout
    else:
        assert "SOFTWARE" not in r.stdout

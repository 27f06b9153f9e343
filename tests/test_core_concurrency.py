"""Several processes share one software device, like users of one kernel driver:
parallel callers, processes SIGKILLed mid-call, and a crash injected at every
journalled write of an operation (PYCXI_SIM_CRASHPOINT)."""
import errno
import json
import os
import random
import signal
import time

import pytest

import pycxi
from pycxi import CxiLibError, SvcDesc
from pycxi.device import sim_check, sim_status

LIMITS = {"PTE": (4, 1), "EQ": (4, 1), "TLE": (0, 0)}   # reserve something: it must balance


def _fork(fn):
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            code = int(fn() or 0)
        except BaseException as e:  # noqa: BLE001 - report through the exit status
            os.write(2, f"child: {e!r}\n".encode())
        finally:
            os._exit(code)
    return pid


def _wait(pid):
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)


def test_parallel_cycles_never_share_an_id_and_balance_to_zero(sim_root, tmp_path):
    procs, cycles = 4, 500
    base = sim_status()["reserved"]

    def worker(k):
        def run():
            out = []
            with pycxi.Device(0) as dev:
                for i in range(cycles):
                    vni = 2000 + k * 1000 + i % 500
                    svc = dev.alloc_svc(SvcDesc(vnis=[vni], limits=LIMITS))
                    t0 = time.monotonic()
                    # the ID is ours alone: the service behind it has our VNI
                    if dev.get_svc(svc).vnis != [vni]:
                        return 3
                    with dev.alloc_lni(svc):
                        pass
                    t1 = time.monotonic()
                    dev.destroy_svc(svc)
                    out.append((svc, t0, t1))
            (tmp_path / f"w{k}.json").write_text(json.dumps(out))
            return 0
        return run

    pids = [_fork(worker(k)) for k in range(procs)]
    assert [_wait(p) for p in pids] == [0] * procs
    held = {}
    for k in range(procs):
        for svc, t0, t1 in json.loads((tmp_path / f"w{k}.json").read_text()):
            held.setdefault(svc, []).append((t0, t1, k))
    assert sum(len(v) for v in held.values()) == procs * cycles
    for svc, spans in held.items():
        spans.sort()
        for (a0, a1, ka), (b0, b1, kb) in zip(spans, spans[1:]):
            assert b0 >= a1, f"svc {svc} held by workers {ka} and {kb} at once"
    st = sim_status()
    assert st["services"] == 1 and st["lnis"] == 0 and st["reserved"] == base
    sim_check()


def test_sigkilled_processes_leave_a_consistent_device_and_their_lnis_go(sim_root):
    rng = random.Random(7)
    with pycxi.Device(0) as dev:
        for round_ in range(25):
            def churn():
                with pycxi.Device(0) as d:
                    lnis = []
                    for i in range(100000):
                        s = d.alloc_svc(SvcDesc(vnis=[3000 + i % 50], limits=LIMITS))
                        lnis.append(d.alloc_lni(s))
                        lnis[-1].alloc_domain(3000 + i % 50)
                        if len(lnis) > 3:
                            old = lnis.pop(0)
                            sid = old.svc_id
                            old.close()
                            d.destroy_svc(sid)
            pid = _fork(churn)
            time.sleep(rng.uniform(0.005, 0.08))
            os.kill(pid, signal.SIGKILL)
            assert _wait(pid) == -signal.SIGKILL
            sim_check()
            assert sim_status()["lnis"] == 0      # the dead process's LNIs were released
            for d in dev.svc_list():
                if d.svc_id != 1:
                    dev.destroy_svc(d.svc_id)     # never EBUSY: nothing holds them
            sim_check()
        st = sim_status()
        assert st["services"] == 1 and st["reserved"]["PTE"] == 0
        assert st["reaped_lnis"] > 0


def _crash_sweep(op, prepare=None, max_points=200):
    """Run ``op(dev, ctx)`` in children that die at journalled write 1, 2, ...; after
    each death the device is consistent and unchanged (the operation is atomic).
    Returns how many crash points the operation has."""
    for n in range(1, max_points + 1):
        with pycxi.Device(0) as dev:
            _clear(dev)
            ctx = prepare(dev) if prepare else None
            before = [d.to_bytes() for d in dev.svc_list()]

        def child():
            os.environ["PYCXI_SIM_CRASHPOINT"] = str(n)
            with pycxi.Device(0) as d:
                op(d, ctx)
            return 0

        code = _wait(_fork(child))
        sim_check()
        with pycxi.Device(0) as dev:
            after = [d.to_bytes() for d in dev.svc_list()]
            if code == 0:  # the op finished before write n: it has n - 1 crash points
                assert n > 1
                return n - 1
            assert code == -signal.SIGKILL
            assert after == before, f"crash at write {n} left the operation half-done"
    raise AssertionError("operation never completed")


def _clear(dev):
    for d in dev.svc_list():
        if d.svc_id != 1:
            dev.destroy_svc(d.svc_id)


def test_alloc_svc_is_atomic_under_a_crash_at_every_write(sim_root):
    points = _crash_sweep(lambda d, _: d.alloc_svc(
        SvcDesc(vnis=[100, 101], members=[pycxi.SvcMember.netns(5)], limits=LIMITS)))
    assert points >= 5


def test_destroy_and_netns_binding_are_atomic(sim_root):
    def prep(dev):
        return {dev.alloc_svc(SvcDesc(vnis=[700, 701], restricted_members=True, limits=LIMITS))}

    def destroy(d, ctx):
        d.destroy_svc(next(iter(ctx)))
    assert _crash_sweep(destroy, prep) >= 3

    def bind(d, ctx):
        svc = next(iter(ctx))
        d.svc_enable(svc, False)
        d.set_netns(svc, 4242)
        d.svc_enable(svc, True)

    # three operations: a crash lands inside one of them; each one is all-or-nothing
    for n in range(1, 40):
        with pycxi.Device(0) as dev:
            _clear(dev)
            svc = dev.alloc_svc(SvcDesc(vnis=[700], restricted_members=True, limits=LIMITS))

        def child():
            os.environ["PYCXI_SIM_CRASHPOINT"] = str(n)
            with pycxi.Device(0) as d:
                bind(d, {svc})
            return 0
        code = _wait(_fork(child))
        sim_check()
        with pycxi.Device(0) as dev:
            enabled = dev.get_svc(svc).enable
            try:
                ns = dev.get_netns(svc)
            except CxiLibError:
                ns = None
        if code == 0:
            assert enabled and ns == 4242
            break
        # every intermediate state is one the API could have produced
        assert (enabled, ns) in {(True, None), (False, None), (False, 4242)}
    else:
        pytest.fail("bind never completed")


def test_lni_of_a_live_process_in_another_pid_namespace_is_kept(sim_root):
    """LNIs belong to the device handle, like a kernel fd, not to a pid: a container's
    process (its own pid namespace, where it is pid 1) keeps its LNI until it dies."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("util-linux unshare missing")
    with pycxi.Device(0) as dev:
        svc = dev.alloc_svc(SvcDesc(vnis=[600], limits=LIMITS))
        code = ("import os, sys, pycxi\n"
                "d = pycxi.Device(0); l = d.alloc_lni(%d)\n"
                "print(os.getpid(), flush=True); sys.stdin.read()\n" % svc)
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", code],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "1"       # pid 1 in its namespace
            with pytest.raises(CxiLibError) as e:
                dev.destroy_svc(svc)
            assert e.value.errno == errno.EBUSY
            assert sim_status()["lnis"] == 1
        finally:
            p.kill()          # --kill-child: the namespace's pid 1 gets SIGKILL too
            p.wait()
        deadline = time.monotonic() + 10
        while True:           # its death (and the lock's release) is asynchronous
            try:
                dev.destroy_svc(svc)                          # its LNI went with it
                break
            except CxiLibError as e:
                assert e.errno == errno.EBUSY and time.monotonic() < deadline
                time.sleep(0.05)
        assert sim_status()["lnis"] == 0
        sim_check()

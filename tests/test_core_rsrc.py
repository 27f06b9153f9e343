"""The NIC's resources: objects on an LNI charged to its service, as the driver does.

After the behaviour of upstream libcxi's svc_max / svc_change_uid tests (in our words) and
the 13.1 driver's accounting (cass_alloc_resource, the LNI cleanup lists, ATU ACs).  No NIC
here: the device is the software one; the processes, SIGKILLs and privilege drops are real.
"""
import errno
import mmap
import os
import signal
import time

import pytest

import pycxi
from pycxi import CxiLibError, SvcDesc, SvcMember
from pycxi.device import sim_check, sim_status

from coreutil import run_forked

PAGE = 4096
PIN_RW = 0x1 | 0x4 | 0x8          # CXI_MAP_PIN | WRITE | READ
NOCACHE, ATS_PT, ATS_DYN, UNUSED = 1 << 5, 1 << 7, 1 << 8, 1 << 10
# seven more flag sets an AC is chosen by (READ/WRITE do not count)
OTHER_FLAGS = [PIN_RW | NOCACHE, PIN_RW | ATS_PT, PIN_RW | ATS_DYN, PIN_RW | UNUSED,
               PIN_RW | NOCACHE | ATS_PT, PIN_RW | NOCACHE | ATS_DYN, PIN_RW | 0x80000]
NOLE = {"LE": (0, 0), "TLE": (0, 0)}


def limits(**kw):
    out = dict(NOLE)
    out.update({k: (v, v) if isinstance(v, int) else v for k, v in kw.items()})
    return out


def svc(dev, vni=8, **kw):
    return dev.alloc_svc(SvcDesc(vnis=[vni], limits=limits(**kw)))


def use(dev, svc_id):
    return dev.svc_rsrc_use(svc_id).in_use


def alloc_one(lni, kind, ctx):
    """Allocate one object charged as ``kind`` (AC: a map with flags not used yet)."""
    if kind == "EQ":
        return lni.alloc_evtq(ctx["md"])
    if kind == "PTE":
        return lni.alloc_pte()
    if kind == "TXQ":
        return lni.alloc_cmdq(transmit=True, lcid=ctx["cp"].lcid)
    if kind == "TGQ":
        return lni.alloc_cmdq()
    if kind == "CT":
        return lni.alloc_ct()
    if kind == "AC":
        return lni.map(mmap.mmap(-1, PAGE), flags=ctx["flags"].pop(0))
    raise AssertionError(kind)


def setup_lni(dev, svc_id):
    lni = dev.alloc_lni(svc_id)
    ctx = {"cp": lni.alloc_cp(8), "flags": [PIN_RW] + list(OTHER_FLAGS)}
    return lni, ctx


@pytest.mark.parametrize("kind", ["EQ", "PTE", "TXQ", "TGQ", "CT", "AC"])
def test_up_to_the_limit_then_enospc_and_the_lni_gives_them_back(dev, kind):
    n = 4
    extra = {} if kind == "AC" else {"AC": 1}   # the EQ buffer's MD needs one
    svc_id = svc(dev, **{kind: n}, **extra)
    lni, ctx = setup_lni(dev, svc_id)
    if kind != "AC":
        ctx["md"] = lni.map(mmap.mmap(-1, PAGE))
    objs = [alloc_one(lni, kind, ctx) for _ in range(n)]
    with pytest.raises(CxiLibError) as e:
        alloc_one(lni, kind, ctx)
    assert e.value.errno == errno.ENOSPC and kind in str(e.value)
    assert use(dev, svc_id)[kind] == n
    sim_check()
    lni.close()
    assert all(o.closed for o in objs)
    assert set(use(dev, svc_id).values()) == {0}
    sim_check()
    dev.destroy_svc(svc_id)


def test_svc_max_all_types_on_one_lni(dev):
    """svc_max: every type at its limit at once, counts reported, all returned."""
    n = 10
    svc_id = svc(dev, AC=1, EQ=n, CT=n, PTE=n, TXQ=n, TGQ=n)
    lni = dev.alloc_lni(svc_id)
    cp = lni.alloc_trig_cp(8, "BEST_EFFORT", 0, 1)     # NON_TRIG_LCID
    assert cp.lcid != 0
    md = lni.map(mmap.mmap(-1, PAGE))
    with pytest.raises(CxiLibError) as e:     # other flags: a second AC, over the limit
        lni.map(mmap.mmap(-1, PAGE), flags=PIN_RW | 0x80000)
    assert e.value.errno == errno.ENOSPC
    eqs = [lni.alloc_evtq(md) for _ in range(n)]
    ptes = [lni.alloc_pte(eqs[i]) for i in range(n)]
    txqs = [lni.alloc_cmdq(transmit=True, lcid=cp.lcid) for _ in range(n)]
    tgqs = [lni.alloc_cmdq() for _ in range(n)]
    cts = [lni.alloc_ct() for _ in range(n)]
    for fn in (lambda: lni.alloc_evtq(md), lambda: lni.alloc_pte(eqs[0]),
               lambda: lni.alloc_cmdq(transmit=True, lcid=cp.lcid), lambda: lni.alloc_cmdq(),
               lambda: lni.alloc_ct()):
        with pytest.raises(CxiLibError) as e:
            fn()
        assert e.value.errno == errno.ENOSPC
    assert use(dev, svc_id) == {"PTE": n, "TXQ": n, "TGQ": n, "EQ": n, "CT": n, "LE": 0,
                                "TLE": 0, "AC": 1}
    assert len({p.ptn for p in ptes} | {q.size for q in txqs + tgqs}) >= n
    lni.close()
    assert set(use(dev, svc_id).values()) == {0}
    dev.destroy_svc(svc_id)


def test_svc_change_uid_membership_is_checked_at_the_lni(dev):
    """svc_change_uid: membership is checked when an LNI is allocated, not for what is
    allocated on it.  Root takes an LNI and a CP on a service whose only member is uid 0,
    drops to nobody with seteuid, and still maps memory and allocates on that LNI; a new
    LNI as nobody is EPERM."""
    svc_id = dev.alloc_svc(SvcDesc(vnis=[8], members=[SvcMember.uid(0)],
                                   limits=limits(AC=1, CT=1)))
    lni = dev.alloc_lni(svc_id)
    cp = lni.alloc_cp(8)
    buf = mmap.mmap(-1, PAGE)
    os.seteuid(65534)
    try:
        md = lni.map(buf)
        ct = lni.alloc_ct()
        with pytest.raises(CxiLibError) as e:
            dev.alloc_lni(svc_id)
    finally:
        os.seteuid(0)
    assert e.value.errno == errno.EPERM
    assert use(dev, svc_id)["AC"] == 1 and use(dev, svc_id)["CT"] == 1
    md.close()
    ct.close()
    cp.close()
    lni.close()
    assert set(use(dev, svc_id).values()) == {0}
    sim_check()
    dev.destroy_svc(svc_id)


def test_destroyed_objects_stay_charged_until_the_lni_goes(dev):
    """The driver's cleanup lists: EQs and PTEs are reused by the same LNI, CQs are
    finalised when a CQ allocation finds no room, CTs only go with the LNI."""
    svc_id = svc(dev, AC=1, EQ=2, PTE=2, TGQ=2, CT=2)
    lni = dev.alloc_lni(svc_id)
    md = lni.map(mmap.mmap(-1, PAGE))
    eq = lni.alloc_evtq(md)
    eq.close()
    assert use(dev, svc_id)["EQ"] == 1        # parked, still charged
    for _ in range(5):                        # reused: cycling never runs out
        lni.alloc_evtq(md).close()
    assert use(dev, svc_id)["EQ"] == 1
    for _ in range(5):
        lni.alloc_pte().close()
    assert use(dev, svc_id)["PTE"] == 1
    for _ in range(5):                        # CQs: the failed charge frees the parked ones
        lni.alloc_cmdq().close()
    assert 1 <= use(dev, svc_id)["TGQ"] <= 2
    lni.alloc_ct().close()
    lni.alloc_ct().close()
    with pytest.raises(CxiLibError) as e:     # CTs are not reused: the LNI is full
        lni.alloc_ct()
    assert e.value.errno == errno.ENOSPC
    sim_check()
    lni.close()
    assert set(use(dev, svc_id).values()) == {0}
    with dev.alloc_lni(svc_id) as lni2:       # a new LNI starts empty
        lni2.alloc_ct()
    dev.destroy_svc(svc_id)


def test_a_second_map_with_other_flags_needs_a_second_ac(dev):
    svc_id = svc(dev, AC=(16, 0))
    lni = dev.alloc_lni(svc_id)
    buf = mmap.mmap(-1, 4 * PAGE)
    a = lni.map(buf)
    b = lni.map(buf, flags=0x1 | 0x8)         # READ only: READ/WRITE do not pick the AC
    assert use(dev, svc_id)["AC"] == 1 and a.lac == b.lac
    c = lni.map(buf, flags=PIN_RW | NOCACHE)
    assert use(dev, svc_id)["AC"] == 2 and c.lac != a.lac
    for m in (a, b, c):
        m.unmap()
    assert use(dev, svc_id)["AC"] == 2        # an AC lives as long as its LNI
    for f in OTHER_FLAGS[1:]:
        lni.map(buf, flags=f)
    assert use(dev, svc_id)["AC"] == 8
    with pytest.raises(CxiLibError) as e:     # 8 LACs per LNI: the 9th flag set
        lni.map(buf, flags=PIN_RW | UNUSED | NOCACHE)
    assert e.value.errno == errno.ENOSPC
    assert use(dev, svc_id)["AC"] == 8        # the charge was undone
    sim_check()
    lni.close()
    assert use(dev, svc_id)["AC"] == 0
    dev.destroy_svc(svc_id)


def test_references_between_objects(dev):
    svc_id = svc(dev, AC=2, EQ=2, PTE=2, TXQ=2, TGQ=2)
    lni = dev.alloc_lni(svc_id)
    md = lni.map(mmap.mmap(-1, PAGE))
    eq = lni.alloc_evtq(md)
    pte = lni.alloc_pte(eq)
    q = lni.alloc_cmdq(eq)
    for obj, func in ((eq, "cxil_destroy_evtq"), (md, "cxil_unmap")):
        with pytest.raises(CxiLibError) as e:
            obj.close()
        assert e.value.errno == errno.EBUSY and e.value.func == func
    pte.close()
    q.close()
    eq.close()
    md.unmap()
    # a TXQ needs a CP of the LNI holding its LCID; triggered TXQs only LCID 0
    with pytest.raises(CxiLibError) as e:
        lni.alloc_cmdq(transmit=True, lcid=3)
    assert e.value.errno == errno.EINVAL
    cp = lni.alloc_trig_cp(8, "BEST_EFFORT", 0, 0)      # TRIG_LCID
    assert cp.lcid == 0
    lni.alloc_cmdq(transmit=True, lcid=0, flags=1 << 3)
    with pytest.raises(CxiLibError) as e:
        lni.alloc_cmdq(transmit=True, lcid=1, flags=1 << 3)
    assert e.value.errno == errno.EINVAL
    # EQ argument checks before any charge
    buf = mmap.mmap(-1, PAGE)
    other = lni.map(buf)
    with pytest.raises(CxiLibError) as e:
        lni.alloc_evtq(other, queue=mmap.mmap(-1, PAGE))   # queue outside the MD
    assert e.value.errno == errno.EINVAL
    lni.alloc_evtq(queue=mmap.mmap(-1, PAGE), flags=1 << 1)  # PASSTHROUGH: no MD
    lni.close()
    sim_check()
    dev.destroy_svc(svc_id)


def test_lcids(dev):
    svc_id = svc(dev)
    lni = dev.alloc_lni(svc_id)
    a = lni.alloc_trig_cp(8, "BEST_EFFORT", 0, 0)
    with pytest.raises(CxiLibError) as e:        # LCID 0 taken by other parameters
        lni.alloc_trig_cp(8, "LOW_LATENCY", 0, 0)
    assert e.value.errno == errno.ENOSPC and e.value.func == "cxil_alloc_trig_cp"
    assert lni.alloc_trig_cp(8, "BEST_EFFORT", 0, 0).lcid == a.lcid == 0   # shared again
    b = lni.alloc_cp(8, "LOW_LATENCY")
    assert b.lcid not in (None, 0)
    assert lni.alloc_trig_cp(8, "LOW_LATENCY", 0, 1).lcid == b.lcid
    with pytest.raises(pycxi.CxiUserError):
        lni.alloc_trig_cp(8, "BEST_EFFORT", 0, 3)
    lni.close()
    dev.destroy_svc(svc_id)


def test_no_limit_entry_is_ebadr(dev):
    svc_id = svc(dev, EQ=(0, 0), AC=1)
    with dev.alloc_lni(svc_id) as lni:
        md = lni.map(mmap.mmap(-1, PAGE))
        with pytest.raises(CxiLibError) as e:
            lni.alloc_evtq(md)
        assert e.value.errno == errno.EBADR
    dev.destroy_svc(svc_id)


def test_services_without_limits_share_the_device(dev):
    svc_id = dev.alloc_svc(SvcDesc(vnis=[8]))
    with dev.alloc_lni(svc_id) as lni:
        cts = []
        while True:
            try:
                cts.append(lni.alloc_ct())
            except CxiLibError as e:
                assert e.errno == errno.ENOSPC
                break
        assert len(cts) == 2047 == use(dev, svc_id)["CT"]      # the hardware's CT IDs
    dev.destroy_svc(svc_id)


def test_closing_the_device_releases_everything(sim_root):
    with pycxi.Device(0) as d:
        svc_id = svc(d, AC=1, EQ=4, PTE=4)
    d = pycxi.Device(0)
    lni = d.alloc_lni(svc_id)
    md = lni.map(mmap.mmap(-1, PAGE))
    eq = lni.alloc_evtq(md)
    lni.alloc_pte(eq)
    d.close()                                  # the fd close: LNI and objects go
    assert eq.closed and lni.closed
    with pycxi.Device(0) as d:
        assert set(use(d, svc_id).values()) == {0}
        d.destroy_svc(svc_id)
    sim_check()


def _hold_everything(svc_id, ready_w):
    d = pycxi.Device(0)
    lni = d.alloc_lni(svc_id)
    cp = lni.alloc_cp(8)
    md = lni.map(mmap.mmap(-1, PAGE))
    eq = lni.alloc_evtq(md)
    keep = [cp, md, eq, lni.alloc_pte(eq), lni.alloc_cmdq(eq, transmit=True, lcid=cp.lcid),
            lni.alloc_cmdq(), lni.alloc_ct(), lni.map(mmap.mmap(-1, PAGE), flags=PIN_RW | NOCACHE)]
    os.write(ready_w, b"x")
    time.sleep(120)
    return len(keep)


def test_sigkilled_process_objects_go_with_its_lni(sim_root):
    with pycxi.Device(0) as d:
        svc_id = svc(d, AC=(4, 2), EQ=(4, 2), PTE=(4, 2), TXQ=(4, 2), TGQ=(4, 2), CT=(4, 2))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _hold_everything(svc_id, w)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        with pycxi.Device(0) as d:
            assert use(d, svc_id) == {"PTE": 1, "TXQ": 1, "TGQ": 1, "EQ": 1, "CT": 1, "LE": 0,
                                      "TLE": 0, "AC": 2}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    with pycxi.Device(0) as d:                   # reading the counts releases dead LNIs
        assert set(use(d, svc_id).values()) == {0}
        d.destroy_svc(svc_id)
    assert sim_status()["reaped_lnis"] == 1
    sim_check()


def test_a_dead_process_quota_is_free_for_the_next_one(sim_root):
    """A pod's process SIGKILLed while holding its service's whole CT quota: the next process
    of that service gets the CTs without anyone else cleaning up (the kernel frees on fd close)."""
    with pycxi.Device(0) as d:
        svc_id = svc(d, CT=3)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            d = pycxi.Device(0)
            lni = d.alloc_lni(svc_id)
            held = [lni.alloc_ct() for _ in range(3)]
            os.write(w, b"%d" % len(held))
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"3"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    with pycxi.Device(0) as d:
        with d.alloc_lni(svc_id) as lni:
            cts = [lni.alloc_ct() for _ in range(3)]
            assert len(cts) == 3
        d.destroy_svc(svc_id)
    sim_check()


def test_a_crash_inside_an_allocation_is_rolled_back(sim_root):
    with pycxi.Device(0) as d:
        svc_id = svc(d, AC=(2, 1), EQ=(2, 1))
    inside = 0
    for n in range(1, 200):
        def child():
            os.environ["PYCXI_SIM_CRASHPOINT"] = str(n)   # counts from the first call
            d = pycxi.Device(0)
            lni = d.alloc_lni(svc_id)
            md = lni.map(mmap.mmap(-1, PAGE))
            print("setup done", flush=True)
            lni.alloc_evtq(md)
            return 0
        res = run_forked(child)
        sim_check()
        with pycxi.Device(0) as d:
            assert set(use(d, svc_id).values()) == {0}, n
        if res.returncode == 0:
            break
        assert res.returncode == -signal.SIGKILL, res.stdout
        inside += "setup done" in res.stdout
    else:
        raise AssertionError("alloc_evtq never completed")
    assert inside >= 3        # crashed at several writes of alloc_evtq itself
    with pycxi.Device(0) as d:
        d.destroy_svc(svc_id)


def _greedy(svc_id, kind, go_r, out_w):
    """Allocate ``kind`` until ENOSPC; report the count; hold until killed."""
    d = pycxi.Device(0)
    lni = d.alloc_lni(svc_id)
    os.read(go_r, 1)
    objs = []
    while True:
        try:
            objs.append(lni.alloc_cmdq() if kind == "TGQ" else lni.alloc_pte())
        except CxiLibError as e:
            if e.errno != errno.ENOSPC:
                raise
            break
    os.write(out_w, f"{len(objs)}\n".encode())
    time.sleep(120)


def _race(svc_ids, kind, starter=None):
    """One real process per service, started together; returns what each got."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pids = []
    try:
        for s in svc_ids:
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(go_w)
                    _greedy(s, kind, go_r, out_w)
                finally:
                    os._exit(0)
            pids.append(pid)
        if starter:
            starter()
        os.write(go_w, b"x" * len(svc_ids))
        got = []
        with os.fdopen(out_r, "rb", closefd=False) as f:
            for _ in svc_ids:
                got.append(int(f.readline()))
        return got
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (go_r, go_w, out_r, out_w):
            os.close(fd)


def test_reservations_hold_under_contention(sim_root):
    """Four real processes, one per service (TGQ res 64, max 128), allocate greedily at
    the same time: each reaches its reservation.  Under the driver's rule that holds
    because the max values add up to the device's 512 TGQs (see the next test)."""
    with pycxi.Device(0) as d:
        ids = [svc(d, vni=10 + i, TGQ=(128, 64)) for i in range(4)]
    got = _race(ids, "TGQ")
    assert all(64 <= g <= 128 for g in got) and sum(got) == 512, got
    sim_check()


def test_a_max_reaching_into_reservations_defeats_them(sim_root):
    """The driver lets any service's above-reservation objects use the device total
    (available = total - shared_use): a service with res 0 and max = the device total
    takes IDs another service reserved.  A reservation is a guarantee only while the
    services' max values add up to no more than the device (docs/cni.md)."""
    with pycxi.Device(0) as d:
        greedy = svc(d, vni=20, TGQ=(512, 0))
        reserved = svc(d, vni=21, TGQ=(64, 64))
        hog = d.alloc_lni(greedy)
        held = []
        while True:
            try:
                held.append(hog.alloc_cmdq())
            except CxiLibError:
                break
        assert len(held) == 512
        with d.alloc_lni(reserved) as lni:
            with pytest.raises(CxiLibError) as e:
                lni.alloc_cmdq()
            assert e.value.errno == errno.ENOSPC
        hog.close()
        sim_check()


def test_the_cli_shows_the_real_counts(dev):
    from coreutil import pycxi_cli
    import json

    svc_id = svc(dev, AC=2, EQ=3, CT=3)
    with dev.alloc_lni(svc_id) as lni:
        md = lni.map(mmap.mmap(-1, PAGE))
        held = [lni.alloc_evtq(md), lni.alloc_evtq(md), lni.alloc_ct()]
        res = pycxi_cli("svc", "rsrc", str(svc_id), "--json")
        assert res.returncode == 0, res.stdout
        [row] = json.loads(res.stdout)
        assert row["in_use"]["EQ"] == 2 and row["in_use"]["CT"] == 1 and row["in_use"]["AC"] == 1
        res = pycxi_cli("svc", "rsrc")
        assert res.returncode == 0 and any(
            line.split()[:1] == [str(svc_id)] and line.split()[5] == "2"
            for line in res.stdout.splitlines()), res.stdout
        assert len(held) == 3
    dev.destroy_svc(svc_id)


C_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "libcxi/libcxi.h"
#define CHECK(e, want) do { int _r = (e); if (_r != (want)) { \
	printf("%s = %d, want %d\n", #e, _r, (want)); return 1; } } while (0)
int main(int argc, char **argv)
{
	struct cxil_dev *dev; struct cxil_lni *lni; struct cxi_md *md; struct cxi_eq *eq;
	struct cxil_pte *pte; struct cxi_cq *cq; struct cxi_ct *ct; struct cxi_cp *cp;
	struct cxi_pt_alloc_opts popts = { 0 };
	struct cxi_cq_alloc_opts copts = { .count = 100000 };
	void *buf = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct cxi_eq_attr attr = { .queue = buf, .queue_len = 4096 };
	CHECK(cxil_open_device(0, &dev), 0);
	CHECK(cxil_alloc_lni(dev, &lni, atoi(argv[1])), 0);
	CHECK(cxil_map(NULL, buf, 4096, CXI_MAP_PIN, NULL, &md), -EINVAL);
	CHECK(cxil_map(lni, buf, 0, CXI_MAP_PIN, NULL, &md), -EINVAL);
	CHECK(cxil_map(lni, buf, 4096, CXI_MAP_PIN | CXI_MAP_FAULT, NULL, &md), -EINVAL);
	CHECK(cxil_map(lni, buf, 4096, CXI_MAP_PIN | CXI_MAP_READ, NULL, &md), 0);
	CHECK(cxil_alloc_evtq(lni, NULL, &attr, NULL, NULL, &eq), -EINVAL);
	attr.queue = (char *)buf + 4096;	/* outside the MD */
	CHECK(cxil_alloc_evtq(lni, md, &attr, NULL, NULL, &eq), -EINVAL);
	attr.queue = (char *)buf + 8;		/* not page aligned */
	CHECK(cxil_alloc_evtq(lni, md, &attr, NULL, NULL, &eq), -EINVAL);
	attr.queue = buf;
	CHECK(cxil_alloc_evtq(lni, md, &attr, NULL, NULL, &eq), 0);
	CHECK(cxil_alloc_pte(lni, eq, NULL, &pte), -EINVAL);
	CHECK(cxil_alloc_pte(lni, eq, &popts, &pte), 0);
	CHECK(cxil_alloc_cmdq(lni, NULL, &copts, &cq), -E2BIG);
	copts.count = 1024;
	copts.flags = CXI_CQ_IS_TX;		/* no CP on this LNI */
	CHECK(cxil_alloc_cmdq(lni, NULL, &copts, &cq), -EINVAL);
	copts.flags = 0;
	copts.lpe_cdt_thresh_id = 4;
	CHECK(cxil_alloc_cmdq(lni, NULL, &copts, &cq), -EINVAL);
	copts.lpe_cdt_thresh_id = 0;
	CHECK(cxil_alloc_cmdq(lni, eq, &copts, &cq), 0);
	CHECK(cxil_alloc_ct(lni, (struct c_ct_writeback *)((char *)buf + 4), &ct), -EINVAL);
	CHECK(cxil_alloc_ct(lni, NULL, &ct), 0);
	CHECK(cxil_alloc_trig_cp(lni, 8, CXI_TC_BEST_EFFORT, CXI_TC_TYPE_DEFAULT, TRIG_LCID, &cp), 0);
	CHECK((int)cp->lcid, 0);
	CHECK(cxil_destroy_lni(lni), -EBUSY);	/* objects still open */
	CHECK(cxil_destroy_evtq(eq), -EBUSY);	/* the PTE and CQ use it */
	CHECK(cxil_unmap(md), -EBUSY);		/* the EQ uses it */
	CHECK(cxil_destroy_pte(pte), 0);
	CHECK(cxil_destroy_cmdq(cq), 0);
	CHECK(cxil_destroy_evtq(eq), 0);
	CHECK(cxil_unmap(md), 0);
	CHECK(cxil_destroy_ct(ct), 0);
	CHECK(cxil_destroy_cp(cp), 0);
	CHECK(cxil_destroy_lni(lni), 0);
	cxil_close_device(dev);
	return 0;
}
"""


def test_the_c_entry_points_and_their_errnos(dev, tmp_path):
    """The device's libcxi functions as C callers (and later the uapi front) see them."""
    import shutil
    import subprocess

    from coreutil import REPO
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    (tmp_path / "probe.c").write_text(C_PROBE)
    exe = str(tmp_path / "probe")
    subprocess.run([cc, "-O1", "-I", os.path.join(REPO, "include"), "-I", os.path.join(REPO, "src"),
                    str(tmp_path / "probe.c"), os.path.join(REPO, "src", "sim.c"), "-o", exe,
                    "-pthread"], check=True)
    svc_id = svc(dev, AC=2, EQ=2, PTE=2, TGQ=2, CT=2)
    p = subprocess.run([exe, str(svc_id)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert set(use(dev, svc_id).values()) == {0}
    sim_check()
    dev.destroy_svc(svc_id)


def test_a_crash_while_an_lni_releases_its_objects(sim_root):
    """Destroying an LNI frees every object on it in one operation: a crash at any of its
    writes leaves the accounting whole (rolled back, then the dead LNI is released)."""
    with pycxi.Device(0) as d:
        svc_id = svc(d, AC=(3, 1), EQ=(3, 1), PTE=(3, 1), TGQ=(3, 1), CT=(3, 1))
    inside = 0
    for n in range(1, 400):
        def child():
            os.environ["PYCXI_SIM_CRASHPOINT"] = str(n)   # counts from the first call
            d = pycxi.Device(0)
            lni = d.alloc_lni(svc_id)
            md = lni.map(mmap.mmap(-1, PAGE))
            eq = lni.alloc_evtq(md)
            lni.alloc_pte(eq)
            lni.alloc_cmdq(eq)
            lni.alloc_ct().close()
            lni.map(mmap.mmap(-1, PAGE), flags=PIN_RW | NOCACHE).close()
            print("setup done", flush=True)
            lni.close()
            return 0
        res = run_forked(child)
        with pycxi.Device(0) as d:
            assert set(use(d, svc_id).values()) == {0}, (n, res.stdout)
        sim_check()
        if res.returncode == 0:
            break
        assert res.returncode == -signal.SIGKILL, res.stdout
        inside += "setup done" in res.stdout
    else:
        raise AssertionError("the LNI's release never completed")
    assert inside >= 10       # crashed at many writes of the release itself
    with pycxi.Device(0) as d:
        d.destroy_svc(svc_id)

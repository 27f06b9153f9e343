"""Property tests: random raw descriptors are accepted by the software device exactly
when the driver's allocation rules (cass_svc.c, as docs/library.md describes) accept them, with the same errno.
The model below is written from the reference text, independently of src/sim.c."""
import errno

import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

import pycxi
import pycxi.device
from pycxi import CxiLibError, SvcDesc
from pycxi.svc import DEVICE_TOTALS, RSRC_TYPES

TOTALS = [DEVICE_TOTALS[n] for n in RSRC_TYPES]
TAKEN_VNIS = {1, 10}                    # the default service's profiles
DEFAULT_TLE_RES = 512


def reference(raw, strict):
    """Expected errno (or None) for a fresh device.  ``strict``: any profile overlap is
    EEXIST (13.1/14.0.0); otherwise two exact-VNI profiles may overlap (fd6adba, our
    patched 13.x)."""
    flags, nvld, vnis, members, limits = raw
    rm, rv, rt, rl = (bool(flags & b) for b in (1, 2, 4, 8))
    # validate_descriptor
    if rv and (nvld > 4 or any(v == 0 for v in vnis[:nvld])):
        return errno.EINVAL
    if rm and any(t >= 4 for t, _ in members):
        return errno.EINVAL
    if rl and any(mx < res or mx > TOTALS[i] for i, (mx, res) in enumerate(limits)):
        return errno.EINVAL
    # rgroup AC entries, in member order
    if rm:
        seen = set()
        for t, v in members:
            if t == 0:
                continue
            if v == 0xFFFFFFFF:
                return errno.EBADR
            if (t, v) in seen:
                return errno.EEXIST
            seen.add((t, v))
    # profiles: any overlap with an existing profile, or inside the descriptor
    if rv and strict:
        used = set(TAKEN_VNIS)
        for v in vnis[:nvld]:
            if v in used:
                return errno.EEXIST
            used.add(v)
    # reservations on an otherwise empty device
    lim = [list(x) for x in limits] if rl else [[t, 0] for t in TOTALS]
    tle = lim[6]
    if tle[0] or tle[1]:
        tle[1] = max(tle[1], 8)
        tle[0] = tle[1]
    if tle[1] > TOTALS[6] - DEFAULT_TLE_RES:
        return errno.ENOSPC
    return None


member = st.tuples(st.sampled_from([0, 1, 2, 3, 4, 7]),
                   st.one_of(st.integers(0, 5), st.just(0xFFFFFFFF), st.integers(0, 2**32 - 1)))
limit = st.tuples(st.integers(0, 2100), st.integers(0, 2100))
raw_desc = st.tuples(
    st.integers(0, 63),                                     # flag bits
    st.integers(0, 6),                                      # num_vld_vnis
    st.lists(st.one_of(st.integers(0, 12), st.integers(0, 0xFFFF)), min_size=4, max_size=4),
    st.lists(member, min_size=2, max_size=2),
    st.lists(limit, min_size=8, max_size=8),
)


def build(raw):
    flags, nvld, vnis, members, limits = raw
    d = SvcDesc()
    d.restricted_members, d.restricted_vnis = bool(flags & 1), bool(flags & 2)
    d.restricted_tcs, d.resource_limits = bool(flags & 4), bool(flags & 8)
    d.enable, d.is_system_svc = bool(flags & 16), bool(flags & 32)
    d.num_vld_vnis = nvld
    for i, v in enumerate(vnis):
        d.set_raw_vni(i, v)
    for i, (t, v) in enumerate(members):
        d.set_raw_member(i, t, v)
    for i, (mx, res) in enumerate(limits):
        d.set_raw_limit(i, min(mx, 0xFFFF), min(res, 0xFFFF))
    return d


@pytest.fixture(params=["patched", "strict"])
def overlap_rule(request, sim_root, monkeypatch):
    if request.param == "strict":
        monkeypatch.setenv("PYCXI_SIM_STRICT_VNI_OVERLAP", "1")
    pycxi.device.sim_reset(1)
    return request.param == "strict"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=raw_desc)
def test_device_accepts_exactly_what_the_reference_accepts(overlap_rule, raw):
    expected = reference(raw, overlap_rule)
    with pycxi.Device(0) as dev:
        check_one(dev, raw, expected)


def check_one(dev, raw, expected):
    desc = build(raw)
    try:
        svc = dev.alloc_svc(desc)
    except CxiLibError as e:
        assert e.errno == expected, f"device said {e}, reference says {expected}"
        assert e.func == "cxil_alloc_svc"
        assert (e.fail_info is not None) == (e.errno == errno.ENOSPC)
        assert len(dev.svc_list()) == 1      # nothing half-made
        return
    assert expected is None, f"device accepted what the reference refuses ({expected})"
    stored = dev.get_svc(svc)
    assert stored.svc_id == svc == 2
    assert stored.raw_vnis() == desc.raw_vnis() and stored.raw_members() == desc.raw_members()
    assert stored.enable == desc.restricted_vnis   # the caller's enable bit is ignored
    dev.destroy_svc(svc)
    pycxi.device.sim_check()


@settings(max_examples=200, deadline=None)
@given(vnis=st.lists(st.integers(-5, 70000), max_size=6),
       members=st.lists(st.tuples(st.sampled_from(["uid", "gid", "netns", "pid", 3]),
                                  st.integers(-1, 2**33)), max_size=3))
def test_python_validation_raises_user_errors_only(vnis, members):
    """The keyword form either builds a descriptor the C side can take, or raises
    CxiUserError (a ValueError) with a message: never another exception."""
    try:
        d = SvcDesc(vnis=vnis, members=members)
    except pycxi.CxiUserError as e:
        assert str(e)
        return
    assert 0 <= len(d.vnis) <= 4 and all(1 <= v <= 0xFFFF for v in d.vnis)
    assert len(d.members) <= 2

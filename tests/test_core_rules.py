"""The driver's service rules, as the driver implements them (cass_svc.c; docs/library.md),
against the software CXI device.  Each test names the rule it checks."""
import errno

import pytest

import pycxi
from pycxi import CxiLibError, CxiUserError, SvcDesc, SvcMember


def err(excinfo):
    return excinfo.value.errno


# -- netns flavours (issue 3): what this build's libcxi headers offer -------------
def _flavour():
    m = pycxi.NETNS_METHODS
    name = {frozenset({"member", "set_netns"}): "patched 12/13.x or sim",
            frozenset({"set_netns"}): "SHS 14", frozenset({"member"}): "patched 12.0.x",
            frozenset(): "none (SHS <= 13.1 unpatched)"}
    return f"{pycxi.BACKEND}, netns flavour {name.get(frozenset(m), sorted(m))}"


def needs_netns(*methods):
    """Skip unless this build binds a netns by each of ``methods``."""
    missing = [m for m in methods if m not in pycxi.NETNS_METHODS]
    return pytest.mark.skipif(bool(missing), reason=f"netns method {'/'.join(missing)} "
                              f"not available in this build ({_flavour()})")


def small_limits(**over):
    """resource_limits=1 without a TLE reservation: takes no TLE pool."""
    lim = {"PTE": (16, 0), "TXQ": (16, 0), "TGQ": (16, 0), "EQ": (16, 0), "CT": (16, 0),
           "LE": (0, 0), "TLE": (0, 0), "AC": (16, 0)}
    lim.update(over)
    return lim


# -- the default service (a.6) ---------------------------------------------
def test_default_service_exists_disabled_with_vnis_1_and_10(dev):
    (d,) = dev.svc_list()
    assert d.svc_id == 1 and not d.enable
    assert d.vnis == [1, 10] and d.restricted_vnis and not d.restricted_members
    assert d.resource_limits and d.limits["TLE"] == (512, 512)
    assert dev.svc_rsrc_use(1).tle_pool_id == 0


def test_default_service_cannot_be_destroyed(dev):
    with pytest.raises(CxiLibError) as e:
        dev.destroy_svc(1)
    assert err(e) == errno.EINVAL


@pytest.fixture
def strict_dev(sim_root, monkeypatch):
    """A device with the 13.1 / 14.0.0 profile rule: any VNI overlap is EEXIST."""
    import pycxi.device

    monkeypatch.setenv("PYCXI_SIM_STRICT_VNI_OVERLAP", "1")
    pycxi.device.sim_reset(1)
    with pycxi.Device(0) as d:
        yield d


def test_default_service_vnis_are_taken_on_a_strict_driver(strict_dev):
    for vni in (1, 10):
        with pytest.raises(CxiLibError) as e:
            strict_dev.alloc_svc(SvcDesc(vnis=[vni], limits=small_limits()))
        assert err(e) == errno.EEXIST


def test_exact_vnis_may_be_shared_but_ranges_may_not_overlap(dev):
    """Our 13.x patches carry upstream fd6adba: two exact-VNI profiles may overlap
    (several pods of a job, one service each, on the job's VNI); ranges may not."""
    a = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    b = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    assert dev.get_svc(a).vnis == dev.get_svc(b).vnis == [100]
    dev.alloc_svc(SvcDesc(vnis=[1], limits=small_limits()))  # beside the default service's
    r = dev.alloc_svc(SvcDesc(restricted_vnis=False, limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.set_vni_range(r, 96, 127)  # covers the exact VNI 100
    assert err(e) == errno.EEXIST
    dev.set_vni_range(r, 128, 255)
    s = dev.alloc_svc(SvcDesc(restricted_vnis=False, limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.set_vni_range(s, 192, 223)  # inside the other range
    assert err(e) == errno.EEXIST
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(SvcDesc(vnis=[200], limits=small_limits()))  # an exact VNI in a range
    assert err(e) == errno.EEXIST


@needs_netns("set_netns")
def test_default_service_can_be_enabled_and_refuses_set_netns(dev):
    dev.svc_enable(1, True)
    assert dev.get_svc(1).enable
    dev.svc_enable(1, False)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(1, 12345)
    assert err(e) == errno.EEXIST  # its OPEN entry


# -- alloc (b.2) -------------------------------------------------------------
def test_lowest_free_ids_are_reused(dev):
    ids = [dev.alloc_svc(SvcDesc(vnis=[100 + i], limits=small_limits())) for i in range(5)]
    assert ids == [2, 3, 4, 5, 6]
    dev.destroy_svc(3)
    dev.destroy_svc(5)
    assert dev.alloc_svc(SvcDesc(vnis=[200], limits=small_limits())) == 3
    assert dev.alloc_svc(SvcDesc(vnis=[201], limits=small_limits())) == 5
    assert dev.alloc_svc(SvcDesc(vnis=[202], limits=small_limits())) == 7


def test_restricted_service_is_enabled_range_service_is_not(dev):
    a = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    b = dev.alloc_svc(SvcDesc(restricted_vnis=False, limits=small_limits()))
    assert dev.get_svc(a).enable and not dev.get_svc(b).enable


def test_caller_enable_bit_is_ignored(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], enable=False, limits=small_limits()))
    assert dev.get_svc(svc).enable


def test_vni_overlap_gives_eexist_even_inside_one_descriptor(strict_dev):
    dev = strict_dev
    dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(SvcDesc(vnis=[101, 100], limits=small_limits()))
    assert err(e) == errno.EEXIST
    raw = SvcDesc(vnis=[300, 301], limits=small_limits())
    raw.set_raw_vni(1, 300)
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(raw)
    assert err(e) == errno.EEXIST
    # the failed allocations left nothing behind: VNI 101 and 300 are still free
    dev.alloc_svc(SvcDesc(vnis=[101, 300], limits=small_limits()))


def test_without_resource_limits_a_service_takes_a_tle_pool_and_the_fourth_fails(dev):
    ids = [dev.alloc_svc(SvcDesc(vnis=[100 + i])) for i in range(3)]
    assert sorted(dev.svc_rsrc_use(i).tle_pool_id for i in ids) == [1, 2, 3]
    assert all(dev.get_svc(i).limits["TLE"] == (8, 8) for i in ids)
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(SvcDesc(vnis=[200]))
    assert err(e) == errno.ENOSPC
    fi = e.value.fail_info
    assert fi.no_tle_pools and not fi.no_le_pools
    assert fi.rsrc_avail["PTE"] == 2048 and fi.rsrc_avail["LE"] == 16384
    # VNI 200 was unwound with the allocation
    dev.destroy_svc(ids[0])
    assert dev.alloc_svc(SvcDesc(vnis=[200])) == ids[0]


def test_services_with_tle_0_take_no_pool(dev):
    ids = [dev.alloc_svc(SvcDesc(vnis=[100 + i], limits=small_limits())) for i in range(20)]
    assert len(set(ids)) == 20
    assert all(dev.svc_rsrc_use(i).tle_pool_id == 0 for i in ids)


def test_le_pools_run_out_after_sixteen(dev):
    ids = []
    with pytest.raises(CxiLibError) as e:
        for i in range(20):
            ids.append(dev.alloc_svc(SvcDesc(vnis=[100 + i], limits=small_limits(LE=(8, 0)))))
    assert err(e) == errno.ENOSPC and e.value.fail_info.no_le_pools
    assert len(ids) == 15  # the default service holds LE pool 0


def test_reservation_beyond_shared_fails_with_rsrc_avail(dev):
    a = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits(PTE=(2000, 2000))))
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(SvcDesc(vnis=[101], limits=small_limits(PTE=(100, 100))))
    assert err(e) == errno.ENOSPC
    assert e.value.fail_info.rsrc_avail["PTE"] == 48
    dev.destroy_svc(a)
    dev.alloc_svc(SvcDesc(vnis=[101], limits=small_limits(PTE=(100, 100))))


def test_tle_reservation_is_raised_to_the_pool_minimum(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits(TLE=(100, 3))))
    assert dev.get_svc(svc).limits["TLE"] == (8, 8)


@pytest.mark.parametrize("field", ["num_vld_vnis", "zero_vni", "member_type", "limit_max",
                                   "limit_res"])
def test_invalid_descriptors_get_einval_from_the_device(dev, field):
    d = SvcDesc(vnis=[100], members=[SvcMember.uid(5)], limits=small_limits())
    if field == "num_vld_vnis":
        d.num_vld_vnis = 5
    elif field == "zero_vni":
        d.set_raw_vni(0, 0)
    elif field == "member_type":
        d.set_raw_member(1, 4, 7)
    elif field == "limit_max":
        d.set_raw_limit(0, 2049, 0)
    else:
        d.set_raw_limit(3, 4, 5)
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(d)
    assert err(e) == errno.EINVAL and e.value.func == "cxil_alloc_svc"


def test_restricted_vnis_with_zero_vnis_is_accepted(dev):
    d = SvcDesc(vnis=[], limits=small_limits())
    assert d.restricted_vnis and d.num_vld_vnis == 0
    dev.alloc_svc(d)


def test_duplicate_and_invalid_members(dev):
    d = SvcDesc(members=[SvcMember.uid(7), SvcMember.uid(7)], vnis=[100], limits=small_limits())
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(d)
    assert err(e) == errno.EEXIST
    d = SvcDesc(members=[SvcMember.gid(0xFFFFFFFF)], vnis=[100], limits=small_limits())
    with pytest.raises(CxiLibError) as e:
        dev.alloc_svc(d)
    assert err(e) == errno.EBADR


def test_python_rejects_obvious_mistakes_before_c():
    with pytest.raises(CxiUserError):
        SvcDesc(vnis=[1, 2, 3, 4, 5])
    with pytest.raises(CxiUserError):
        SvcDesc(vnis=[0])
    with pytest.raises(CxiUserError):
        SvcDesc(vnis=[70000])
    with pytest.raises(CxiUserError):
        SvcDesc(members=[SvcMember.uid(1)] * 3)
    with pytest.raises(CxiUserError):
        SvcDesc(limits={"PTE": (1, 2)})
    with pytest.raises(CxiUserError):
        SvcDesc(limits={"BOGUS": (1, 1)})
    with pytest.raises(CxiUserError):
        SvcDesc(tcs=["NOPE"])
    with pytest.raises(CxiUserError):
        SvcMember("pid", 3)


def test_errors_are_oserrors_with_errno_and_function(dev):
    with pytest.raises(OSError) as e:
        dev.get_svc(4242)
    assert e.value.errno == errno.EINVAL and e.value.func == "cxil_get_svc"
    assert "EINVAL" in str(e.value)


# -- destroy / enable / update while LNIs live (b.3, b.4, b.8) ---------------
def test_busy_while_an_lni_lives(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    lni = dev.alloc_lni(svc)
    for call in (lambda: dev.destroy_svc(svc), lambda: dev.svc_enable(svc, False),
                 lambda: dev.update_svc(dev.get_svc(svc)), lambda: dev.set_svc_lpr(svc, 2)):
        with pytest.raises(CxiLibError) as e:
            call()
        assert err(e) == errno.EBUSY
    lni.close()
    dev.destroy_svc(svc)
    with pytest.raises(CxiLibError) as e:
        dev.destroy_svc(svc)
    assert err(e) == errno.EINVAL


def test_disabled_service_refuses_lnis_with_ekeyrevoked(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    dev.svc_enable(svc, False)
    with pytest.raises(CxiLibError) as e:
        dev.alloc_lni(svc)
    assert err(e) == errno.EKEYREVOKED
    dev.svc_enable(svc, True)
    dev.alloc_lni(svc).close()


def test_update_changes_only_the_stored_descriptor(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], members=[SvcMember.uid(4321)], limits=small_limits()))
    d = dev.get_svc(svc)
    d.members = [SvcMember.uid(0)]
    d.vnis = [555]
    dev.update_svc(d)
    assert dev.get_svc(svc).vnis == [555]
    # access control is still the one from alloc time: root (uid 0) is not a member
    with pytest.raises(CxiLibError) as e:
        dev.alloc_lni(svc)
    assert err(e) == errno.EPERM
    d.resource_limits = False
    with pytest.raises(CxiLibError) as e:
        dev.update_svc(d)
    assert err(e) == errno.EINVAL


def test_update_can_disable(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    d = dev.get_svc(svc)
    d.enable = False
    dev.update_svc(d)
    assert not dev.get_svc(svc).enable


# -- lpr, exclusive_cp, VNI ranges (b.9 - b.11) -----------------------------
def test_lpr(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    assert dev.get_svc_lpr(svc) == 1
    dev.set_svc_lpr(svc, 4)
    assert dev.get_svc_lpr(svc) == 4
    with pytest.raises(CxiLibError) as e:
        dev.set_svc_lpr(svc, 9)
    assert err(e) == errno.EINVAL


def test_vni_range_rules(dev):
    svc = dev.alloc_svc(SvcDesc(restricted_vnis=False, limits=small_limits()))
    with pytest.raises(CxiUserError):
        dev.set_vni_range(svc, 32, 95)
    with pytest.raises(CxiLibError) as e:
        dev.get_exclusive_cp(svc)
    assert err(e) == errno.ENOENT
    dev.set_vni_range(svc, 16, 31)
    assert dev.get_vni_range(svc) == (16, 31)
    assert dev.get_svc(svc).num_vld_vnis == 1 and not dev.get_svc(svc).enable
    dev.set_exclusive_cp(svc, True)
    assert dev.get_exclusive_cp(svc) is True
    with pytest.raises(CxiLibError) as e:
        dev.set_vni_range(svc, 64, 127)
    assert err(e) == errno.EEXIST
    dev.svc_enable(svc, True)
    with pytest.raises(CxiLibError) as e:
        dev.set_exclusive_cp(svc, False)
    assert err(e) == errno.EBUSY
    # a restricted service has no range
    r = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.set_vni_range(r, 32, 63)
    assert err(e) == errno.EINVAL
    assert dev.get_exclusive_cp(r) is False


def test_range_overlapping_a_vni_fails(dev):
    dev.alloc_svc(SvcDesc(vnis=[20], limits=small_limits()))
    svc = dev.alloc_svc(SvcDesc(restricted_vnis=False, limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.set_vni_range(svc, 16, 31)
    assert err(e) == errno.EEXIST


def test_range_1_1_overlaps_the_default_service_on_a_strict_driver(strict_dev):
    svc = strict_dev.alloc_svc(SvcDesc(restricted_vnis=False, limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        strict_dev.set_vni_range(svc, 1, 1)  # the default service's VNI 1
    assert err(e) == errno.EEXIST


# -- set_netns / get_netns (b.12, b.13, d.3) ---------------------------------
@needs_netns("set_netns")
def test_set_netns_rules(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], restricted_members=True, limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.get_netns(svc)
    assert err(e) == errno.EINVAL
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(svc, 1000)
    assert err(e) == errno.EBUSY  # only on a disabled service
    dev.svc_enable(svc, False)
    dev.set_netns(svc, 1000)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(svc, 1000)
    assert err(e) == errno.EEXIST
    dev.set_netns(svc, 900)
    assert dev.get_netns(svc) == 900  # the smallest
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(svc, 0xFFFFFFFF)
    assert err(e) == errno.EBADR
    # descriptors never change
    assert dev.get_svc(svc).members == []
    uid_svc = dev.alloc_svc(SvcDesc(vnis=[101], members=[SvcMember.uid(5)], limits=small_limits()))
    dev.svc_enable(uid_svc, False)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(uid_svc, 1000)
    assert err(e) == errno.EEXIST
    open_svc = dev.alloc_svc(SvcDesc(vnis=[102], limits=small_limits()))
    dev.svc_enable(open_svc, False)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(open_svc, 1000)
    assert err(e) == errno.EEXIST
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(4000, 1)
    assert err(e) == errno.EINVAL


@needs_netns("set_netns")
def test_set_netns_on_range_service_without_range_gives_enodata(dev):
    d = SvcDesc(restricted_vnis=False, restricted_members=True, limits=small_limits())
    d.num_vld_vnis = 1
    svc = dev.alloc_svc(d)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(svc, 77)
    assert err(e) == errno.ENODATA
    assert dev.get_netns(svc) == 77  # the rgroup entry is not rolled back


def test_restricted_members_without_members_admits_nobody(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], restricted_members=True, limits=small_limits()))
    with pytest.raises(CxiLibError) as e:
        dev.alloc_lni(svc)
    assert err(e) == errno.EPERM


# -- LNIs, domains, CPs (b.14, c.3) -----------------------------------------
def test_domain_vni_checks(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    other = dev.alloc_svc(SvcDesc(vnis=[200], members=[SvcMember.uid(4321)], limits=small_limits()))
    with dev.alloc_lni(svc) as lni:
        d = lni.alloc_domain(100)
        assert (d.vni, d.pid) == (100, 0)
        d1 = lni.alloc_domain(100)
        assert d1.pid == 1
        with pytest.raises(CxiLibError) as e:
            lni.alloc_domain(100, pid=1)
        assert err(e) == errno.EEXIST
        # VNI 200's profile exists but does not grant root
        with pytest.raises(CxiLibError) as e:
            lni.alloc_domain(200)
        assert err(e) == errno.EPERM
        # no profile for VNI 300: root gets an auto-created private one
        lni.alloc_domain(300).close()
        with pytest.raises(CxiLibError) as e:
            dev.destroy_svc(svc)
        assert err(e) == errno.EBUSY
    dev.destroy_svc(svc)
    dev.destroy_svc(other)


def test_cp_checks_traffic_classes(dev):
    svc = dev.alloc_svc(SvcDesc(vnis=[100], tcs=["LOW_LATENCY"], limits=small_limits()))
    with dev.alloc_lni(svc) as lni:
        lni.alloc_cp(100, "LOW_LATENCY").close()
        with pytest.raises(CxiLibError) as e:
            lni.alloc_cp(100, "BULK_DATA")
        assert err(e) == errno.EINVAL


def test_lni_close_releases_children_and_device_close_releases_lnis(dev, sim_root):
    from pycxi.device import sim_status

    svc = dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))
    lni = dev.alloc_lni(svc)
    lni.alloc_domain(100)
    lni.close()
    lni.close()  # idempotent
    assert sim_status()["lnis"] == 0
    with pycxi.Device(0) as d2:
        lni2 = d2.alloc_lni(svc)
        assert sim_status()["lnis"] == 1
    assert sim_status()["lnis"] == 0 and lni2.closed
    dev.destroy_svc(svc)


def test_closed_device_is_an_error_not_a_crash(sim_root):
    d = pycxi.Device("cxi0")
    d.close()
    d.close()
    with pytest.raises(CxiUserError):
        d.svc_list()


def test_missing_device_is_enoent(sim_root):
    with pytest.raises(CxiLibError) as e:
        pycxi.Device(5)
    assert err(e) == errno.ENOENT
    with pytest.raises(CxiUserError):
        pycxi.Device("eth0")


def test_devices_and_reset(sim_root):
    from pycxi.device import sim_reset

    sim_reset(3)
    assert [i.name for i in pycxi.devices()] == ["cxi0", "cxi1", "cxi2"]
    assert pycxi.devices()[0].num_tles == 2048


@needs_netns("member", "set_netns")
def test_netns_method_member_and_set_netns_agree(dev):
    ino = pycxi.netns_inode()
    a = dev.alloc_netns_svc(ino, [100], method="member")
    b = dev.alloc_netns_svc(ino, [101], method="set_netns")
    assert dev.get_svc(a).members == [SvcMember.netns(ino)]
    assert dev.get_svc(b).members == [] and dev.get_netns(b) == ino
    for svc, vni in ((a, 100), (b, 101)):
        with dev.alloc_lni(svc) as lni:
            lni.alloc_domain(vni).close()


@needs_netns("set_netns")
def test_alloc_netns_svc_rolls_back(dev, monkeypatch):
    before = len(dev.svc_list())
    with pytest.raises(CxiLibError) as e:
        dev.alloc_netns_svc(0xFFFFFFFF, [100], method="set_netns")  # set_netns: EBADR
    assert err(e) == errno.EBADR
    assert len(dev.svc_list()) == before
    dev.alloc_svc(SvcDesc(vnis=[100], limits=small_limits()))  # VNI 100 was released


@pytest.mark.skipif(bool(pycxi.NETNS_METHODS), reason=f"this build can bind a netns ({_flavour()})")
def test_without_netns_support_the_netns_calls_are_eopnotsupp(dev):
    """Flavour none (SHS <= 13.1 unpatched headers): one API, a clear EOPNOTSUPP."""
    svc = dev.alloc_svc(SvcDesc(vnis=[100], restricted_members=True, limits=small_limits()))
    dev.svc_enable(svc, False)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(svc, 1000)
    assert err(e) == errno.EOPNOTSUPP and "no cxil_svc_set_netns" in str(e.value)
    with pytest.raises(CxiLibError) as e:
        dev.get_netns(svc)
    assert err(e) == errno.EOPNOTSUPP
    before = len(dev.svc_list())
    for method in ("auto", "member", "set_netns"):
        with pytest.raises(CxiLibError) as e:
            dev.alloc_netns_svc(pycxi.netns_inode(), [101], method=method)
        assert err(e) == errno.EOPNOTSUPP and "network namespace" in str(e.value)
    assert len(dev.svc_list()) == before  # nothing allocated


@pytest.mark.skipif(pycxi.NETNS_METHODS != {"set_netns"},
                    reason=f"not the SHS 14 flavour ({_flavour()})")
def test_shs14_auto_method_binds_through_set_netns(dev):
    """Flavour shs14: no svc_member.netns in the headers, so "auto" uses set_netns and the
    stored descriptor has no members; method="member" is EOPNOTSUPP."""
    ino = pycxi.netns_inode()
    svc = dev.alloc_netns_svc(ino, [100], method="auto")
    d = dev.get_svc(svc)
    assert d.members == [] and d.restricted_members and d.enable
    assert dev.get_netns(svc) == ino
    with dev.alloc_lni(svc) as lni:
        lni.alloc_domain(100).close()
    with pytest.raises(CxiLibError) as e:
        dev.alloc_netns_svc(ino, [101], method="member")
    assert err(e) == errno.EOPNOTSUPP


@pytest.mark.skipif(pycxi.NETNS_METHODS != {"member"},
                    reason=f"not the patched 12.0.x flavour ({_flavour()})")
def test_member_only_flavour_binds_through_the_descriptor(dev):
    """Flavour shs12 (12.0.x + patches: member type, no set_netns ops)."""
    ino = pycxi.netns_inode()
    svc = dev.alloc_netns_svc(ino, [100], method="auto")
    assert dev.get_svc(svc).members == [SvcMember.netns(ino)]
    with dev.alloc_lni(svc) as lni:
        lni.alloc_domain(100).close()
    with pytest.raises(CxiLibError) as e:
        dev.alloc_netns_svc(ino, [101], method="set_netns")
    assert err(e) == errno.EOPNOTSUPP
    dev.svc_enable(svc, False)
    with pytest.raises(CxiLibError) as e:
        dev.set_netns(svc, ino)
    assert err(e) == errno.EOPNOTSUPP


@pytest.mark.parametrize("bad", [0, -1, 2**31, 2**64, True, "3", 2.0, None])
def test_svc_ids_are_checked_before_any_c_call(dev, bad):
    with pytest.raises(CxiUserError):
        dev.get_svc(bad)
    with pytest.raises(CxiUserError):
        dev.destroy_svc(bad)

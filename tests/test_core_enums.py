"""libcxi's enums from the header, and pycxi's name tables that follow them."""
import subprocess
import sys

from pycxi import libcxi_enums as E
from pycxi.svc import MEMBER_TYPES, RSRC_TYPES, TC_NAMES


def test_enums_keep_the_c_spellings_and_values():
    assert E.cxi_rsrc_type.CXI_RSRC_TYPE_EQ == 3 and E.cxi_rsrc_type.CXI_RSRC_TYPE_AC == 7
    assert E.cxi_svc_member_type.CXI_SVC_MEMBER_NET_NS == 3
    assert E.cxi_traffic_class.CXI_TC_ETH == 4
    assert E.cxi_traffic_class_type.CXI_TC_TYPE_COLL_LEAF == 3


def test_name_tables_follow_the_enums():
    assert [m.name for m in sorted(E.cxi_rsrc_type)] == [f"CXI_RSRC_TYPE_{n}" for n in RSRC_TYPES]
    assert [m.name for m in sorted(E.cxi_traffic_class)] == [f"CXI_TC_{n}" for n in TC_NAMES]
    assert [m.name for m in sorted(E.cxi_svc_member_type)] == [
        "CXI_SVC_MEMBER_" + {"ignore": "IGNORE", "uid": "UID", "gid": "GID", "netns": "NET_NS"}[t]
        for t in MEMBER_TYPES]


def test_the_enums_stay_off_the_cni_import_path():
    code = ("import sys, pycxi.device, pycxi.svc; "
            "print('pycxi.libcxi_enums' in sys.modules, 'enum' in sys.modules)")
    out = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"


def _header_defines():
    import os
    import re

    from coreutil import REPO
    out = {}
    for rel in ("include/libcxi/libcxi.h", "include/uapi/ethernet/cxi-abi.h"):
        with open(os.path.join(REPO, rel)) as f:
            for m in re.finditer(r"^#define\s+(\w+)\s+(0x[0-9A-Fa-f]+|\d+)\s*$", f.read(), re.M):
                out[m.group(1)] = int(m.group(2), 0)
    return out


def test_abi_constants_are_the_headers():
    """Defined once (the header, compiled in); every Python copy checked against it."""
    import pycxi
    import pycxi.svc as S
    from pycxi.cni import config as C

    h = _header_defines()
    assert S.C_PID_ANY == pycxi.C_PID_ANY == h["C_PID_ANY"]
    assert S.MAX_MEMBERS == h["CXI_SVC_MAX_MEMBERS"] and S.MAX_VNIS == h["CXI_SVC_MAX_VNIS"]
    assert S.DEFAULT_SVC_ID == h["CXI_DEFAULT_SVC_ID"]
    assert len(RSRC_TYPES) == len(E.cxi_rsrc_type) and len(TC_NAMES) == len(E.cxi_traffic_class)
    # the CNI plugin keeps its own tables (it must not load the extension to parse a config)
    assert C.RSRC_NAMES == RSRC_TYPES and C.TC_NAMES == TC_NAMES and C.MAX_VNIS == S.MAX_VNIS
    assert list(C.DEFAULT_LIMITS) == list(RSRC_TYPES)
    assert all(C.DEFAULT_LIMITS[n][0] <= S.DEVICE_TOTALS[n] for n in RSRC_TYPES)


def test_device_totals_are_the_devices(dev):
    from pycxi.svc import DEVICE_TOTALS
    i = dev.info
    assert DEVICE_TOTALS == {"PTE": i.num_ptes, "TXQ": i.num_txqs, "TGQ": i.num_tgqs,
                             "EQ": i.num_eqs, "CT": i.num_cts, "LE": i.num_les,
                             "TLE": i.num_tles, "AC": i.num_acs}


def test_object_flags_are_the_headers():
    assert E.cxi_trig_cp.TRIG_LCID == 0 and E.cxi_trig_cp.ANY_LCID == 2
    assert E.cxi_map_flags.CXI_MAP_PIN == 1 and E.cxi_map_flags.CXI_MAP_PREFETCH == 1 << 12
    assert E.cxi_cq_flags.CXI_CQ_IS_TX == 2 and E.cxi_eq_flags.CXI_EQ_PASSTHROUGH == 2
    assert E.cxi_eq_flags.CXI_EQ_REGISTER_PCT == 1 << 7

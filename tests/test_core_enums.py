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

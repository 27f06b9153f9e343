"""ABI: our headers' struct sizes and offsets against the reference table
(upstream's cxi-abi.h/libcxi.h on x86_64 LP64), checked by compiling a probe with the
same compiler flags the extension uses, and through the bytes SvcDesc hands to C."""
import json
import os
import shutil
import subprocess

import pytest

import pycxi
from coreutil import REPO

EXPECTED = {
    "sizeof(struct cxi_svc_desc)": 68,
    "offsetof(struct cxi_svc_desc, num_vld_vnis)": 1,
    "offsetof(struct cxi_svc_desc, vnis)": 2,
    "offsetof(struct cxi_svc_desc, tcs)": 10,
    "offsetof(struct cxi_svc_desc, members)": 16,
    "offsetof(struct cxi_svc_desc, members[1])": 24,
    "offsetof(struct cxi_svc_desc, members[0].type)": 20,
    "offsetof(struct cxi_svc_desc, limits)": 32,
    "offsetof(struct cxi_svc_desc, svc_id)": 64,
    "sizeof(struct cxi_limits)": 4,
    "sizeof(struct cxi_rsrc_limits)": 32,
    "sizeof(struct cxi_rsrc_use)": 24,
    "offsetof(struct cxi_rsrc_use, in_use)": 8,
    "sizeof(struct cxi_svc_fail_info)": 20,
    "offsetof(struct cxi_svc_fail_info, no_le_pools)": 16,
    "offsetof(struct cxi_svc_fail_info, no_tle_pools)": 17,
    "offsetof(struct cxi_svc_fail_info, no_cntr_pools)": 18,
    "offsetof(struct cxil_svc_list, descs)": 4,
    "offsetof(struct cxil_svc_rsrc_list, rsrcs)": 4,
    "CXI_SVC_MEMBER_NET_NS": 3,
    "CXI_SVC_MEMBER_MAX": 4,
    "CXI_OP_SVC_SET_NETNS": 84,
    "CXI_OP_SVC_GET_NETNS": 85,
    "CXI_RSRC_TYPE_MAX": 8,
    "CXI_TC_MAX": 5,
    "CXI_SVC_MAX_MEMBERS": 2,
    "CXI_SVC_MAX_VNIS": 4,
    # the objects on an LNI (values from compiling upstream's 13.1 uapi header)
    "sizeof(struct cxi_md)": 40,
    "offsetof(struct cxi_md, lac)": 24,
    "offsetof(struct cxi_md, id)": 36,
    "sizeof(struct cxi_md_hints)": 40,
    "offsetof(struct cxi_md_hints, dmabuf_valid)": 32,
    "sizeof(struct cxi_eq_attr)": 48,
    "offsetof(struct cxi_eq_attr, flags)": 16,
    "offsetof(struct cxi_eq_attr, reserved_slots)": 44,
    "sizeof(struct cxi_cq_alloc_opts)": 24,
    "offsetof(struct cxi_cq_alloc_opts, flags)": 12,
    "offsetof(struct cxi_cq_alloc_opts, lpe_cdt_thresh_id)": 20,
    "sizeof(struct cxi_pt_alloc_opts)": 8,
    "CXI_MAP_PREFETCH": 4096,
    "CXI_MAP_ALLOC_MD": 2048,
    "CXI_CQ_IS_TX": 2,
    "CXI_CQ_TX_WITH_TRIG_CMDS": 8,
    "CXI_EQ_PASSTHROUGH": 2,
    "CXI_EQ_REGISTER_PCT": 128,
    "CXI_MAX_CQ_COUNT": 65536,
    "CXI_CQ_UPDATE_LOW_FREQ": 3,
    "ANY_LCID": 2,
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("abi")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <libcxi/libcxi.h>",
             "int main(void) {", 'printf("{");']
    for i, expr in enumerate(EXPECTED):
        sep = "," if i else ""
        lines.append(f'printf("{sep}\\"%s\\": %ld", "{expr}", (long)({expr}));')
    lines += ['printf("}\\n");', "return 0; }"]
    (d / "probe.c").write_text("\n".join(lines))
    subprocess.run([cc, "-I", os.path.join(REPO, "include"), str(d / "probe.c"), "-o",
                    str(d / "probe")], check=True)
    return json.loads(subprocess.run([str(d / "probe")], capture_output=True, text=True,
                                     check=True).stdout)


@pytest.mark.parametrize("expr", list(EXPECTED))
def test_layout_matches_reference(probe, expr):
    assert probe[expr] == EXPECTED[expr]


def test_svcdesc_bytes_follow_the_layout():
    d = pycxi.SvcDesc(vnis=[0x1234, 0x00FF], members=[pycxi.SvcMember.uid(0x01020304),
                                                      pycxi.SvcMember.netns(0xA0B0C0D0)],
                      tcs=["BULK_DATA"], limits={"TLE": (9, 8)}, svc_id=0x55)
    b = d.to_bytes()
    assert len(b) == 68
    # bit0 restricted_members, bit1 restricted_vnis, bit2 restricted_tcs, bit3 resource_limits,
    # bit4 enable
    assert b[0] & 0x1F == 0x1F
    assert b[1] == 2
    assert b[2:4] == (0x1234).to_bytes(2, "little") and b[4:6] == (0xFF).to_bytes(2, "little")
    assert list(b[10:15]) == [0, 0, 1, 0, 0]
    assert b[16:20] == (0x01020304).to_bytes(4, "little") and b[20:24] == (1).to_bytes(4, "little")
    assert b[24:28] == (0xA0B0C0D0).to_bytes(4, "little") and b[28:32] == (3).to_bytes(4, "little")
    tle = 32 + 4 * 6
    assert b[tle:tle + 4] == (9).to_bytes(2, "little") + (8).to_bytes(2, "little")
    assert b[64:68] == (0x55).to_bytes(4, "little")
    assert pycxi.SvcDesc.from_bytes(b) == d

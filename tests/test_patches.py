"""patches/: structure of the netns backport patches for shs-cxi-driver and shs-libcxi.

Without network access: every patch is a ``git format-patch`` mail with a subject, a
description and our sign-off, touches the files its component needs, and the diffs add
``CXI_SVC_MEMBER_NET_NS`` (= 3, after GID), the ``netns`` union member and, for 13.1, the
ops 84/85 with the SHS 14.0 command layouts (upstream's 14.0 cxi-abi.h). The 13.1
driver series continues with 0003, which lets two exact-VNI RX/TX profiles overlap (the rule
of upstream fd6adba), so that several pods of one job can each have a service on the
job's VNI on one node, and ends with 0004, which makes C_PID_ANY skip the PIDs that domains
of any profile use on the VNI (and clears the chosen PID on failure), and 0005, which gives
the implicit exact-VNI profile (cxi_dev_get_rx/tx_profile) only to root in the initial network
namespace, so that a container's root no longer gets any VNI without a profile. SHS 14.0.0
gets the overlap rule (0001) and the same root patch (0002). 12.0.2 has no profiles, hence no
implicit one: a test reads the tag to show that.

If bare upstream snapshots exist (``$PYCXI_UPSTREAM_MIRRORS``, default ``/work/.mirror``,
laid out as ``HewlettPackard+<repo>/repo``), each series is also checked with
``git apply --check`` patch by patch on a fresh export of its tag, and the patched uapi
header's enums are counted. CI machines without the snapshots skip those tests.
"""
import os
import re
import shutil
import subprocess
import tarfile
import io

import pytest

from coreutil import REPO

PATCHES = os.path.join(REPO, "patches")
SIGNOFF = "Signed-off-by: pycxi developers <pycxi@example.org>"
MIRRORS = os.environ.get("PYCXI_UPSTREAM_MIRRORS", "/work/.mirror")

DRV13_ABI = "include/uapi/ethernet/cxi-abi.h"
DRV12_ABI = "include/uapi/misc/cxi.h"

# (component, tag directory) -> what the whole series must touch
SERIES = {
    ("shs-cxi-driver", "release-shs-13.1.0"): {
        "files": {
            DRV13_ABI,
            "include/linux/hpe/cxi/cxi.h",
            "drivers/net/ethernet/hpe/ss1/cass_svc.c",
            "drivers/net/ethernet/hpe/ss1/cxi_ac_entry_list.c",
            "drivers/net/ethernet/hpe/ss1/cxi_user_core.c",
            "drivers/net/ethernet/hpe/ss1/cxi_rxtx_profile.c",
            "drivers/net/ethernet/hpe/ss1/cass_rmu.c",
            "drivers/net/ethernet/hpe/ss1/cxi_rx_profile.c",
            "drivers/net/ethernet/hpe/ss1/cxi_tx_profile.c",
            "drivers/net/ethernet/hpe/ss1/cxi_rxtx_profile.h",
        },
        "ops": True,
    },
    ("shs-cxi-driver", "release-shs-14.0.0"): {
        "files": {
            "drivers/net/ethernet/hpe/ss1/cxi_rxtx_profile.c",
            "drivers/net/ethernet/hpe/ss1/cxi_rxtx_profile.h",
            "drivers/net/ethernet/hpe/ss1/cxi_rx_profile.c",
            "drivers/net/ethernet/hpe/ss1/cxi_tx_profile.c",
            "drivers/net/ethernet/hpe/ss1/tests/test_service.c",
        },
        "ops": False,
    },
    ("shs-cxi-driver", "release-shs-12.0.2"): {
        "files": {DRV12_ABI, "cxi/cass_svc.c"},
        "ops": False,
    },
    ("shs-libcxi", "release-shs-13.1.0"): {
        "files": {
            "include/libcxi.h",
            "src/libcxi.c",
            "src/libcxi.sym",
            "utils/cxi_service.c",
            "utils/cxi_service_template.yaml",
            "man/cxi_service.7.md",
        },
        "ops": True,
    },
    ("shs-libcxi", "release-shs-12.0.2"): {
        "files": {"utils/cxi_service.c", "utils/cxi_service_template.yaml", "man/cxi_service.7.md"},
        "ops": False,
    },
}


def _series(component, tagdir):
    d = os.path.join(PATCHES, component, tagdir)
    files = sorted(f for f in os.listdir(d) if f.endswith(".patch"))
    return [os.path.join(d, f) for f in files]


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _diffs(text):
    """{path: [added lines]} of one patch."""
    out = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^diff --git a/(\S+) b/(\S+)$", line)
        if m:
            cur = m.group(2)
            out.setdefault(cur, [])
            continue
        if cur and line.startswith("+") and not line.startswith("+++"):
            out[cur].append(line[1:])
    return out


def _series_diffs(component, tagdir):
    merged = {}
    for p in _series(component, tagdir):
        for path, added in _diffs(_read(p)).items():
            merged.setdefault(path, []).extend(added)
    return merged


def _hunks(text, path):
    """The hunks (list of lines with their +/-/space prefix) of ``path`` in a patch."""
    hunks, cur, inside = [], None, False
    for line in text.splitlines():
        if line.startswith("diff --git "):
            inside = line.endswith(" b/" + path)
            cur = None
            continue
        if not inside:
            continue
        if line.startswith("@@"):
            cur = []
            hunks.append(cur)
        elif cur is not None and line[:1] in ("+", "-", " ", ""):
            cur.append(line)
    return hunks


def test_every_tag_directory_has_a_numbered_series():
    for component, tagdir in SERIES:
        paths = _series(component, tagdir)
        assert paths, f"no patches in patches/{component}/{tagdir}"
        for i, p in enumerate(paths, 1):
            assert os.path.basename(p).startswith(f"{i:04d}-"), p
    # nothing else lies around (no scripts, no upstream files)
    for root, _dirs, files in os.walk(PATCHES):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), PATCHES)
            assert f.endswith(".patch") or rel == "README.md", f"unexpected file patches/{rel}"


@pytest.mark.parametrize("component,tagdir", sorted(SERIES))
def test_patches_are_format_patch_mails_with_description_and_signoff(component, tagdir):
    for p in _series(component, tagdir):
        text = _read(p)
        lines = text.splitlines()
        assert re.match(r"^From [0-9a-f]{40} Mon Sep 17 00:00:00 2001$", lines[0]), p
        assert any(l.startswith("From: ") for l in lines[:5]), p
        subj = [l for l in lines[:8] if l.startswith("Subject: [PATCH")]
        assert subj and len(subj[0]) > len("Subject: [PATCH] ") + 10, p
        head, sep, rest = text.partition("\n---\n")
        assert sep, f"{p}: no '---' separator before the diffstat"
        body = head.split("\n\n", 1)[1] if "\n\n" in head else ""
        desc = [l for l in body.splitlines() if l.strip() and not l.startswith("Signed-off-by:")]
        assert len(desc) >= 5, f"{p}: the description of why is too short"
        assert SIGNOFF in head.splitlines(), f"{p}: missing '{SIGNOFF}'"
        assert "diff --git " in rest, p
        for path, added in _diffs(text).items():
            for line in added:
                assert line == line.rstrip(), f"{p}: trailing whitespace added in {path}"


@pytest.mark.parametrize("component,tagdir", sorted(SERIES))
def test_series_touches_the_expected_files(component, tagdir):
    touched = set(_series_diffs(component, tagdir))
    missing = SERIES[(component, tagdir)]["files"] - touched
    assert not missing, f"{component}/{tagdir} does not touch {sorted(missing)}"


@pytest.mark.parametrize("tagdir,abi", [("release-shs-13.1.0", DRV13_ABI),
                                         ("release-shs-12.0.2", DRV12_ABI)])
def test_driver_adds_member_type_3_and_netns_union_member(tagdir, abi):
    text = "".join(_read(p) for p in _series("shs-cxi-driver", tagdir))
    hunks = _hunks(text, abi)
    enum_hunk = [h for h in hunks if any("+\tCXI_SVC_MEMBER_NET_NS," == l for l in h)]
    assert len(enum_hunk) == 1, "CXI_SVC_MEMBER_NET_NS is not added to the uapi enum"
    names = [l[1:].strip().rstrip(",") for l in enum_hunk[0]
             if l[:1] in (" ", "+") and re.match(r"^\s*CXI_SVC_MEMBER_\w+,$", l[1:])]
    # IGNORE=0, UID=1, GID=2, NET_NS=3 (the context shows the members before it)
    assert names[names.index("CXI_SVC_MEMBER_NET_NS") - 1] == "CXI_SVC_MEMBER_GID"
    assert names[-1] == "CXI_SVC_MEMBER_MAX"
    union = [h for h in hunks if any(re.match(r"^\+\s+unsigned int\s+netns;$", l) for l in h)]
    assert union and any("__kernel_gid_t" in l for l in union[0]), "netns not added to union cxi_svc_member"
    # the union member is the only field added to the descriptor: layout unchanged
    added = _series_diffs("shs-cxi-driver", tagdir)[abi]
    assert not any(re.match(r"^\s+(uint\d+_t|bool|__u\d+)\s", l) for l in added)


def test_driver_12_checks_every_member():
    text = _read(_series("shs-cxi-driver", "release-shs-12.0.2")[0])
    hunk = [h for h in _hunks(text, "cxi/cass_svc.c")
            if any("CXI_SVC_MEMBER_NET_NS" in l and l.startswith("+") for l in h)
            and any("in_egroup_p" in l for l in h)]
    assert hunk, "valid_svc_user() has no NET_NS branch"
    added = [l[1:] for l in hunk[0] if l.startswith("+")]
    # a netns member may only grant; it must never end the loop with a refusal
    assert not any(re.search(r"return\s+(false|ret)\s*;", l) for l in added)
    assert any("return true;" in l for l in added)
    assert not any("CXI_OP_SVC_SET_NETNS" in l for l in text.splitlines())


def test_driver_13_netns_entries_take_value_from_descriptor_and_grant_only():
    added = _series_diffs("shs-cxi-driver", "release-shs-13.1.0")
    svc = "\n".join(added["drivers/net/ethernet/hpe/ss1/cass_svc.c"])
    assert "ac_data.netns = svc_desc->members[i].svc_member.netns;" in svc
    assert "case CXI_SVC_MEMBER_NET_NS:\n\t\treturn CXI_AC_NETNS;" in svc
    acl = "\n".join(added["drivers/net/ethernet/hpe/ss1/cxi_ac_entry_list.c"])
    assert "current->nsproxy" in acl and "ns.inum" in acl
    assert "return -EPERM" not in acl
    conf = "\n".join(added["drivers/net/ethernet/hpe/ss1/cxi_configuration.h"])
    assert "CXI_AC_NETNS" in conf  # part of CXI_AC_ANY, so every by_user lookup sees it


DRV13_OVERLAP = "0003-cxi-allow-two-exact-VNI-profiles-to-overlap.patch"
DRV13_PID_ANY = "0004-cxi-choose-any-PID-across-all-profiles-of-a-VNI.patch"
DRV_ROOT = "NNNN-cxi-give-implicit-profiles-only-to-root-in-the-initi.patch"
TXP = "drivers/net/ethernet/hpe/ss1/cxi_tx_profile.c"
RXTX_H = "drivers/net/ethernet/hpe/ss1/cxi_rxtx_profile.h"
RXTX = "drivers/net/ethernet/hpe/ss1/cxi_rxtx_profile.c"
RMU = "drivers/net/ethernet/hpe/ss1/cass_rmu.c"
RXP = "drivers/net/ethernet/hpe/ss1/cxi_rx_profile.c"
TEST_SVC = "drivers/net/ethernet/hpe/ss1/tests/test_service.c"


def test_driver_13_series_is_netns_then_exact_vni_overlap_then_pid_any_then_root():
    names = [os.path.basename(p) for p in _series("shs-cxi-driver", "release-shs-13.1.0")]
    assert len(names) == 5 and names[2] == DRV13_OVERLAP and names[3] == DRV13_PID_ANY, names
    assert names[4] == DRV_ROOT.replace("NNNN", "0005"), names
    subjects = [[l for l in _read(p).splitlines()[:8] if l.startswith("Subject: ")][0]
                for p in _series("shs-cxi-driver", "release-shs-13.1.0")]
    assert all(f"[PATCH {i}/5]" in s for i, s in enumerate(subjects, 1)), subjects
    text = _read(_series("shs-cxi-driver", "release-shs-13.1.0")[2])
    head = text.partition("\n---\n")[0]
    assert "Subject: [PATCH 3/5] cxi: allow two exact-VNI profiles to overlap" in head
    # the description says why (one service per pod), names the upstream rule and what stays refused
    flat = " ".join(head.split())
    assert "fd6adba" in flat and "EEXIST" in flat and "pod" in flat
    assert "range against range and range against exact VNI" in flat
    assert SIGNOFF in head.splitlines()
    # only the overlap test and the in-tree service test change
    assert set(_diffs(text)) == {RXTX, TEST_SVC}


def _after(text, path):
    """The lines of ``path`` that a patch's hunks leave (context and added), joined."""
    return "\n" + "\n".join("\n".join(l[1:] for l in h if l[:1] in (" ", "+"))
                            for h in _hunks(text, path)) + "\n"


def test_driver_13_pid_any_skips_pids_of_other_profiles_and_clears_the_chosen_pid():
    text = _read(os.path.join(PATCHES, "shs-cxi-driver", "release-shs-13.1.0", DRV13_PID_ANY))
    head = text.partition("\n---\n")[0]
    assert "Subject: [PATCH 4/5] cxi: choose any PID across all profiles of a VNI" in head
    flat = " ".join(head.split())
    assert "C_PID_ANY" in flat and "EEXIST" in flat and "pod" in flat and "ENOSPC" in flat
    assert "cxi_domain_reserve()" in flat  # says what stays as it was (reserved PIDs)
    assert SIGNOFF in head.splitlines()
    assert set(_diffs(text)) == {RMU, RXP, TEST_SVC,
                                 "drivers/net/ethernet/hpe/ss1/cxi_configuration.h"}
    rmu = _after(text, RMU)
    # the device-wide check walks the domain tree under the lock insert_domain() uses
    helper = re.search(r"\nbool cxi_domain_pids_in_use\(.*?\n\}\n", rmu, re.S)
    assert helper, "cxi_domain_pids_in_use() not added"
    h = helper.group(0)
    assert "spin_lock(&hw->domain_lock);" in h and "spin_unlock(&hw->domain_lock);" in h
    assert "hw->domain_tree.rb_node" in h
    # the error path clears the PID that was chosen, not the requested one (C_PID_ANY)
    removed = [l for hk in _hunks(text, RMU) for l in hk if l.startswith("-")]
    assert "-\tcxi_rx_profile_update_pid_table(rx_profile, pid, 1, false);" in removed
    assert re.search(r"free_pid:\n.*?if \(domain_pid >= 0\)\n"
                     r"\t\tcxi_rx_profile_update_pid_table\(rx_profile, domain_pid, 1,", rmu, re.S)
    # only C_PID_ANY retries after a lost race, a bounded number of times
    assert "if (rc == -EEXIST && pid == C_PID_ANY && --tries) {" in rmu
    # C_PID_ANY skips candidates in use on the VNI; explicit PIDs still meet insert_domain()
    rxp = _after(text, RXP)
    assert re.search(r"while \(pid == C_PID_ANY &&\n\s+new_pid \+ count < dev->prop.pid_count &&\n"
                     r"\s+cxi_domain_pids_in_use\(dev, vni, new_pid, count\)\)", rxp)
    test = "\n".join(_diffs(text)[TEST_SVC])
    assert "static int test_service_pid_any_across_profiles(struct cxi_dev *dev)" in test
    assert "rc = test_service_pid_any_across_profiles(dev);" in test
    assert "override_creds(cred)" in test and "revert_creds(old_cred)" in test


def _vni_overlap_test_body(source):
    m = re.search(r"\nint vni_overlap_test\(struct cxi_rxtx_profile \*profile1,\n\s+void \*user_arg\)\n"
                  r"\{\n(.*?)\n\}\n", source, re.S)
    assert m, "vni_overlap_test() not found"
    return m.group(1)


def test_driver_13_overlap_allowed_only_between_two_exact_vnis():
    text = _read(os.path.join(PATCHES, "shs-cxi-driver", "release-shs-13.1.0", DRV13_OVERLAP))
    hunks = _hunks(text, RXTX)
    assert len(hunks) == 1
    # the patched function, rebuilt from context and added lines
    after = "\n" + "\n".join(l[1:] for l in hunks[0] if l[:1] in (" ", "+")) + "\n"
    body = _vni_overlap_test_body(after)
    # VNI-0 placeholders (configfs) are still skipped, no overlap is still fine,
    # both exact (ignore == 0) is allowed, everything else stays -EEXIST
    assert "if (zero_vni(old))\n\t\treturn 0;" in body
    assert "if (!vni_overlap(old, new))\n\t\treturn 0;" in body
    assert "if (!old->ignore && !new->ignore)\n\t\treturn 0;" in body
    assert body.rstrip().endswith("return -EEXIST;")
    assert body.count("return 0;") == 3


ROOT_SERIES = [("release-shs-13.1.0", 5, 5), ("release-shs-14.0.0", 2, 2)]


def _root_patch(tagdir, n):
    return os.path.join(PATCHES, "shs-cxi-driver", tagdir, DRV_ROOT.replace("NNNN", f"{n:04d}"))


def _host_root_helper(header):
    m = re.search(r"\nstatic inline bool cxi_profile_host_root\(void\)\n\{\n(.*?)\n\}\n", header, re.S)
    assert m, "cxi_profile_host_root() not added"
    return m.group(1)


@pytest.mark.parametrize("tagdir,n,total", ROOT_SERIES)
def test_driver_root_patch_limits_implicit_profiles_to_the_initial_netns(tagdir, n, total):
    """Issue 13 §1: a container's root (global euid 0) got an implicit exact-VNI profile for
    any VNI without one.  The patch keeps that for root in init_net only, and makes root
    elsewhere match no UID entry (so not the UID-0 entry of an implicit profile either)."""
    text = _read(_root_patch(tagdir, n))
    head = text.partition("\n---\n")[0]
    assert (f"Subject: [PATCH {n}/{total}] cxi: give implicit profiles only to root in the "
            "initial\n network namespace") in head
    flat = " ".join(head.split())
    for words in ("container's root", "init_net", "-ENOENT", "kcxi", "cxi_valid_vni()",
                  "(uid_t)-1", "every traffic class"):
        assert words in flat, words
    assert SIGNOFF in head.splitlines()
    assert set(_diffs(text)) == {RXP, TXP, RXTX, RXTX_H}
    helper = _host_root_helper(_after(text, RXTX_H))
    # global euid 0 *and* the initial network namespace; an exiting task (no nsproxy) is not root
    assert "!__kuid_val(current_euid())" in helper and "nsproxy->net_ns == &init_net" in helper
    assert "nsproxy &&" in helper
    caller = re.search(r"static inline uid_t cxi_profile_caller_uid\(void\)\n\{\n(.*?)\n\}",
                       _after(text, RXTX_H), re.S).group(1)
    assert "if (!uid && !cxi_profile_host_root())\n\t\treturn (uid_t)-1;" in caller
    for path in (RXP, TXP):
        removed = [l for h in _hunks(text, path) for l in h if l.startswith("-")]
        after = _after(text, path)
        # the root test of the get function and the uid of the find function are replaced
        assert "-\tif (__kuid_val(current_euid())) {" in removed, path
        assert "\tif (!cxi_profile_host_root()) {" in after, path
        assert "-\tuid_t uid = __kuid_val(current_euid());" in removed, path
        assert "\tuid_t uid = cxi_profile_caller_uid();" in after, path
    assert "\t\t\t.uid = cxi_profile_caller_uid()," in _after(text, RXTX)  # cxi_valid_vni()


def test_driver_14_0_0_series_is_exact_vni_overlap_then_root():
    names = [os.path.basename(p) for p in _series("shs-cxi-driver", "release-shs-14.0.0")]
    assert names == ["0001-cxi-allow-two-exact-VNI-profiles-to-overlap.patch",
                     DRV_ROOT.replace("NNNN", "0002")], names
    text = _read(_series("shs-cxi-driver", "release-shs-14.0.0")[0])
    head = text.partition("\n---\n")[0]
    assert "Subject: [PATCH 1/2] cxi: allow two exact-VNI profiles to overlap" in head
    flat = " ".join(head.split())
    assert "fd6adba" in flat and "release/shs-14.0.1" in flat and "EEXIST" in flat
    assert set(_diffs(text)) == {RXTX, TEST_SVC}
    body = _vni_overlap_test_body(_after(text, RXTX))
    assert "if (!old->ignore && !new->ignore)\n\t\treturn 0;" in body
    assert body.rstrip().endswith("return -EEXIST;")


def _struct_fields(lines, name):
    text = "\n".join(lines)
    m = re.search(r"struct %s \{\n(.*?)\n\};" % name, text, re.S)
    assert m, f"struct {name} not added"
    fields = []
    for decl in m.group(1).split(";"):
        decl = decl.strip()
        if decl:
            fields.append(decl)
    return fields


def _lp64_layout(fields):
    """Offsets and size of a struct of enum/unsigned int/pointer fields on x86_64."""
    off, offs, align = 0, {}, 1
    for decl in fields:
        name = decl.split()[-1].lstrip("*")
        size = 8 if "*" in decl else 4
        off = (off + size - 1) // size * size
        offs[name] = off
        off += size
        align = max(align, size)
    return offs, (off + align - 1) // align * align


def test_driver_13_ops_84_85_with_shs14_layouts():
    text = "".join(_read(p) for p in _series("shs-cxi-driver", "release-shs-13.1.0"))
    hunks = _hunks(text, DRV13_ABI)
    ops = [h for h in hunks if any(l.strip() == "+\t\tCXI_OP_SVC_SET_NETNS," for l in h)]
    assert len(ops) == 1
    body = [l for l in ops[0] if re.match(r"^[ +]\s*CXI_OP_\w+,$", l)]
    names = [l[1:].strip().rstrip(",") for l in body]
    # CXI_OP_TRIG_CP_ALLOC is 83 in 13.1 (semantics §a.1): the new ops follow it directly
    i = names.index("CXI_OP_TRIG_CP_ALLOC")
    assert names[i + 1:i + 4] == ["CXI_OP_SVC_SET_NETNS", "CXI_OP_SVC_GET_NETNS", "CXI_OP_MAX"]
    added = _series_diffs("shs-cxi-driver", "release-shs-13.1.0")[DRV13_ABI]
    set_f = _struct_fields(added, "cxi_svc_set_netns_cmd")
    get_f = _struct_fields(added, "cxi_svc_get_netns_cmd")
    offs, size = _lp64_layout(set_f)
    assert (offs, size) == ({"op": 0, "svc_id": 4, "netns": 8}, 12)
    offs, size = _lp64_layout(get_f)
    assert (offs, size) == ({"op": 0, "resp": 8, "svc_id": 16}, 24)
    core = "\n".join(_series_diffs("shs-cxi-driver", "release-shs-13.1.0")
                     ["drivers/net/ethernet/hpe/ss1/cxi_user_core.c"])
    set_entry = re.search(r"\[CXI_OP_SVC_SET_NETNS\] = \{(.*?)\}", core, re.S).group(1)
    get_entry = re.search(r"\[CXI_OP_SVC_GET_NETNS\] = \{(.*?)\}", core, re.S).group(1)
    assert ".admin_only = true" in set_entry and "admin_only" not in get_entry


def test_libcxi_13_exports_set_get_netns_in_version_node_1_10():
    added = _series_diffs("shs-libcxi", "release-shs-13.1.0")
    sym = "\n".join(added["src/libcxi.sym"])
    assert re.search(r"LIBCXI_1\.10 \{\nglobal:\n\tcxil_svc_set_netns;\n\tcxil_svc_get_netns;\n\} LIBCXI_1\.9;", sym)
    hdr = "\n".join(added["include/libcxi.h"])
    assert re.search(r"int cxil_svc_set_netns\(struct cxil_dev \*dev, unsigned int svc_id,\s+unsigned int netns\);", hdr)
    assert re.search(r"int cxil_svc_get_netns\(struct cxil_dev \*dev, unsigned int svc_id,\s+unsigned int \*netns\);", hdr)
    src = "\n".join(added["src/libcxi.c"])
    assert ".op = CXI_OP_SVC_SET_NETNS" in src and ".op = CXI_OP_SVC_GET_NETNS" in src


@pytest.mark.parametrize("tagdir", ["release-shs-13.1.0", "release-shs-12.0.2"])
def test_cxi_service_parses_and_prints_netns_members(tagdir):
    added = _series_diffs("shs-libcxi", tagdir)
    tool = "\n".join(added["utils/cxi_service.c"])
    assert 'strcmp(val, "netns") == 0' in tool
    assert "CXI_SVC_MEMBER_NET_NS" in tool and "svc_member.netns" in tool
    assert '" netns=%u"' in tool
    tmpl = "\n".join(added["utils/cxi_service_template.yaml"])
    assert "'netns'" in tmpl and "type: netns" in tmpl
    man = "\n".join(added["man/cxi_service.7.md"])
    assert "CXI_SVC_MEMBER_NET_NS" in man
    if tagdir == "release-shs-12.0.2":
        assert "cxil_svc_set_netns" not in tool  # the 12.0.x kernel has no such op


# -- against the upstream snapshots, when present -----------------------------------
def _mirror(component):
    return os.path.join(MIRRORS, "HewlettPackard+" + component, "repo")


def _export(component, tag, paths, dest):
    """Write ``paths`` of ``tag`` into ``dest`` (a fresh export, no git metadata)."""
    raw = subprocess.run(["git", "--git-dir", _mirror(component), "archive", "--format=tar", tag, "--"]
                         + sorted(paths), check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        tf.extractall(dest)


def _enum_values(header_text, enum_name):
    m = re.search(r"enum %s \{(.*?)\};" % enum_name, header_text, re.S)
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    body = re.sub(r"//[^\n]*", "", body)
    values, nxt = {}, 0
    for item in (x.strip() for x in body.split(",")):
        if not item:
            continue
        name, _, val = item.partition("=")
        if val.strip():
            nxt = int(val.strip(), 0)
        values[name.strip()] = nxt
        nxt += 1
    return values


@pytest.mark.parametrize("component,tagdir", sorted(SERIES))
def test_series_applies_with_git_apply_check_on_its_tag(component, tagdir, tmp_path):
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    tag = tagdir.replace("release-", "release/", 1)
    if not os.path.isdir(_mirror(component)):
        pytest.skip(f"no upstream snapshot of HewlettPackard/{component} at {_mirror(component)} "
                    "(set PYCXI_UPSTREAM_MIRRORS); structure tests above still ran")
    if subprocess.run(["git", "--git-dir", _mirror(component), "rev-parse", "--verify", "-q",
                       tag + "^{commit}"], capture_output=True).returncode:
        pytest.skip(f"the snapshot of {component} has no tag {tag}")
    series = _series(component, tagdir)
    paths = set()
    for p in series:
        paths |= set(_diffs(_read(p)))
    tree = tmp_path / "tree"
    tree.mkdir()
    _export(component, tag, paths, tree)
    for p in series:
        chk = subprocess.run(["git", "apply", "--check", p], cwd=tree, capture_output=True, text=True)
        assert chk.returncode == 0, f"{os.path.basename(p)} does not apply to {tag}:\n{chk.stderr}"
        subprocess.run(["git", "apply", p], cwd=tree, check=True)
    if (component, tagdir) in (("shs-cxi-driver", t) for t, _, _ in ROOT_SERIES):
        for path in (RXP, TXP):
            src = (tree / path).read_text()
            # no root test on the euid alone is left; both profile kinds use the helpers
            assert "if (__kuid_val(current_euid())) {" not in src, path
            assert "if (!cxi_profile_host_root()) {" in src and "cxi_profile_caller_uid()" in src
        assert "__kuid_val(current_euid())" not in (tree / RXTX).read_text()
        _host_root_helper((tree / RXTX_H).read_text())
        body = _vni_overlap_test_body((tree / RXTX).read_text())
        assert "if (!old->ignore && !new->ignore)\n\t\treturn 0;" in body
    if component == "shs-cxi-driver" and tagdir != "release-shs-14.0.0":
        abi = (tree / (DRV13_ABI if "13.1" in tag else DRV12_ABI)).read_text()
        members = _enum_values(abi, "cxi_svc_member_type")
        assert members["CXI_SVC_MEMBER_NET_NS"] == 3 and members["CXI_SVC_MEMBER_MAX"] == 4
        if tagdir == "release-shs-13.1.0":
            body = _vni_overlap_test_body((tree / RXTX).read_text())
            assert "if (!old->ignore && !new->ignore)\n\t\treturn 0;" in body
            rmu = (tree / RMU).read_text()
            assert "cxi_rx_profile_update_pid_table(rx_profile, pid, 1, false);" not in rmu
            assert "\nbool cxi_domain_pids_in_use(struct cxi_dev *cdev, unsigned int vni," in rmu
            assert "cxi_domain_pids_in_use(dev, vni, new_pid, count)" in (tree / RXP).read_text()
        if SERIES[(component, tagdir)]["ops"]:
            ops = _enum_values(abi, "cxi_command_opcode")
            assert ops["CXI_OP_SVC_SET_NETNS"] == 84
            assert ops["CXI_OP_SVC_GET_NETNS"] == 85
            assert ops["CXI_OP_MAX"] == 86


def test_driver_12_has_no_implicit_root_profile(tmp_path):
    """Why 12.0.2 gets no root patch: its driver has no RX/TX profiles in the access path
    and no rule for root.  Domains (cass_rmu.c) and CPs (cass_cpt.c) are checked against
    the LNI's service only, and the LNI against the service's members (valid_svc_user(),
    the one place that reads the caller's euid for access).  Read from the tag itself."""
    comp, tag = "shs-cxi-driver", "release/shs-12.0.2"
    if not shutil.which("git") or not os.path.isdir(_mirror(comp)):
        pytest.skip(f"no upstream snapshot of HewlettPackard/{comp} at {_mirror(comp)}")
    git = ["git", "--git-dir", _mirror(comp)]
    grep = subprocess.run(git + ["grep", "-n", "-E", r"current_euid|current_uid|GLOBAL_ROOT_UID|uid_eq",
                                 tag, "--", "cxi/*.c", ":!cxi/tests"],
                          capture_output=True, text=True)
    hits = [l.split(":")[1] for l in grep.stdout.splitlines()]
    # the member check, and the Ethernet driver naming its own service's uid member
    assert sorted(set(hits)) == ["cxi/cass_svc.c", "cxi/cxi_eth_ops.c"], grep.stdout
    svc = subprocess.run(git + ["show", f"{tag}:cxi/cass_svc.c"], capture_output=True,
                         text=True, check=True).stdout
    fn = re.search(r"\nbool valid_svc_user\(const struct cxi_svc_priv \*svc_priv\)\n\{\n(.*?)\n\}\n",
                   svc, re.S).group(1)
    assert "current_euid()" in fn and "uid_eq(svc_euid, cur_euid)" in fn  # no root exception
    # no implicit profile: nothing allocates an RX/TX profile outside configfs/services
    grep = subprocess.run(git + ["grep", "-l", "-E", r"cxi_dev_get_(rx|tx)_profile\(", tag, "--", "cxi"],
                          capture_output=True, text=True)
    assert grep.stdout == "", grep.stdout
    for f, call in (("cxi/cass_cpt.c", "valid_svc_vni(svc_priv, vni_pcp)"),
                    ("cxi/cass_lni.c", "valid_svc_user(svc_priv)")):
        src = subprocess.run(git + ["show", f"{tag}:{f}"], capture_output=True, text=True,
                             check=True).stdout
        assert call in src, f

"""`pycxi` accepts HPE `cxi_service` usage: its commands, flags, template and defaults.

Real processes (the console entry point in a new interpreter) on the software device.
HPE's own template is read from the libcxi source tarball under $PYCXI_HPE_SRC when that is
set; otherwise (and always, too) a template written here with the same keys, values and
layout: options in front, `exclusive_cp: 1` with a VNI *list*, the range commented out, and
the `tc:` lines under a commented-out `tcs:` so that YAML puts them in the last member.
"""
import glob
import json
import os
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from coreutil import netns_inode_of, pycxi_cli
from test_core_cli import cli

# Our own words for upstream's cxi_service_template.yaml (same keys, values and shape).
HPE_LIKE_TEMPLATE = """\
# flags: 0 or 1
resource_limits: 1
restricted_members: 1
restricted_tcs: 1
exclusive_cp: 1

# types left out get max = res = 0
limits:
  - name: ACs
    max: 1
    res: 1
  - name: CTs
    max: 1
    res: 1
  - name: EQs
    max: 1
    res: 1
  - name: LEs
    max: 1
    res: 1
  - name: PTEs
    max: 1
    res: 1
  - name: TGQs
    max: 1
    res: 1
  - name: TXQs
    max: 1
    res: 1
  - name: TLEs
    max: 9
    res: 9

#vnis:
#  vni_min: 64
#  vni_max: 127

vnis:
  vni: 2
  vni: 3
  vni: 4
  vni: 5

members:
  - type: uid
    id: 1
  - type: gid
    id: 2
#tcs:
    tc: DEDICATED_ACCESS
    tc: LOW_LATENCY
    tc: BULK_DATA
    tc: BEST_EFFORT
"""

ALL_FOUR = ["DEDICATED_ACCESS", "LOW_LATENCY", "BULK_DATA", "BEST_EFFORT"]


def _templates():
    out = [("ours", HPE_LIKE_TEMPLATE)]
    src = os.environ.get("PYCXI_HPE_SRC")
    for tgz in sorted(glob.glob(os.path.join(src, "shs-libcxi-*.tar.gz")) if src else [])[-1:]:
        with tarfile.open(tgz) as t:
            m = next((m for m in t.getmembers()
                      if m.name.endswith("utils/cxi_service_template.yaml")), None)
            if m:
                out.append((os.path.basename(tgz), t.extractfile(m).read().decode()))
    return out


@pytest.mark.parametrize("name,text", _templates(), ids=[n for n, _ in _templates()])
def test_hpe_template_unchanged_creates_what_cxi_service_creates(sim_root, tmp_path, name, text):
    y = tmp_path / "cxi_service_template.yaml"
    y.write_text(text)
    rc, out, err = cli("create", "-y", str(y))
    assert rc == 0, err
    svc = int(out)
    assert f"Successfully created service: {svc}" in err
    info = json.loads(cli("list", "-s", str(svc), "--json")[1])[0]
    assert info["members"] == [{"type": "uid", "id": 1}, {"type": "gid", "id": 2}]
    assert info["vnis"] == [2, 3, 4, 5] and info["restricted_vnis"]
    # exclusive_cp applies to a range only (cxi_service ignores it for a list)
    assert info["vni_range"] is None and info["enabled"]
    assert info["restricted_tcs"] and sorted(info["tcs"]) == sorted(ALL_FOUR)
    assert info["limits"]["TLE"] == {"max": 9, "res": 9} and info["limits"]["AC"]["max"] == 1


def test_restricted_tcs_without_any_gets_all_four(sim_root, tmp_path):
    y = tmp_path / "svc.yaml"
    y.write_text("restricted_tcs: 1\nvnis:\n  vni: 77\n")
    rc, out, err = cli("create", "-y", str(y))
    assert rc == 0, err
    info = json.loads(cli("svc", "show", out.strip(), "--json")[1])
    assert info["restricted_tcs"] and sorted(info["tcs"]) == sorted(ALL_FOUR)
    # an allocation on each of them succeeds, as a member of the (unrestricted) service
    for tc in ALL_FOUR:
        r = pycxi_cli("access-check", "--svc", out.strip(), "--vni", "77", "--tc", tc)
        assert r.returncode == 0, r.stderr


def test_no_tc_flags_means_all_tcs(sim_root):
    rc, out, err = cli("svc", "create", "--vni", "78")
    assert rc == 0, err
    info = json.loads(cli("svc", "show", out.strip(), "--json")[1])
    assert not info["restricted_tcs"]
    assert pycxi_cli("access-check", "--svc", out.strip(), "--vni", "78",
                     "--tc", "BULK_DATA").returncode == 0


def test_hpe_commands_with_s_and_d_anywhere(sim_root):
    rc, out, err = cli("svc", "create", "--vni", "300")
    svc = out.strip()
    assert cli("disable", "-s", svc)[0] == 0
    assert json.loads(cli("list", "-s", svc, "--json")[1])[0]["enabled"] is False
    assert cli("-d", "cxi0", "enable", "-d", "0", "--svc-id", svc)[0] == 0
    assert json.loads(cli("svc", "show", "-s", svc, "--json", "-d", "cxi0")[1])["enabled"]
    rc, out, _ = cli("list", "-v", "-d", "cxi0")
    assert rc == 0 and out.startswith("cxi0\n") and f" ID: {svc}\n" in out
    rc, out, _ = cli("list", "-s", svc)
    assert rc == 0 and f" ID: {svc}\n" in out and " ID: 1 " not in out
    rc, _, err = cli("delete")
    assert rc == 2 and "needs a service ID" in err and "Traceback" not in err
    rc, _, err = cli("delete", "-s", "1")
    assert rc == 2 and "Default service cannot be deleted" in err
    rc, _, err = cli("create", "-y", "/nonexistent.yaml", "-s", svc)
    assert rc == 2 and "incompatible with -s" in err
    rc, _, err = cli("delete", "5", "-s", "6")
    assert rc == 2 and "two service IDs" in err
    assert cli("delete", "-s", svc)[0] == 0
    assert [s["svc_id"] for s in json.loads(cli("list", "--json")[1])] == [1]


def test_device_by_number(sim_root):
    assert cli("sim", "reset", "--devices", "2")[0] == 0
    rc, out, err = cli("-d", "1", "svc", "create", "--vni", "42")
    assert rc == 0, err
    on1 = json.loads(cli("list", "-d", "1", "--json")[1])
    on0 = json.loads(cli("list", "-d", "cxi0", "--json")[1])
    assert [s["svc_id"] for s in on1] == [1, int(out)] and [s["svc_id"] for s in on0] == [1]
    rc, _, err = cli("list", "-d", "eth0")
    assert rc == 2 and "invalid device 'eth0'" in err
    rc, _, err = cli("list", "-d", "7")
    assert rc == 1 and "ENOENT" in err and "cxi7" in err


def test_netns_range_service_built_by_the_library(sim_root, netns_factory, tmp_path):
    """A netns member + a VNI range + exclusive_cp from YAML: Device.alloc_netns_svc makes it."""
    ns = netns_factory()
    ino = netns_inode_of(ns)
    y = tmp_path / "svc.yaml"
    y.write_text(f"exclusive_cp: 1\nvnis:\n  vni_min: 128\n  vni_max: 191\n"
                 f"members:\n  - type: netns\n    id: {ino}\n")
    rc, out, err = cli("create", "-y", str(y))
    assert rc == 0, err
    info = json.loads(cli("svc", "show", out.strip(), "--json")[1])
    assert info["vni_range"] == [128, 191] and info["exclusive_cp"] and info["enabled"]
    assert info["netns"] == [ino]
    assert pycxi_cli("access-check", "--svc", out.strip(), "--vni", "150", netns=ns).returncode == 0
    assert pycxi_cli("access-check", "--svc", out.strip(), "--vni", "150").returncode != 0


def test_alloc_netns_svc_range_rolls_back(dev):
    """A range that cannot be set destroys the half-made service (library, both methods)."""
    import pycxi

    before = [d.svc_id for d in dev.svc_list()]
    for method in sorted(pycxi.NETNS_METHODS):
        with pytest.raises(pycxi.CxiUserError):
            dev.alloc_netns_svc(pycxi.netns_inode(), vni_range=(100, 130), method=method)
        with pytest.raises(pycxi.CxiLibError):  # 0xFFFFFFFF is no namespace: set_netns/alloc fails
            dev.alloc_netns_svc(0xFFFFFFFF, vni_range=(256, 319), method=method)
        assert [d.svc_id for d in dev.svc_list()] == before
    with pytest.raises(pycxi.CxiUserError, match="either VNIs or a VNI range"):
        dev.alloc_netns_svc(pycxi.netns_inode(), [5], vni_range=(256, 319))


def test_vni_controller_passes_its_flags_through():
    rc, out, err = cli("vni", "controller", "--ranges", "1-2", "--help")
    assert rc == 0, err
    assert "python -m pycxi.vni.controller" in out and "--metrics-port" in out
    rc, out, err = cli("-d", "cxi0", "vni", "controller", "--no-such-flag")
    assert rc == 2 and "unrecognized arguments: --no-such-flag" in err
    assert "python -m pycxi.vni.controller" in err


# -- cxi_service's -l, --dry-run and underscore spellings ------------------------------------
def _svcs():
    return {s["svc_id"]: s for s in json.loads(cli("list", "--json")[1])}


def test_lnis_per_rgid_on_create_and_update(sim_root, tmp_path):
    y = tmp_path / "svc.yaml"
    y.write_text("vnis:\n  vni: 500\n")
    rc, out, err = cli("create", "--yaml_file", str(y), "-l", "4")
    assert rc == 0, err
    svc = int(out)
    assert _svcs()[svc]["lnis_per_rgid"] == 4
    rc, out, err = cli("svc", "create", "--vni-range", "64-127", "--lnis_per_rgid", "2")
    assert rc == 0, err
    assert _svcs()[int(out)]["lnis_per_rgid"] == 2 and _svcs()[int(out)]["vni_range"] == [64, 127]
    # cxi_service 12.0's `update -s ID -l N`; with --dry-run nothing changes
    rc, out, err = cli("update", "--svc_id", str(svc), "-l", "6", "--dry_run")
    assert rc == 0, err
    shown = json.loads(out)
    assert (shown["original"]["lnis_per_rgid"], shown["updated"]["lnis_per_rgid"]) == (4, 6)
    assert _svcs()[svc]["lnis_per_rgid"] == 4
    assert cli("update", "-s", str(svc), "-l", "6")[0] == 0
    assert _svcs()[svc]["lnis_per_rgid"] == 6
    # N >= 1 (as cxi_service); what the device refuses destroys the new service again
    before = _svcs()
    rc, _, err = cli("create", "-y", str(y), "-l", "0")
    assert rc == 2 and "at least 1" in err
    rc, _, err = cli("create", "-y", str(y), "-l", "9")
    assert rc == 1 and "cxil_set_svc_lpr" in err and "EINVAL" in err
    assert _svcs() == before


def test_dry_run_spellings_create_nothing(sim_root, tmp_path):
    y = tmp_path / "svc.yaml"
    y.write_text("restricted_members: 1\nvnis:\n  vni: 7\nmembers:\n  - type: uid\n    id: 9\n")
    before = _svcs()
    for flag in ("-D", "--dry-run", "--dry_run"):
        rc, out, err = cli("create", flag, "--yaml-file", str(y))
        assert rc == 0, err
        plan = json.loads(out)
        assert plan["vnis"] == [7] and plan["members"] == [{"type": "uid", "id": 9}]
        assert "not created on cxi0" in err
    # an invalid request fails the dry run with the error a real create gives
    bad = tmp_path / "bad.yaml"
    bad.write_text("vnis:\n  vni_min: 64\n  vni_max: 100\n")
    assert cli("create", "-D", "-y", str(bad))[:3:2] == cli("create", "-y", str(bad))[:3:2]
    assert cli("create", "-D", "-y", str(bad))[0] == 2
    assert _svcs() == before


def test_version_and_verbose_anywhere(sim_root):
    rc, out, _ = cli("list", "-V")
    assert rc == 0 and out.startswith("pycxi ")
    rc, out, err = cli("create", "--vni", "12", "-v")
    assert rc == 0 and out.strip().isdigit()
    assert f" ID: {out.strip()}\n" in err and "VNIs               : 12" in err


def test_update_from_yaml_keeps_limits(sim_root, tmp_path):
    rc, out, err = cli("svc", "create", "--vni", "20", "--limit", "AC=3:1")
    assert rc == 0, err
    svc = out.strip()
    y = tmp_path / "upd.yaml"
    y.write_text("restricted_members: 1\nrestricted_tcs: 1\nvnis:\n  vni: 21\n  vni: 22\n"
                 "members:\n  - type: gid\n    id: 44\n")
    assert cli("update", "-s", svc, "-y", str(y), "--dry-run")[0] == 0
    assert _svcs()[int(svc)]["vnis"] == [20]
    rc, _, err = cli("update", "-s", svc, "-y", str(y))
    assert rc == 0, err
    info = _svcs()[int(svc)]
    assert info["vnis"] == [21, 22] and info["members"] == [{"type": "gid", "id": 44}]
    assert info["restricted_tcs"] and sorted(info["tcs"]) == sorted(ALL_FOUR)
    assert info["limits"]["AC"] == {"max": 3, "res": 1}
    rc, _, err = cli("update", "-s", svc)
    assert rc == 2 and "needs something to change" in err


# The dry run's output is the service a real create makes (as `svc show --json` reports it).
_spec = st.fixed_dictionaries({
    "vni": st.one_of(st.lists(st.integers(1, 4000), min_size=1, max_size=5, unique=True),
                     st.sampled_from([(64, 127), (256, 256), (100, 131), (1024, 2047)])),
    "uid": st.lists(st.integers(0, 70000), max_size=2),
    "gid": st.lists(st.integers(0, 70000), max_size=2),
    "tc": st.lists(st.sampled_from(ALL_FOUR), max_size=2, unique=True),
    "limit": st.dictionaries(st.sampled_from(["ACs", "LEs", "TLEs", "PTEs"]),
                             st.tuples(st.integers(0, 40), st.integers(0, 4)), max_size=2),
    "lpr": st.one_of(st.none(), st.integers(1, 8)),
    "exclusive_cp": st.booleans(),
})


def _run_main(argv):
    import contextlib
    import io

    from pycxi.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_spec)
def test_dry_run_is_what_create_makes(sim_root, spec):
    argv = ["create"]
    if isinstance(spec["vni"], tuple):
        argv += ["--vni-range", "%d-%d" % spec["vni"]]
    else:
        for v in spec["vni"]:
            argv += ["--vni", str(v)]
    for k in ("uid", "gid", "tc"):
        for v in spec[k]:
            argv += [f"--{k}", str(v)]
    for name, (mx, res) in spec["limit"].items():
        argv += ["--limit", f"{name}={mx}:{res}"]
    if spec["lpr"] is not None:
        argv += ["-l", str(spec["lpr"])]
    if spec["exclusive_cp"]:
        argv += ["--exclusive-cp"]
    before = _run_main(["list", "--json"])[1]
    assert [s["svc_id"] for s in json.loads(before)] == [1]
    drc, dout, derr = _run_main(argv + ["--dry-run"])
    assert _run_main(["list", "--json"])[1] == before
    rc, out, err = _run_main(argv)
    if drc != 0:  # what the dry run refuses, create refuses the same way
        assert (rc, err) == (drc, derr) and _run_main(["list", "--json"])[1] == before
        return
    if rc == 1:  # the device's own rules (free resources, duplicate members): it refuses,
        # and nothing is left behind
        assert err.startswith("pycxi: cxil_") and _run_main(["list", "--json"])[1] == before
        return
    assert rc == 0, err
    svc = int(out)
    try:
        made = json.loads(_run_main(["svc", "show", str(svc), "--json"])[1])
    finally:
        assert _run_main(["delete", "-s", str(svc)])[0] == 0
    plan = json.loads(dout)
    if plan["lnis_per_rgid"] is None:
        plan["lnis_per_rgid"] = 1  # the device's default
    if not plan["restricted_vnis"]:
        del plan["vnis"]  # a range service's descriptor holds no VNI list
    if plan["limits"] is None:
        del plan["limits"]  # no resource limits: the device's totals
    else:  # the device's rule, not the request's: a TLE pool reserves at least 8, max = res
        want, got = plan["limits"].pop("TLE"), made["limits"].pop("TLE")
        assert got["res"] >= want["res"] and got["max"] == got["res"]
    for k, v in plan.items():
        assert made[k] == v, (k, v, made[k])

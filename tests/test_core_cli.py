"""The `pycxi` command: the contract other checks (CNI tests, the demo) rely on."""
import json
import subprocess
import sys

import pytest

from coreutil import netns_inode_of, pycxi_cli

TEMPLATE = """\
resource_limits: 1
restricted_members: 1
restricted_vnis: 1
restricted_tcs: 1
limits:
  - name: ACs
    max: 1
    res: 1
  - name: TLEs
    max: 0
    res: 0
  - name: PTEs
    max: 4
    res: 2
vnis:
  vni: 2000
  vni: 2001
members:
  - type: netns
    id: {netns}
tcs:
  tc: BEST_EFFORT
  tc: LOW_LATENCY
"""


def cli(*args):
    """Run the real console entry point in a new interpreter (exit code, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "pycxi.cli", *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def test_create_from_hpe_yaml_with_a_netns_member(sim_root, tmp_path, netns_factory):
    ns = netns_factory()
    ino = netns_inode_of(ns)
    y = tmp_path / "svc.yaml"
    y.write_text(TEMPLATE.format(netns=ino))
    rc, out, err = cli("svc", "create", "--yaml", str(y))
    assert rc == 0, err
    svc = int(out)
    rc, out, err = cli("svc", "show", str(svc), "--json")
    info = json.loads(out)
    for key in ("svc_id", "enabled", "restricted_members", "members", "restricted_vnis", "vnis",
                "restricted_tcs", "tcs", "resource_limits", "limits", "netns", "vni_range"):
        assert key in info
    assert info["svc_id"] == svc and info["enabled"]
    assert info["members"] == [{"type": "netns", "id": ino}] and info["netns"] == [ino]
    assert info["vnis"] == [2000, 2001] and info["vni_range"] is None
    assert info["tcs"] == ["LOW_LATENCY", "BEST_EFFORT"]
    assert info["limits"]["PTE"] == {"max": 4, "res": 2} and info["limits"]["AC"]["res"] == 1
    assert pycxi_cli("access-check", "--svc", str(svc), "--vni", "2000", netns=ns).returncode == 0
    rc, _, err = cli("access-check", "--svc", str(svc), "--vni", "2000")
    assert rc != 0 and "EPERM" in err and "Traceback" not in err


def test_yaml_errors_are_one_line_and_create_nothing(sim_root, tmp_path):
    bad = {
        "netns plus uid": TEMPLATE.format(netns=5).replace(
            "members:\n", "members:\n  - type: uid\n    id: 7\n"),
        "five vnis": "vnis:\n  vni: 2\n  vni: 3\n  vni: 4\n  vni: 5\n  vni: 6\n",
        "unknown key": "colour: blue\n",
        "bad member": "members:\n  - type: pid\n    id: 1\n",
        "list and range": "vnis:\n  vni: 2\n  vni_min: 16\n  vni_max: 31\n",
        "netns unrestricted": "restricted_members: 0\nvnis:\n  vni: 5\nmembers:\n  - type: netns\n    id: 5\n",
    }
    for what, text in bad.items():
        y = tmp_path / "bad.yaml"
        y.write_text(text)
        rc, out, err = cli("svc", "create", "-y", str(y))
        assert rc != 0, what
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (what, err)
    rc, out, _ = cli("svc", "list", "--json")
    assert [s["svc_id"] for s in json.loads(out)] == [1]


def test_range_service_with_netns_gets_the_range_first(sim_root, netns_factory):
    """cxi_service binds the netns before the range, so the range profiles admit nobody
    (c.4); pycxi sets the range first and enables the service."""
    ns = netns_factory()
    rc, out, err = cli("svc", "create", "--vni-range", "64-127", "--netns", f"/run/netns/{ns}",
                       "--netns-method", "set_netns", "--limit", "TLE=0:0")
    assert rc == 0, err
    svc = int(out)
    info = json.loads(cli("svc", "show", str(svc), "--json")[1])
    assert info["vni_range"] == [64, 127] and info["enabled"]
    assert pycxi_cli("access-check", "--svc", str(svc), "--vni", "100", netns=ns).returncode == 0


def test_flags_delete_enable_and_errors(sim_root):
    rc, out, err = cli("svc", "create", "--vni", "300", "--uid", "1000", "--limit", "TLE=0:0")
    svc = int(out)
    assert cli("svc", "disable", str(svc))[0] == 0
    assert json.loads(cli("svc", "show", str(svc), "--json")[1])["enabled"] is False
    assert cli("svc", "enable", str(svc))[0] == 0
    rc, out, err = cli("svc", "delete", "1")
    assert rc != 0 and "Default service cannot be deleted" in err
    rc, out, err = cli("svc", "show", "77")
    assert rc == 1 and err.strip() == "pycxi: cxil_get_svc: Invalid argument (EINVAL): svc_id 77"
    rc, out, err = cli("svc", "create", "--vni", "0")
    assert rc == 2 and "VNI 0" in err
    rc, out, err = cli("-d", "cxi9", "svc", "list")
    assert rc == 1 and "ENOENT" in err
    assert cli("svc", "delete", str(svc))[0] == 0
    rc, out, _ = cli("svc", "rsrc", "--json")
    assert [u["svc_id"] for u in json.loads(out)] == [1]


def test_tle_pool_exhaustion_names_the_pool(sim_root):
    for vni in (400, 401, 402):
        assert cli("svc", "create", "--vni", str(vni))[0] == 0
    rc, out, err = cli("svc", "create", "--vni", "403")
    assert rc == 1 and "ENOSPC" in err and "no TLE pools" in err


def test_sim_status_and_reset(sim_root):
    rc, out, err = cli("sim", "reset", "--devices", "2")
    assert rc == 0
    status = json.loads(cli("sim", "status", "--json", "--check")[1])
    assert sorted(status["devices"]) == ["cxi0", "cxi1"]
    assert status["devices"]["cxi1"]["consistent"] and status["devices"]["cxi0"]["services"] == 1


def test_version_names_the_backend():
    rc, out, _ = cli("-V")
    assert rc == 0 and "sim" in out and "set_netns" in out


def test_vni_manifests_are_printable_for_pip_users():
    import yaml

    rc, out, _ = cli("vni", "manifests", "--servicemonitor", "--image", "example.org/pycxi:1")
    assert rc == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceMonitor"} <= kinds
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "example.org/pycxi:1"

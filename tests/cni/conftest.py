"""Fixtures for the cxi CNI plugin tests (the helpers live in cniutil.py, which the test modules
import by that name: a module named ``conftest`` is ambiguous when the whole suite runs)."""
import os
import shutil
import subprocess
import sys

import pytest

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from cniutil import (DEBIAN_CNI, HERE, PY, REPO, CniTool, Netns, _core_ready,  # noqa: E402,F401
                     sim_reset, write_node_conf)
# REPO is re-exported on purpose: a test elsewhere doing ``from conftest import REPO`` gets
# whichever conftest module pytest loaded last, possibly this one.


@pytest.fixture
def sim(tmp_path, monkeypatch):
    """A fresh software CXI device set (2 NICs) under a per-test PYCXI_SIM_ROOT."""
    if not _core_ready():
        pytest.skip("pycxi core (pycxi.Device) not built")
    root = tmp_path / "sim"
    root.mkdir()
    monkeypatch.setenv("PYCXI_SIM_ROOT", str(root))
    p = sim_reset(2, dict(os.environ))
    assert p.returncode == 0, p.stderr
    return root


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for network namespaces")
    ns = Netns()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory):
    """A CNI bin dir holding the installed ``cxi`` launcher (shebang: this venv's python -IS)."""
    from pycxi.cni import install
    d = tmp_path_factory.mktemp("cni-bin")
    install.install_launcher(str(d), python=PY)
    # the test-only interface plugin, with this interpreter in its shebang
    with open(os.path.join(HERE, "bin", "vethplug")) as f:
        body = f.read().split("\n", 1)[1]
    veth = os.path.join(str(d), "vethplug")
    with open(veth, "w") as f:
        f.write(f"#!{PY} -IS\n" + body)
    os.chmod(veth, 0o755)
    return str(d)



@pytest.fixture
def cni_env(tmp_path, sim, cni_bin):
    """Everything a plugin call needs: paths, data dirs, the env passed to plugins."""
    class E:
        pass
    e = E()
    e.tmp = tmp_path
    e.bin = cni_bin
    e.data_dir = str(tmp_path / "cxi-state")
    e.ipam_dir = str(tmp_path / "ipam")
    e.cache_dir = str(tmp_path / "cni-cache")
    e.path = [cni_bin, DEBIAN_CNI]
    # the node's policy (pycxi.cni.policy): static VNIs below 5000, the local allocator above,
    # the stand-in API server's kubeconfig; tests of the policy itself write their own
    e.vni_db = str(tmp_path / "vni.db")
    e.kubeconfig = str(tmp_path / "kubeconfig.json")
    e.node_conf = write_node_conf(tmp_path / "cni-policy.json", {
        "staticVnis": [[1, 4999]],
        "localAllocator": {"path": e.vni_db, "ranges": [[5000, 65535]], "quarantine": 0},
        "kubernetes": {"kubeconfig": e.kubeconfig}, "logDir": str(tmp_path)})
    e.env = {"PYCXI_SIM_ROOT": os.environ["PYCXI_SIM_ROOT"], "PYCXI_CNI_POLICY": e.node_conf}
    return e


@pytest.fixture
def tool_factory(cni_env):
    def make(host_ns=None, timeout=60):
        prefix = ["ip", "netns", "exec", host_ns] if host_ns else []
        return CniTool(cni_env.path, cni_env.cache_dir, exec_prefix=prefix,
                       extra_env=cni_env.env, timeout=timeout)
    return make


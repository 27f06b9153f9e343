"""Shared fixtures: a private software-device root per test, real network namespaces.

Everything here runs against pycxi's software CXI device (no NIC on CI machines);
tests marked ``hw`` need a real Slingshot NIC and are skipped without one.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    # Never touch the machine's default /run/pycxi-sim: every run gets its own root,
    # readable by all so that tests can drop privileges.
    if not os.environ.get("PYCXI_TEST_KEEP_ROOT"):
        root = tempfile.mkdtemp(prefix="pycxi-sim-session-", dir="/tmp")
        os.chmod(root, 0o755)
        os.environ["PYCXI_SIM_ROOT"] = root
        config._pycxi_session_root = root


def pytest_unconfigure(config):
    root = getattr(config, "_pycxi_session_root", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    skip_hw = pytest.mark.skip(reason="needs a real Slingshot NIC (run with a libcxi build on hardware)")
    for item in items:
        if "hw" in item.keywords:
            import pycxi

            if pycxi.BACKEND != "libcxi":
                item.add_marker(skip_hw)


@pytest.fixture
def sim_root(monkeypatch):
    """A fresh software-device root with one device, removed afterwards."""
    import pycxi.device as device

    root = tempfile.mkdtemp(prefix="pycxi-sim-", dir="/tmp")
    os.chmod(root, 0o755)
    monkeypatch.setenv("PYCXI_SIM_ROOT", root)
    device.sim_reset(1)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dev(sim_root):
    import pycxi

    with pycxi.Device(0) as d:
        yield d


@pytest.fixture
def netns_factory():
    """Create named network namespaces (`ip netns add`), always removed afterwards."""
    made = []

    def make():
        name = f"pycxit-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)

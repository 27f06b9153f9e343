"""The README's first command: the whole flow (scripts/demo.py, which scripts/demo.sh runs
after setting up the venv) passes on the software NIC and leaves nothing behind."""
import os
import subprocess
import sys

import pytest

from coreutil import REPO


@pytest.mark.skipif(not os.access("/usr/lib/cni/bridge", os.X_OK),
                    reason="Debian's containernetworking-plugins are not installed")
def test_demo_passes_and_cleans_up():
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    env = {k: v for k, v in os.environ.items() if k != "PYCXI_SIM_ROOT"}
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "demo.py"), "--no-color"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "all expectations met" in r.stdout
    assert r.stdout.count("allowed") >= 4 and "FAILED" not in r.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pycxi-demo" not in after and after == before

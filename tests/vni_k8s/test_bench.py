"""The controller benchmark runs end to end, for the controller and for kopf's floor
(benchmarks/kopf_floor.py), so that the committed report's comparison cannot break
unnoticed.  Small bursts: this checks the benchmark's plumbing, not speed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("controller", ["pycxi.vni.controller", "benchmarks.kopf_floor"])
def test_a_small_burst_is_allocated_and_released(controller):
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_controller.py"),
                        "--jobs", "40", "--threads", "4", "--timeout", "120",
                        "--controller", controller],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["controller"] == controller
    assert r["allocated"] == 40 and r["released"] == 40 and r["unique_vnis"]
    by_verb = r["allocation_phase"]["api_requests_by_verb"]
    assert by_verb["bench POST jobs"] == 40
    # both make the same writes: the key record and the Vni; on release the record's
    # delete and the Vni's status
    assert by_verb["ctl POST vnis"] == 40 and by_verb["ctl POST leases"] == 40
    rel = r["release_phase"]["api_requests_by_verb"]
    assert rel["ctl DELETE leases"] == 40 and rel["ctl PATCH vnis/status"] == 40

"""Benchmark: N annotated Jobs created at once -> time until each has a VNI.

The API server is kmock's emulator (tests/vni_k8s/fakeapi.py) on 127.0.0.1, in this
process; the controller is ``python -m pycxi.vni.controller`` in a subprocess, as in
production.  A Job's latency is ``spec.allocatedAt`` of its ``Vni`` object (the
controller's clock) minus the moment its create returned (ours; same machine).

    python benchmarks/bench_controller.py [--quick] [--jobs N] [--replicas R]

Prints one JSON object.  Caveat: the fake API server is single-threaded Python
(~500-1000 requests/s here); a real kube-apiserver is faster, so these figures are an
upper bound set largely by the fake.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vni_k8s"))


def percentile(xs: List[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run(jobs: int, replicas: int, threads: int, timeout: float) -> Dict[str, object]:
    from fakeapi import FakeApiServer, write_kubeconfig

    from pycxi.vni.kstore import parse_time
    from pycxi.vni.kube import KubeClient, KubeConfig

    tmp = tempfile.mkdtemp(prefix="bench-vni-")
    procs: List[subprocess.Popen] = []
    with FakeApiServer() as srv:
        kc = write_kubeconfig(os.path.join(tmp, "kubeconfig.json"), srv.url)
        client = KubeClient(KubeConfig.load(kc), timeout=30)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        try:
            for r in range(replicas):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "pycxi.vni.controller", "--kubeconfig", kc,
                     "--metrics-port", "0", "--resync", "30", "--log-format", "plain",
                     "--no-leader-election"],
                    env=dict(env, POD_NAME=f"bench-{r}"),
                    stdout=open(os.path.join(tmp, f"ctl{r}.log"), "wb"), stderr=subprocess.STDOUT))
            # ready when the controller has handled a probe Job
            probe = client.create("/apis/batch/v1/namespaces/bench/jobs", {
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "probe", "annotations": {"vni.pycxi.dev/vni": "true"}}})
            t_ready = time.monotonic() + 60
            while not client.list("/apis/vni.pycxi.dev/v1alpha1/vnis"):
                if time.monotonic() > t_ready:
                    raise RuntimeError("controller did not start")
                time.sleep(0.05)
            created: Dict[str, float] = {}
            lock = threading.Lock()

            def creator(idx: List[int]) -> None:
                for i in idx:
                    client.create("/apis/batch/v1/namespaces/bench/jobs", {
                        "apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": f"job-{i}",
                                     "annotations": {"vni.pycxi.dev/vni": "true"}},
                        "spec": {"template": {"metadata": {"annotations": {
                            "vni.pycxi.dev/vni": "true"}}}}})
                    with lock:
                        created[f"job-{i}"] = time.time()

            t0 = time.time()
            ts = [threading.Thread(target=creator, args=(list(range(t, jobs, threads)),))
                  for t in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            t_created = time.time()
            deadline = time.monotonic() + timeout
            done: Dict[str, float] = {}
            while True:
                objs = client.list("/apis/vni.pycxi.dev/v1alpha1/vnis")
                done = {o["spec"]["holder"]["name"]: parse_time(o["spec"].get("allocatedAt")) or 0.0
                        for o in objs if o["spec"].get("holder", {}).get("name", "").startswith("job-")}
                if len(done) >= jobs or time.monotonic() > deadline:
                    break
                # a LIST of all Vni objects is heavy for the single-threaded fake; the
                # latencies come from spec.allocatedAt, not from this polling
                time.sleep(0.5)
            t_all = max(done.values()) if done else float("nan")
            lat = [done[n] - created[n] for n in done if n in created]
            vnis = [o["spec"]["vni"] for o in objs]
            return {
                "benchmark": "controller_1000_jobs" if jobs == 1000 else f"controller_{jobs}_jobs",
                "jobs": jobs, "replicas": replicas, "allocated": len(done),
                "unique_vnis": len(set(vnis)) == len(vnis),
                "create_seconds": round(t_created - t0, 3),
                "all_allocated_seconds": round(t_all - t0, 3),
                "latency_p50_seconds": round(percentile(lat, 50), 3),
                "latency_p99_seconds": round(percentile(lat, 99), 3),
                "latency_max_seconds": round(max(lat), 3) if lat else None,
                "latency_mean_seconds": round(statistics.mean(lat), 3) if lat else None,
                "throughput_jobs_per_second": round(len(done) / max(1e-9, t_all - t0), 1),
                "api_requests": len(srv.kube._requests) if srv.kube else None,
                "api_server": "kmock 0.8 emulator (tests/vni_k8s/fakeapi.py), in-process",
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
            }
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 jobs instead of 1,000")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=8, help="concurrent creators")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    jobs = args.jobs or (200 if args.quick else 1000)
    result = run(jobs, args.replicas, args.threads, args.timeout)
    print(json.dumps(result, indent=2))
    return 0 if result["allocated"] == jobs and result["unique_vnis"] else 1


if __name__ == "__main__":
    sys.exit(main())

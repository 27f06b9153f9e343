"""Benchmark: N annotated Jobs created at once -> time until each has a VNI; then all
deleted -> time until each VNI is in quarantine.

The API server is the fake of tests/vni_k8s/fakeapi.py on 127.0.0.1, in this
process, in its own thread; the controller is ``python -m pycxi.vni.controller`` in a
subprocess, as in production; the Jobs are created and deleted by a third process (8
threads), so that no client competes with the fake API for its GIL.  A Job's allocation
latency is ``spec.allocatedAt`` of its ``Vni`` object (the controller's clock) minus the
moment its create returned (the load generator's; same machine); its release latency is
``status.releasedAt`` minus the moment its delete returned.  Progress comes from a
listener on the fake's writes, so that waiting costs the API server nothing (polling its
memory was O(objects) per look: quadratic at 10,000 Jobs).

    python benchmarks/bench_controller.py [--quick] [--jobs N] [--replicas R] [--repeat K]

Prints one JSON object (with ``--repeat``: the median of each number over K runs, and the
runs).  The fake API server is single-threaded Python: its own CPU time (the
``fake_api_cpu_seconds`` fields, from /proc) is reported next to the controller's, with
the requests of each phase by client and verb, so that the controller's share is
visible; a real kube-apiserver is much faster.  ``--controller MODULE`` runs another
controller module (e.g. a patched copy on $PYTHONPATH) for comparisons.
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
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vni_k8s"))

JOBS = "/apis/batch/v1/namespaces/bench/jobs"
ANN = {"vni.pycxi.dev/vni": "true"}


def percentile(xs: List[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _cpu(pid: int, tid: Optional[int] = None) -> float:
    """utime + stime of a process (or one of its threads), seconds."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _requests_by_verb(srv, start: int = 0, end: Optional[int] = None) -> Dict[str, int]:
    """API requests served in [start, end), by client, method and resource: what each
    phase cost the API server ("ctl": the controller's own client, "kopf": its watches,
    "bench": this script's creates and deletes)."""
    counts: Dict[str, int] = {}
    for r in list(srv.kube._requests[start:end]):
        ua = (r.headers or {}).get("User-Agent", "")
        who = "ctl" if ua.startswith("pycxi-vni-controller") else "bench" if ua.startswith("pycxi") else "kopf"
        what = r.resource.plural if r.resource is not None else r.url.path
        if r.subresource:
            what += "/" + r.subresource
        verb = "WATCH" if (r.params or {}).get("watch") == "true" else r.method.value.upper()
        k = f"{who} {verb} {what}"
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _stats(lat: List[float]) -> Dict[str, Optional[float]]:
    return {"p50_seconds": round(percentile(lat, 50), 3), "p99_seconds": round(percentile(lat, 99), 3),
            "max_seconds": round(max(lat), 3) if lat else None,
            "mean_seconds": round(statistics.mean(lat), 3) if lat else None}


def _parallel(fn, items: List[int], threads: int) -> None:
    ts = [threading.Thread(target=lambda part=items[t::threads]: [fn(i) for i in part])
          for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def load(kubeconfig: str, op: str, jobs: int, threads: int) -> None:
    """The load generator, in a process of its own (``--load``): in the API server's
    process its threads would compete with it for the GIL, which no real client does.
    Prints "ready", waits for a line on stdin, then creates or deletes the Jobs and
    prints {name: time the request returned} as JSON."""
    from pycxi.vni.kube import KubeClient, KubeConfig

    client = KubeClient(KubeConfig.load(kubeconfig), timeout=60)
    done: Dict[str, float] = {}

    def create(i: int) -> None:
        client.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                             "metadata": {"name": f"job-{i}", "annotations": ANN},
                             "spec": {"template": {"metadata": {"annotations": ANN}}}})
        done[f"job-{i}"] = time.time()

    def delete(i: int) -> None:
        client.delete(f"{JOBS}/job-{i}")
        done[f"job-{i}"] = time.time()

    print("ready", flush=True)
    sys.stdin.readline()
    _parallel(create if op == "create" else delete, list(range(jobs)), threads)
    print(json.dumps(done), flush=True)


class _Load:
    """A started load generator, waiting for :meth:`go`."""

    def __init__(self, kubeconfig: str, op: str, jobs: int, threads: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--load", op, "--kubeconfig", kubeconfig,
             "--jobs", str(jobs), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("load generator did not start")

    def go(self) -> Dict[str, float]:
        out, _ = self.proc.communicate("go\n")
        if self.proc.returncode:
            raise RuntimeError(f"load generator failed ({self.proc.returncode})")
        return json.loads(out)


def run(jobs: int, replicas: int, threads: int, timeout: float,
        controller: str = "pycxi.vni.controller", keep: bool = False) -> Dict[str, object]:
    from fakeapi import FakeApiServer, write_kubeconfig

    from pycxi.vni.kstore import parse_time
    from pycxi.vni.kube import KubeClient, KubeConfig

    tmp = tempfile.mkdtemp(prefix="bench-vni-")
    procs: List[subprocess.Popen] = []
    vnis: Dict[str, dict] = {}  # the Vni objects, kept by the fake's listener (no polling)

    def follow(plural: str, obj: Optional[dict], name: str) -> None:
        if plural == "vnis":
            if obj is None:
                vnis.pop(name, None)
            else:
                vnis[name] = obj

    with FakeApiServer() as srv:
        assert srv.kube is not None
        srv.kube.listeners.append(follow)
        kc = write_kubeconfig(os.path.join(tmp, "kubeconfig.json"), srv.url)
        client = KubeClient(KubeConfig.load(kc), timeout=60)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        me, fake_tid = os.getpid(), srv._thread.native_id
        try:
            t_started = time.monotonic()
            for r in range(replicas):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", controller, "--kubeconfig", kc,
                     "--metrics-port", "0", "--resync", "60", "--log-format", "plain",
                     "--no-leader-election"],
                    env=dict(env, POD_NAME=f"bench-{r}"),
                    stdout=open(os.path.join(tmp, f"ctl{r}.log"), "wb"), stderr=subprocess.STDOUT))
            # ready when the controller has handled a probe Job
            client.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                                 "metadata": {"name": "probe", "annotations": ANN}})
            t_ready = time.monotonic() + 120
            while not vnis:
                if time.monotonic() > t_ready:
                    raise RuntimeError("controller did not start")
                time.sleep(0.05)
            client.delete(JOBS + "/probe")
            # A Job created within 2 s of the controller's start may predate it, and its key
            # record is looked up first (KubeStore.acquire_new(probably_new=)); creation
            # times have whole seconds.  Measure a running controller, not a starting one.
            time.sleep(max(0.0, t_started + 3.5 - time.monotonic()))

            def cpu() -> Dict[str, float]:
                return {"fake": _cpu(me, fake_tid), "ctl": sum(_cpu(p.pid) for p in procs)}

            def wait(pred) -> List[dict]:
                deadline = time.monotonic() + timeout
                while True:
                    objs = [o for o in list(vnis.values())
                            if o["spec"].get("holder", {}).get("name", "").startswith("job-")]
                    if pred(objs) or time.monotonic() > deadline:
                        return objs
                    time.sleep(0.1)

            # -- allocation: all Jobs at once --
            gen = _Load(kc, "create", jobs, threads)
            c0, t0, r0 = cpu(), time.time(), len(srv.kube._requests)
            created = gen.go()
            t_created = time.time()
            objs = wait(lambda objs: len(objs) >= jobs)
            c1, t1, r1 = cpu(), time.time(), len(srv.kube._requests)
            alloc = {o["spec"]["holder"]["name"]: parse_time(o["spec"].get("allocatedAt")) or 0.0
                     for o in objs}
            lat = [alloc[n] - created[n] for n in alloc if n in created]
            holders = [o["spec"]["holder"]["uid"] for o in objs]
            numbers = [o["spec"]["vni"] for o in objs]
            unique = len(set(numbers)) == len(numbers) and len(set(holders)) == len(holders)

            # -- release: all Jobs deleted at once --
            gen = _Load(kc, "delete", jobs, threads)
            t_del0 = time.time()
            deleted = gen.go()
            t_deleted = time.time()
            objs = wait(lambda objs: len(objs) >= jobs and all(
                (o.get("status") or {}).get("releasedAt") for o in objs))
            c2, t2, r2 = cpu(), time.time(), len(srv.kube._requests)
            rel = {o["spec"]["holder"]["name"]: parse_time(o["status"]["releasedAt"])
                   for o in objs if (o.get("status") or {}).get("releasedAt")}
            rlat = [rel[n] - deleted[n] for n in rel if n in deleted]
            peak = [_peak_rss_mib(p.pid) for p in procs]
            return {
                "benchmark": f"controller_{jobs}_jobs",
                "controller": controller,
                "jobs": jobs, "replicas": replicas, "allocated": len(alloc),
                "unique_vnis": unique,
                "create_seconds": round(t_created - t0, 3),
                "all_allocated_seconds": round(max(alloc.values()) - t0, 3) if alloc else None,
                **{f"latency_{k}": v for k, v in _stats(lat).items()},
                "throughput_jobs_per_second": round(len(alloc) / max(1e-9, max(alloc.values()) - t0), 1)
                if alloc else None,
                "allocation_phase": {"wall_seconds": round(t1 - t0, 3),
                                     "fake_api_cpu_seconds": round(c1["fake"] - c0["fake"], 2),
                                     "controller_cpu_seconds": round(c1["ctl"] - c0["ctl"], 2),
                                     "api_requests": r1 - r0,
                                     "api_requests_by_verb": _requests_by_verb(srv, r0, r1)},
                "released": len(rel),
                "delete_seconds": round(t_deleted - t_del0, 3),
                **{f"release_latency_{k}": v for k, v in _stats(rlat).items()},
                "release_phase": {"wall_seconds": round(t2 - t1, 3),
                                  "fake_api_cpu_seconds": round(c2["fake"] - c1["fake"], 2),
                                  "controller_cpu_seconds": round(c2["ctl"] - c1["ctl"], 2),
                                  "api_requests": r2 - r1,
                                  "api_requests_by_verb": _requests_by_verb(srv, r1, r2)},
                "controller_peak_rss_mib": peak[0] if replicas == 1 else peak,
                "api_requests": len(srv.kube._requests) if srv.kube else None,
                "api_server": "tests/vni_k8s/fakeapi.py (its own store behind a raw asyncio HTTP front; kmock 0.8 on aiohttp for the rest), in-process thread",
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
            if keep:
                print(f"controller logs: {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 jobs instead of 1,000")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=8, help="concurrent creators")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for each phase (10,000 Jobs may need minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the controllers' logs (path on stderr)")
    ap.add_argument("--repeat", type=int, default=1, help="runs; numbers are their medians")
    ap.add_argument("--controller", default="pycxi.vni.controller",
                    help="the controller's module (to compare a variant; found on $PYTHONPATH)")
    ap.add_argument("--load", choices=("create", "delete"), help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load:
        load(args.kubeconfig, args.load, args.jobs, args.threads)
        return 0
    jobs = args.jobs or (200 if args.quick else 1000)
    runs = [run(jobs, args.replicas, args.threads, args.timeout, args.controller, args.keep)
            for _ in range(max(1, args.repeat))]
    result = runs[0] if len(runs) == 1 else median_of(runs)
    print(json.dumps(result, indent=2))
    ok = all(r["allocated"] == jobs and r["released"] == jobs and r["unique_vnis"] for r in runs)
    return 0 if ok else 1


def median_of(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each number the median over the runs (the machine is shared: one run says little);
    everything else from the first run; the runs themselves under "runs"."""
    def merge(docs: List[Any]) -> Any:
        first = docs[0]
        if isinstance(first, bool) or not isinstance(first, (int, float, dict)):
            return all(docs) if isinstance(first, bool) else first
        if isinstance(first, dict):
            return {k: merge([d.get(k) for d in docs]) for k in first}
        nums = [d for d in docs if isinstance(d, (int, float))]
        return round(statistics.median(nums), 3) if nums else None
    out = merge(runs)
    out["repeat"] = len(runs)
    out["runs"] = [{k: r[k] for k in ("latency_p50_seconds", "latency_p99_seconds",
                                       "release_latency_p50_seconds", "release_latency_p99_seconds",
                                       "unique_vnis")} for r in runs]
    return out


if __name__ == "__main__":
    sys.exit(main())

"""Latency of the installed ``cxi`` CNI plugin next to its floor and a Go peer, in one run.

Measured, interleaved round-robin so that machine noise hits every series alike:

* ``python -IS -c "import json"`` with the same venv interpreter: the floor of any Python plugin;
* Debian's Go ``tuning`` plugin (``/usr/lib/cni/tuning``), ADD and DEL, chained with a prevResult
  and no changes configured: the cost of a Go meta plugin;
* the ``cxi`` launcher written by ``python -m pycxi.cni.install`` (shebang ``<venv python> -IS``):
  VERSION, ADD (a service on every software NIC) and DEL, alternating so the state stays small,
  then DEL again without ``CNI_NETNS`` (``cxi_DEL_again``: nothing left to do, as containerd 1.6's
  second and third DEL of every pod; the plugin answers it before importing its commands).

Each sample is the wall time of one ``subprocess.run`` (fork, exec, wait), the same overhead for
every series.  The software device lives in a temporary ``PYCXI_SIM_ROOT`` (one NIC by default);
the plugins' dataDir is on /dev/shm (tmpfs, as /run is on a node; ``--state-dir`` to change);
the network namespace is this process's own (``/proc/<pid>/ns/net``; nothing is changed in it:
tuning is configured with no change, and the cxi service only records the inode).

Goal (issue 4): ADD p50 <= 1.5 x the ``python -IS -c "import json"`` p50.

    python benchmarks/bench_cni.py [--quick] [--runs N] [--devices N] [--out FILE]

JSON on stdout (and ``--out``); progress on stderr.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

GOAL_RATIO = 1.5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNING = "/usr/lib/cni/tuning"
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": []}


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs):
    ms = [x * 1e3 for x in xs]
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 3), "p99_ms": round(pct(ms, 0.99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "min_ms": round(min(ms), 3)}


def timed(argv, env, stdin=b"", expect_rc=0):
    t = time.perf_counter()
    p = subprocess.run(argv, input=stdin, env=env, capture_output=True)
    dt = time.perf_counter() - t
    if expect_rc is not None and p.returncode != expect_rc:
        raise RuntimeError(f"{argv[0]} exited {p.returncode}: {p.stdout[-400:]!r} {p.stderr[-400:]!r}")
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="30 samples per series instead of 300")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--devices", type=int, default=1, help="software NICs (services per ADD)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--no-scaling", action="store_true", help="skip the pods-on-the-node sweep")
    ap.add_argument("--state-dir", default=None,
                    help="parent of the plugins' dataDir (default: /dev/shm, a tmpfs like the "
                         "/run/cni/cxi default on a node; else the temporary directory)")
    a = ap.parse_args(argv)
    runs = a.runs or (30 if a.quick else 300)
    warm = 3 if a.quick else 10

    sys.path.insert(0, REPO)
    from pycxi.cni import install

    tmp = tempfile.mkdtemp(prefix="bench-cni-")
    parent = a.state_dir or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
                             else tmp)
    state = tempfile.mkdtemp(prefix="bench-cni-state-", dir=parent)
    try:
        bindir = os.path.join(tmp, "bin")
        cxi = install.install_launcher(bindir, python=sys.executable)
        sim = os.path.join(tmp, "sim")
        os.makedirs(sim)
        # the node policy allowing the static VNIs below (docs/cni.md, "The node policy")
        policy = os.path.join(tmp, "cni-policy.json")
        with open(policy, "w") as f:
            json.dump({"staticVnis": [[1024, 65535]]}, f)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYCXI_SIM_ROOT": sim,
               "PYCXI_CNI_POLICY": policy}
        r = subprocess.run([sys.executable, "-c", f"from pycxi.device import sim_reset; sim_reset({a.devices})"],
                           env=dict(os.environ, PYCXI_SIM_ROOT=sim, PYTHONPATH=REPO), capture_output=True)
        if r.returncode:
            raise SystemExit(f"sim reset failed: {r.stderr.decode()}")
        netns = f"/proc/{os.getpid()}/ns/net"
        base_env = dict(env, CNI_PATH=bindir, CNI_IFNAME="eth0", CNI_NETNS=netns)
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "cxi", "dataDir": os.path.join(state, "cxi"),
                "prevResult": PREV}
        tconf = {"cniVersion": "1.0.0", "name": "bench", "type": "tuning", "prevResult": PREV,
                 "dataDir": os.path.join(state, "tuning")}
        have_tuning = os.access(TUNING, os.X_OK)

        series = {k: [] for k in ("python_IS_import_json", "cxi_VERSION", "cxi_ADD", "cxi_DEL",
                                    "cxi_DEL_again")}
        if have_tuning:
            series["tuning_ADD"] = []
            series["tuning_DEL"] = []
        floor = [sys.executable, "-IS", "-c", "import json"]
        i = 0

        def one_round(record):
            nonlocal i
            i += 1
            cid = f"bench{i}"
            vconf = dict(conf, vnis=[1024 + (i % 60000)])
            data = json.dumps(vconf).encode()
            s = {}
            s["python_IS_import_json"] = timed(floor, env)
            s["cxi_VERSION"] = timed([cxi], dict(env, CNI_COMMAND="VERSION"), b'{"cniVersion":"1.0.0"}')
            s["cxi_ADD"] = timed([cxi], dict(base_env, CNI_COMMAND="ADD", CNI_CONTAINERID=cid), data)
            s["cxi_DEL"] = timed([cxi], dict(base_env, CNI_COMMAND="DEL", CNI_CONTAINERID=cid), data)
            again = {k: v for k, v in base_env.items() if k != "CNI_NETNS"}
            s["cxi_DEL_again"] = timed([cxi], dict(again, CNI_COMMAND="DEL", CNI_CONTAINERID=cid), data)
            if have_tuning:
                td = json.dumps(tconf).encode()
                s["tuning_ADD"] = timed([TUNING], dict(base_env, CNI_COMMAND="ADD", CNI_CONTAINERID=cid,
                                                        CNI_PATH="/usr/lib/cni"), td)
                s["tuning_DEL"] = timed([TUNING], dict(base_env, CNI_COMMAND="DEL", CNI_CONTAINERID=cid,
                                                        CNI_PATH="/usr/lib/cni"), td)
            if record:
                for k, v in s.items():
                    series[k].append(v)

        for _ in range(warm):
            one_round(False)
        t0 = time.monotonic()
        for n in range(runs):
            one_round(True)
            if (n + 1) % 50 == 0:
                print(f"  {n + 1}/{runs} rounds", file=sys.stderr)
        elapsed = time.monotonic() - t0

        scaling = [] if a.no_scaling else pods_sweep(
            cxi, base_env, conf, [0, 25, 50, 100, 200], 10 if a.quick else 40)
        res = {k: summary(v) for k, v in series.items()}
        floor_p50 = res["python_IS_import_json"]["p50_ms"]
        ratio = res["cxi_ADD"]["p50_ms"] / floor_p50
        out = {
            "benchmark": "cni",
            "python": sys.version.split()[0], "executable": sys.executable,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "launcher_shebang": open(cxi).readline().strip(),
            "devices": a.devices, "runs": runs, "state_dir": state, "state_fs": _fstype(state), "quick": a.quick, "elapsed_s": round(elapsed, 2),
            "results": res,
            "cxi_ADD_p50_over_python_json_p50": round(ratio, 3),
            "cxi_DEL_again_p50_over_python_json_p50": round(
                res["cxi_DEL_again"]["p50_ms"] / floor_p50, 3),
            "goal_ratio": GOAL_RATIO, "goal_met": ratio <= GOAL_RATIO,
            "scaling": scaling,
        }
        if have_tuning:
            out["cxi_ADD_p50_over_tuning_ADD_p50"] = round(res["cxi_ADD"]["p50_ms"] / res["tuning_ADD"]["p50_ms"], 2)
        text = json.dumps(out, indent=2)
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def pods_sweep(cxi, base_env, conf, counts, rounds):
    """ADD/DEL latency of one more pod with N pods' services and records already on the
    node, each pod in a network namespace of its own (made here and removed again).
    These pods use no LE limit (LE 0/0): with the default limits a 13.1 NIC holds only
    15 per-pod services (its LE pools), see docs/cni.md."""
    pconf = dict(conf, limits={"LE": [0, 0]})
    tag = f"bcni{os.getpid()}"
    made, out = [], []

    def pod(i, vni, cmd):
        if i >= len(made):
            name = f"{tag}-{i}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
        env = dict(base_env, CNI_COMMAND=cmd, CNI_CONTAINERID=f"{tag}-{i}",
                   CNI_NETNS=f"/run/netns/{made[i]}")
        return timed([cxi], env, json.dumps(dict(pconf, vnis=[vni])).encode())

    try:
        probe = 0
        held = 0
        for n in counts:
            while held < n:
                pod(held + 1, 2000 + held, "ADD")   # index 0 is the probe pod
                held += 1
            adds, dels = [], []
            for _ in range(rounds):
                adds.append(pod(probe, 1500, "ADD"))
                dels.append(pod(probe, 1500, "DEL"))
            out.append({"pods": n, "add_p50_ms": round(pct(adds, 0.5) * 1e3, 3),
                        "del_p50_ms": round(pct(dels, 0.5) * 1e3, 3)})
            print(f"  {n} pods on the node: ADD p50 {out[-1]['add_p50_ms']} ms", file=sys.stderr)
        for i in range(1, held + 1):
            pod(i, 2000 + i - 1, "DEL")
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return out


def _fstype(path):
    """The filesystem type of ``path`` from /proc/self/mountinfo (longest matching mount)."""
    best, fs = "", "?"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fs = mnt, right.split()[0]
    except OSError:
        pass
    return fs


if __name__ == "__main__":
    sys.exit(main())

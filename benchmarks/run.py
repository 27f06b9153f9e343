"""Run every pycxi benchmark in one go and write one report.

    python benchmarks/run.py [--quick] [--out benchmarks/results] [--only core,cni,...]

Each benchmark is its own script printing JSON (bench_core.py, bench_cni.py,
bench_vni_store.py, bench_controller.py); they run one after the other with this
interpreter, so figures measured against a peer (C vs Python, the interpreter floor and
Debian's Go `tuning` plugin, the original VNI allocator) come from the same run.
Writes results.json, report.md and PNG plots (when matplotlib is installed:
`pip install matplotlib`) into --out.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = {
    "core": ("bench_core.py", "alloc_svc + destroy_svc cycle and object alloc+free, C vs Python"),
    "cni": ("bench_cni.py", "CNI ADD/DEL latency vs the interpreter floor and Go tuning"),
    "vni_store": ("bench_vni_store.py", "VNI store per-allocation cost vs the original's SQL"),
    "controller": ("bench_controller.py", "controller burst: Jobs created at once until all have a VNI, then deleted until all are quarantined"),
    "controller_10k": ("bench_controller.py", "the same burst with 10,000 Jobs (not in --quick runs)"),
    "controller_floor": ("bench_controller.py", "the same burst of 1,000 Jobs against kopf's floor: "
                         "benchmarks/kopf_floor.py, kopf plus the controller's two writes per Job, no allocation logic"),
    "controller_10k_floor": ("bench_controller.py", "kopf's floor with 10,000 Jobs (not in --quick runs)"),
}
#: extra arguments of a benchmark; the goals are issue #11's
FLOOR = ["--controller", "benchmarks.kopf_floor"]
ARGS = {"controller": ["--jobs", "1000"], "controller_10k": ["--jobs", "10000", "--timeout", "900"],
        "controller_floor": ["--jobs", "1000"] + FLOOR,
        "controller_10k_floor": ["--jobs", "10000", "--timeout", "900"] + FLOOR}
GOAL_P99 = {1000: 0.5, 10000: 3.0}


def machine():
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""
    cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in read("/proc/meminfo").splitlines()
                if l.startswith("MemTotal")), "0")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host_cpu": cpu, "cpus": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "os": read("/etc/debian_version").strip() and
            f"Debian {read('/etc/debian_version').strip()}" or platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def run_bench(name, quick):
    script, _ = BENCHES[name]
    cmd = [sys.executable, os.path.join(HERE, script)] + (
        ARGS[name] if name in ARGS else ["--quick"] if quick else [])
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}", "stderr": p.stderr[-2000:], "seconds": took}
    try:
        out = json.loads(p.stdout)
    except ValueError:
        return {"error": "no JSON on stdout", "stdout": p.stdout[-2000:], "seconds": took}
    out["_seconds"] = round(took, 1)
    return out


# -- Markdown -------------------------------------------------------------------
def md_core(r):
    rows = [f"| C (software device, -O2) | {r['c_ns_per_cycle'] / 1000:.2f} µs |",
            f"| Python (`dev.destroy_svc(dev.alloc_svc(desc))`) | {r['python_ns_per_cycle'] / 1000:.2f} µs |",
            f"| **Python / C** | **{r['python_over_c']:.3f}** (goal ≤ {r['goal']}) |"]
    scale = ", ".join(f"{s['services']}: {s['python_ns_per_cycle'] / 1000:.2f} µs"
                      for s in r.get("scaling", []))
    return ["| alloc+destroy cycle | best of runs |", "|---|---|", *rows, "",
            f"Medians of the same runs: Python / C = {r.get('median_python_over_c', '?')}; the "
            "cycle is dominated by the device call itself (two CAP_SYS_ADMIN checks, the lock, "
            "the undo journal), so the wrapper adds little.", "",
            f"Cycle cost with N other services on the device — {scale}.", *md_objects(r)]


def md_objects(r):
    o = r.get("objects")
    if not o:
        return []
    rows = [f"| {k} | {v['c_ns_per_cycle']:.0f} ns | {v['python_ns_per_cycle']:.0f} ns | "
            f"{v['python_over_c']:.3f} |" for k, v in o.items() if isinstance(v, dict)]
    return ["", f"Allocating + freeing each object type on an LNI ({o['cycles']} cycles, fastest "
            f"batch; goal ≤ {o['goal']}):", "",
            "| object | C | Python | Python / C |", "|---|---|---|---|", *rows]


def md_cni(r):
    res = r["results"]
    lines = ["| command | p50 | p99 |", "|---|---|---|"]
    for key, label in (("python_IS_import_json", "`python -IS -c 'import json'` (floor)"),
                       ("cxi_VERSION", "cxi VERSION"), ("cxi_ADD", "cxi ADD (service created)"),
                       ("cxi_DEL", "cxi DEL (service destroyed)"),
                       ("cxi_DEL_again", "cxi DEL again, no `CNI_NETNS` (nothing left to do)"),
                       ("tuning_ADD", "Go `tuning` ADD (Debian)"), ("tuning_DEL", "Go `tuning` DEL")):
        if key in res:
            lines.append(f"| {label} | {res[key]['p50_ms']:.1f} ms | {res[key]['p99_ms']:.1f} ms |")
    lines += ["", f"cxi ADD p50 / interpreter floor p50 = **{r['cxi_ADD_p50_over_python_json_p50']}** "
              f"(goal ≤ {r['goal_ratio']}); cxi ADD / Go tuning ADD = {r['cxi_ADD_p50_over_tuning_ADD_p50']}."]
    if "cxi_DEL_again_p50_over_python_json_p50" in r:
        lines += ["", "A DEL with nothing to do (containerd's repeated DELs) / interpreter floor = "
                  f"**{r['cxi_DEL_again_p50_over_python_json_p50']}** (goal: no more than the floor; "
                  "the plugin answers it before its dispatcher, config parser and commands are imported)."]
    if r.get("scaling"):
        lines += ["", "ADD / DEL p50 of one more pod with N pods already on the node — " + ", ".join(
            f"{s['pods']}: {s['add_p50_ms']:.1f} / {s['del_p50_ms']:.1f} ms" for s in r["scaling"]) + "."]
    return lines


def md_vni(r):
    lines = ["| VNIs allocated | ours (one handle) | ours (open per op) | original (EXCEPT query) | ratio |",
             "|---|---|---|---|---|"]
    for lv in r["levels"]:
        lines.append(f"| {lv['allocated']:,} | {lv['ours_us']['median']:.0f} µs | "
                     f"{lv['ours_open_per_op_us']['median']:.0f} µs | "
                     f"{lv['baseline_us']['median'] / 1000:.1f} ms | **{lv['ratio']:.0f}×** |")
    lines += ["", f"Flat: cost at 60 k / cost at 1 k = {r['ours_flatness_60k_vs_1k']}; "
              f"goal ≥ {r['goal']['ratio_at_60k_min']:.0f}× at 60 k: "
              f"{'met' if r['goal']['met'] else 'NOT met'}."]
    return lines


def md_controller(r):
    ap, rp = r.get("allocation_phase") or {}, r.get("release_phase") or {}
    floor = r.get("controller") != "pycxi.vni.controller"
    goal = GOAL_P99.get(r["jobs"])
    return ([f"Not a controller: `{r.get('controller')}` — kopf with the controller's settings "
             "and the controller's two API writes per Job and phase, nothing else. What kopf and the fake API server alone "
             "cost on this machine, next to the controller's figures above.", ""] if floor else []) + ["| Jobs at once | replicas | all have a VNI after | p50 | p99 (goal) | released p50 | released p99 | unique |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['jobs']} | {r['replicas']} | {r['all_allocated_seconds']} s | "
            f"{r['latency_p50_seconds']} s | {r['latency_p99_seconds']} s"
            + ("" if floor else f" (≤ {goal} s)") + " | "
            f"{r.get('release_latency_p50_seconds')} s | {r.get('release_latency_p99_seconds')} s | "
            f"{r['unique_vnis']} |",
            "", f"CPU time, allocation phase: fake API {ap.get('fake_api_cpu_seconds')} s, controller "
            f"{ap.get('controller_cpu_seconds')} s (wall {ap.get('wall_seconds')} s); release phase: "
            f"fake API {rp.get('fake_api_cpu_seconds')} s, controller {rp.get('controller_cpu_seconds')} s "
            f"(wall {rp.get('wall_seconds')} s). Controller peak RSS {r.get('controller_peak_rss_mib')} MiB.",
            "", "Requests, allocation phase: " + ", ".join(
                f"{k} {v}" for k, v in (ap.get("api_requests_by_verb") or {}).items())
            + "; release phase: " + ", ".join(
                f"{k} {v}" for k, v in (rp.get("api_requests_by_verb") or {}).items()) + ".",
            "", f"API server: {r.get('api_server', '?')} — there is no kube-apiserver here, so this "
            "measures the controller's own work against an in-memory fake."]


MD = {"core": md_core, "cni": md_cni, "vni_store": md_vni, "controller": md_controller,
      "controller_10k": md_controller, "controller_floor": md_controller,
      "controller_10k_floor": md_controller}


def report_md(meta, results, plots, quick):
    out = [f"# pycxi benchmark report — {meta['date']}", "",
           f"Machine: {meta['host_cpu']}, {meta['cpus']} cores, {meta['mem_gib']} GiB, "
           f"{meta['os']}, kernel {meta['kernel']}, Python {meta['python']}; load average at start "
           f"{', '.join(f'{x:.2f}' for x in meta['loadavg_at_start'])}."
           + (" **Quick run** (fewer iterations)." if quick else ""), "",
           "Reproduce: `.venv/bin/python benchmarks/run.py` (after `scripts/setup-env.sh`; "
           "`pip install matplotlib` for the plots). Every ratio below is measured within one run.", ""]
    for name, r in results.items():
        out += [f"## {name}: {BENCHES[name][1]}", ""]
        if "error" in r:
            out += [f"failed: {r['error']}", "", "```", r.get("stderr", r.get("stdout", ""))[-1500:], "```", ""]
            continue
        try:
            out += MD[name](r)
        except (KeyError, TypeError) as e:
            out += [f"(unexpected result shape: {e!r}; see results.json)"]
        out += [""] + [f"![{name}]({p})" for p in plots.get(name, [])] + [""]
    return "\n".join(out)


# -- plots ----------------------------------------------------------------------
def make_plots(results, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return {}
    plots = {}

    def save(fig, name, key):
        path = os.path.join(outdir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        plots.setdefault(key, []).append(name)

    r = results.get("core", {})
    if r.get("scaling"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = [s["services"] for s in r["scaling"]]
        ax.plot(xs, [s["python_ns_per_cycle"] / 1000 for s in r["scaling"]], "o-", label="Python")
        ax.axhline(r["c_ns_per_cycle"] / 1000, ls="--", color="gray", label="C, empty device")
        ax.set(xlabel="services already on the device", ylabel="µs per alloc+destroy",
               title="Software CXI device: cost as services grow", ylim=(0, None))
        ax.legend()
        save(fig, "core_scaling.png", "core")
    r = results.get("vni_store", {})
    if r.get("levels"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = [lv["allocated"] for lv in r["levels"]]
        for key, label in (("ours_us", "pycxi SQLite store"), ("ours_open_per_op_us", "pycxi, open per op"),
                           ("baseline_us", "original (EXCEPT query)")):
            ax.plot(xs, [lv[key]["median"] for lv in r["levels"]], "o-", label=label)
        ax.set(xscale="log", yscale="log", xlabel="VNIs allocated", ylabel="µs per acquire",
               title="VNI allocation cost as the store fills")
        ax.legend()
        save(fig, "vni_store_scaling.png", "vni_store")
    r = results.get("cni", {})
    if r.get("results"):
        res = r["results"]
        keys = [k for k in ("python_IS_import_json", "cxi_VERSION", "cxi_ADD", "cxi_DEL",
                            "tuning_ADD", "tuning_DEL") if k in res]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [res[k]["p50_ms"] for k in keys], 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [res[k]["p99_ms"] for k in keys], 0.4, label="p99")
        ax.set_xticks(list(xs), [k.replace("python_IS_import_json", "python -IS json") for k in keys],
                      rotation=20)
        ax.set(ylabel="ms", title="CNI plugin latency (one process per call)")
        ax.legend()
        save(fig, "cni_latency.png", "cni")
        if r.get("scaling"):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot([s["pods"] for s in r["scaling"]], [s["add_p50_ms"] for s in r["scaling"]], "o-")
            ax.set(xlabel="pods already on the node", ylabel="ADD p50 (ms)",
                   title="CNI ADD as pods grow", ylim=(0, None))
            save(fig, "cni_scaling.png", "cni")
    return plots


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHES))
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else [
        n for n in BENCHES if not (args.quick and n.startswith("controller_10k"))]
    os.makedirs(args.out, exist_ok=True)
    meta = machine()
    results = {}
    for name in names:
        print(f"== {name}: {BENCHES[name][1]}", file=sys.stderr, flush=True)
        results[name] = run_bench(name, args.quick)
        if "error" in results[name]:
            print(f"   failed: {results[name]['error']}", file=sys.stderr)
    plots = make_plots(results, args.out)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": meta, "quick": args.quick, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report_md(meta, results, plots, args.quick))
    print(f"wrote {args.out}/results.json, report.md and {sum(map(len, plots.values()))} plots",
          file=sys.stderr)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole flow on one machine, on the software CXI NIC: two jobs, two pods each.

1. a fresh software device and a VNI store (SQLite) in a scratch directory;
2. four pods as real network namespaces; a host-side namespace holds the bridge, so the
   machine's own network namespace is never touched;
3. per pod, the real `cxi` CNI plugin through a conflist chain (bridge, then cxi) as a
   runtime would run it; the plugin takes each job's VNI from the embedded allocator;
4. proof of isolation: `pycxi access-check` run inside every pod (and on the host) against
   every pod's service and VNI, printed as a table next to what is expected;
5. teardown through CNI DEL and the job's VNI release, then proof that nothing is left.

Exits non-zero if any expectation fails; cleans up after itself, also on Ctrl-C.
Run as root: `scripts/demo.sh` (it sets up the venv first).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

TENANTS = {"A": {"job": "job-a", "subnet": "10.231.1.0/24"},
           "B": {"job": "job-b", "subnet": "10.231.2.0/24"}}
PODS = [("A", 1), ("A", 2), ("B", 1), ("B", 2)]
DEBIAN_CNI = "/usr/lib/cni"

GREEN, RED, BOLD, DIM, RESET = "\033[32m", "\033[31m", "\033[1m", "\033[2m", "\033[0m"


def color(on):
    global GREEN, RED, BOLD, DIM, RESET
    if not on:
        GREEN = RED = BOLD = DIM = RESET = ""


def step(msg):
    print(f"{BOLD}==> {msg}{RESET}", flush=True)


def sh(*cmd, check=True, netns=None, env=None, capture=True):
    if netns:
        cmd = ("ip", "netns", "exec", netns) + cmd
    return subprocess.run(cmd, check=check, text=True, env=env,
                          capture_output=capture, timeout=120)


class Demo:
    def __init__(self, keep=False):
        self.tag = uuid.uuid4().hex[:6]
        self.scratch = tempfile.mkdtemp(prefix="pycxi-demo-")
        os.chmod(self.scratch, 0o755)
        self.sim_root = os.path.join(self.scratch, "sim")
        self.db = os.path.join(self.scratch, "vni.db")
        self.netns = []
        self.attached = []
        self.keep = keep
        self.failures = 0
        os.environ["PYCXI_SIM_ROOT"] = self.sim_root
        self.env = dict(os.environ)

    # -- plumbing --------------------------------------------------------
    def add_netns(self, name):
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    def pycxi(self, *args, netns=None):
        return sh(sys.executable, "-m", "pycxi.cli", *args, netns=netns, check=False,
                  env=self.env)

    def conflist(self, tenant):
        t = TENANTS[tenant]
        return {
            "cniVersion": "1.0.0",
            "name": f"tenant-{tenant.lower()}",
            "plugins": [
                {"type": "bridge", "bridge": f"cxid{tenant.lower()}{self.tag[:4]}",
                 "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": t["subnet"]}]],
                          "dataDir": os.path.join(self.scratch, "ipam")}},
                {"type": "cxi", "dataDir": os.path.join(self.scratch, "cni"),
                 "logFile": os.path.join(self.scratch, "cxi.log"),
                 "localAllocator": {"key": t["job"]}},
            ],
        }

    # -- the flow --------------------------------------------------------
    def setup(self):
        from pycxi.cni.cnitool import CniTool
        from pycxi.cni.install import launcher_text
        import pycxi.device

        # The node's policy (docs/cni.md): the local allocator, with the demo's database.
        # PYCXI_SIM_ROOT in the plugin's environment chooses the software device on purpose.
        self.node_conf = os.path.join(self.scratch, "cni-policy.json")
        with open(self.node_conf, "w") as f:
            json.dump({"localAllocator": {"path": self.db}, "logDir": self.scratch}, f)
        step(f"software CXI device under {self.sim_root}; node policy {self.node_conf}")
        pycxi.device.sim_reset(1)
        bindir = os.path.join(self.scratch, "bin")
        os.makedirs(bindir)
        with open(os.path.join(bindir, "cxi"), "w") as f:
            f.write(launcher_text())
        os.chmod(os.path.join(bindir, "cxi"), 0o755)
        self.cnitool = CniTool([bindir, DEBIAN_CNI], os.path.join(self.scratch, "cache"),
                               exec_prefix=["ip", "netns", "exec", f"pycxi-demo-host-{self.tag}"],
                               extra_env={"PYCXI_SIM_ROOT": self.sim_root,
                                          "PYCXI_CNI_POLICY": self.node_conf})
        step("host-side namespace for the bridge, and four pods")
        self.add_netns(f"pycxi-demo-host-{self.tag}")
        for tenant, i in PODS:
            self.add_netns(self.pod_ns(tenant, i))

    def pod_ns(self, tenant, i):
        return f"pycxi-demo-{tenant.lower()}{i}-{self.tag}"

    def add_pods(self):
        self.pods = {}
        for tenant, i in PODS:
            name = f"{tenant.lower()}{i}"
            ns = self.pod_ns(tenant, i)
            cid = f"demo-{name}-{self.tag}"
            t0 = time.monotonic()
            result = self.cnitool.add(self.conflist(tenant), f"/run/netns/{ns}", "eth0", cid,
                                      args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}")
            self.attached.append((tenant, cid, ns))
            ms = (time.monotonic() - t0) * 1000
            ip = next((x["address"] for x in result.get("ips", [])), "?")
            self.pods[name] = {"tenant": tenant, "netns": ns, "cid": cid, "ip": ip}
            print(f"    pod {name} (tenant {tenant}): CNI ADD bridge+cxi in {ms:.0f} ms, eth0 {ip}")
        import pycxi

        with pycxi.Device(0) as dev:
            by_inode = {}
            for d in dev.svc_list():
                for m in d.members:
                    if m.type == "netns":
                        by_inode[m.id] = d
                try:
                    by_inode.setdefault(dev.get_netns(d.svc_id), d)
                except pycxi.CxiLibError:
                    pass
        for name, pod in self.pods.items():
            d = by_inode.get(os.stat(f"/run/netns/{pod['netns']}").st_ino)
            if d is None:
                raise SystemExit(f"pod {name} got no CXI service")
            pod["svc"], pod["vni"] = d.svc_id, d.vnis[0]
        for tenant, t in TENANTS.items():
            vnis = {p["vni"] for p in self.pods.values() if p["tenant"] == tenant}
            print(f"    tenant {tenant}: job {t['job']} got VNI {', '.join(map(str, vnis))} "
                  f"from the embedded allocator")
        va = {p["vni"] for p in self.pods.values() if p["tenant"] == "A"}
        vb = {p["vni"] for p in self.pods.values() if p["tenant"] == "B"}
        self.expect(len(va) == 1 and len(vb) == 1 and va != vb,
                    "each job has one VNI, and the two jobs' VNIs differ")

    def expect(self, ok, what):
        mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
        print(f"    [{mark}] {what}")
        if not ok:
            self.failures += 1

    def isolation(self):
        step("isolation: `pycxi access-check --svc S --vni V` run inside each pod and on the host")
        who = list(self.pods) + ["host"]
        cols = list(self.pods)
        head = f"    {'caller':<8}" + "".join(f"{'svc of ' + c:>14}" for c in cols)
        print(head)
        print("    " + "-" * (len(head) - 4))
        for caller in who:
            row = f"    {caller:<8}"
            for target in cols:
                t = self.pods[target]
                r = self.pycxi("access-check", "--svc", str(t["svc"]), "--vni", str(t["vni"]),
                               netns=None if caller == "host" else self.pods[caller]["netns"])
                allowed = r.returncode == 0
                expected = caller == target   # a pod's service admits only that pod's netns
                errname = "" if allowed else (r.stderr.strip().rsplit("(", 1)[-1].split(")")[0])
                cell = "allowed" if allowed else errname or "denied"
                good = allowed == expected
                if not good:
                    self.failures += 1
                c = GREEN if good else RED
                row += f"{c}{cell:>14}{RESET}"
            print(row)
        print(f"    {DIM}expected: each pod only on its own service; every other pod and the "
              f"host (root) refused with EPERM{RESET}")
        # A pod of tenant B, with an LNI on its own service, cannot open a domain on A's VNI.
        a, b = self.pods["a1"], self.pods["b1"]
        r = self.pycxi("access-check", "--svc", str(b["svc"]), "--vni", str(a["vni"]),
                       netns=b["netns"])
        self.expect(r.returncode != 0 and "EPERM" in r.stderr,
                    f"pod b1 cannot use tenant A's VNI {a['vni']} through its own service "
                    f"({(r.stderr.strip() or 'allowed!').splitlines()[-1]})")
        r = self.pycxi("access-check", "--svc", str(a["svc"]), "--vni", str(a["vni"]),
                       netns=a["netns"])
        self.expect(r.returncode == 0, f"pod a1 uses VNI {a['vni']} through its own service")

    def teardown(self):
        step("teardown: CNI DEL for every pod (reverse chain), then the jobs' VNIs are released")
        import pycxi
        from pycxi.vni.sqlite import SqliteStore

        for tenant, cid, ns in list(self.attached):
            self.cnitool.delete(self.conflist(tenant), f"/run/netns/{ns}", "eth0", cid)
            self.attached.remove((tenant, cid, ns))
            print(f"    DEL {cid}")
        store = SqliteStore(self.db)
        try:
            for t in TENANTS.values():
                store.release(f"job/{t['job']}")
            held = [a for a in store.list() if a.state == "allocated"]
            quarantined = [a for a in store.list() if a.state == "quarantined"]
        finally:
            store.close()
        with pycxi.Device(0) as dev:
            left = [d.svc_id for d in dev.svc_list() if d.svc_id != 1]
        records = sorted(os.listdir(os.path.join(self.scratch, "cni"))) \
            if os.path.isdir(os.path.join(self.scratch, "cni")) else []
        records = [r for r in records if r.endswith(".json") or os.path.isdir(
            os.path.join(self.scratch, "cni", r)) and os.listdir(os.path.join(self.scratch, "cni", r))]
        self.expect(not left, f"no CXI service left on cxi0 (only the default service): {left or 'none'}")
        self.expect(not held, f"no VNI held in the store ({len(quarantined)} in quarantine until "
                              f"they may be reused)")
        self.expect(not records, f"no plugin state records left: {records or 'none'}")
        r = self.pycxi("sim", "status", "--check")
        self.expect(r.returncode == 0, "the software device's invariants hold")

    def cleanup(self):
        for tenant, cid, ns in list(self.attached):
            try:
                self.cnitool.delete(self.conflist(tenant), f"/run/netns/{ns}", "eth0", cid)
            except Exception as e:  # best effort while cleaning up
                print(f"    cleanup: DEL {cid}: {e}", file=sys.stderr)
        for ns in reversed(self.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.netns = []
        if not self.keep:
            shutil.rmtree(self.scratch, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-color", action="store_true")
    args = ap.parse_args(argv)
    color(sys.stdout.isatty() and not args.no_color)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, CAP_SYS_ADMIN)", file=sys.stderr)
        return 2
    for tool in ("ip",):
        if not shutil.which(tool):
            print(f"missing {tool}: run scripts/demo.sh, which installs it", file=sys.stderr)
            return 2
    if not os.access(os.path.join(DEBIAN_CNI, "bridge"), os.X_OK):
        print("missing the CNI reference plugins: apt-get install containernetworking-plugins",
              file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM both end up in the finally: below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo = Demo(keep=args.keep)
    t0 = time.monotonic()
    try:
        demo.setup()
        step("CNI ADD for four pods (tenant A: a1, a2; tenant B: b1, b2)")
        demo.add_pods()
        demo.isolation()
        demo.teardown()
    except KeyboardInterrupt:
        print(f"\n{RED}interrupted: cleaning up{RESET}", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"{RED}demo failed: {type(e).__name__}: {e}{RESET}", file=sys.stderr)
        demo.failures += 1
    finally:
        demo.cleanup()
    took = time.monotonic() - t0
    if demo.failures:
        print(f"{RED}{BOLD}{demo.failures} expectation(s) failed{RESET} ({took:.1f} s)")
        return 1
    print(f"{GREEN}{BOLD}all expectations met{RESET}: two tenants isolated by netns-bound CXI "
          f"services and per-job VNIs; nothing left behind ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

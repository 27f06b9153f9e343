"""podman end to end: Debian's podman 4.3 with the CNI backend, runc, explicit ulimits, a scratch
containers.conf and a busybox rootfs (no image pull); ``cxi`` chained after bridge.

podman runs under ``nsenter --net=<host-side netns>`` so that its bridge lives there and the
machine's own network namespace is untouched (``ip netns exec`` cannot be used: it remounts
/sys, and runc then finds no cgroup mount).  The access check runs *inside* the container with
``podman exec``: the interpreter, its libraries, the venv and the source tree are bind-mounted
read-only, the software device's root read-write.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from cniutil import PY, REPO, count_services, records, services

pytestmark = pytest.mark.podman

_MISSING = [t for t in ("podman", "runc", "nsenter") if not shutil.which(t)]
if not os.path.exists("/usr/bin/busybox") and not shutil.which("busybox"):
    _MISSING.append("busybox")
if _MISSING:
    pytestmark = [pytestmark, pytest.mark.skip(reason=f"podman e2e needs {', '.join(_MISSING)}")]


class Podman:
    def __init__(self, host_ns, env):
        self.dir = tempfile.mkdtemp(prefix="cxp", dir="/tmp")   # short: conmon socket paths
        self.host_ns = host_ns
        self.env = env
        self.base = ["nsenter", f"--net=/run/netns/{host_ns}", "podman", "--root",
                     f"{self.dir}/storage", "--runroot", f"{self.dir}/run", "--storage-driver", "vfs"]

    def __call__(self, *args, check=True, timeout=120):
        p = subprocess.run(self.base + list(args), env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode:
            raise AssertionError(f"podman {' '.join(args)}: rc {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def cleanup(self):
        self("rm", "-af", "-t", "0", check=False)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if self.dir in line.split()[4]]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def podman(cni_env, netns):
    host = netns.add("cxh")
    pid = os.getpid()
    env = dict(os.environ, **cni_env.env)     # PYCXI_SIM_ROOT, the node policy
    pm = Podman(host, env)
    d = pm.dir
    rootfs = os.path.join(d, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for sub in ("proc", "sys", "dev", "etc", "tmp", "run"):
        os.makedirs(os.path.join(rootfs, sub))
    shutil.copy(shutil.which("busybox") or "/usr/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    for tool in ("sh", "ip", "sleep", "cat", "ls"):
        os.symlink("busybox", os.path.join(rootfs, "bin", tool))
    netd = os.path.join(d, "net.d")
    os.makedirs(netd)
    for i, (name, vni) in enumerate((("cxneta", 4100), ("cxnetb", 4200))):
        conf = {"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": "bridge", "bridge": f"cxb{i}{pid % 10000}", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.89.{71 + i}.0/24"}]],
                      "dataDir": os.path.join(d, "ipam")}},
            {"type": "cxi", "vnis": [vni], "dataDir": cni_env.data_dir,
             "logFile": str(cni_env.tmp / "podman-cxi.log"), "logLevel": "debug"}]}
        with open(os.path.join(netd, f"{name}.conflist"), "w") as f:
            json.dump(conf, f)
    with open(os.path.join(d, "containers.conf"), "w") as f:
        f.write(f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_env.bin}", "/usr/lib/cni"]
network_config_dir = "{netd}"
default_network = "cxneta"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
""")
    env["CONTAINERS_CONF"] = os.path.join(d, "containers.conf")
    pm.rootfs = rootfs
    try:
        yield pm
    finally:
        pm.cleanup()


def _mounts():
    """Bind mounts that make this venv's pycxi CLI runnable inside a busybox container."""
    ro = {"/lib", "/lib64", "/usr/lib", sys.base_prefix, sys.prefix, REPO}
    out = []
    for src in sorted(p for p in ro if os.path.exists(p)):
        out += ["-v", f"{src}:{src}:ro"]
    sim = os.environ["PYCXI_SIM_ROOT"]
    out += ["-v", f"{sim}:{sim}"]
    return out


def _sandbox(pm, name):
    return pm("inspect", name, "--format", "{{.NetworkSettings.SandboxKey}}").stdout.strip()


def _access(pm, name, svc, vni, dev="cxi0"):
    cli = os.path.join(os.path.dirname(PY), "pycxi")
    return pm("exec", "-e", f"PYCXI_SIM_ROOT={os.environ['PYCXI_SIM_ROOT']}", name, cli, "-d", dev,
              "access-check", "--svc", str(svc), "--vni", str(vni), check=False)


def test_podman_end_to_end(podman, cni_env):
    pm = podman
    pm("run", "-d", "--name", "c1", "--network", "cxneta", *_mounts(), "--rootfs", pm.rootfs,
       "/bin/sleep", "600")
    ino1 = os.stat(_sandbox(pm, "c1")).st_ino
    svcs = services()
    assert [(r["netns"], r["vnis"]) for r in svcs["cxi0"]] == [(ino1, [4100])]
    assert [(r["netns"], r["vnis"]) for r in svcs["cxi1"]] == [(ino1, [4100])]
    svc1 = svcs["cxi0"][0]["svc"]

    ok = _access(pm, "c1", svc1, 4100)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    pm("run", "-d", "--name", "c2", "--network", "cxnetb", *_mounts(), "--rootfs", pm.rootfs,
       "/bin/sleep", "600")
    ino2 = os.stat(_sandbox(pm, "c2")).st_ino
    svc2 = [r["svc"] for r in services()["cxi0"] if r["netns"] == ino2]
    assert len(svc2) == 1 and svc2[0] != svc1
    assert _access(pm, "c2", svc2[0], 4200).returncode == 0
    for vni in (4100, 4200):                      # c2 cannot use c1's service
        p = _access(pm, "c2", svc1, vni)
        assert p.returncode != 0 and "EPERM" in p.stdout + p.stderr, p.stdout + p.stderr

    pm("rm", "-f", "-t", "0", "c1", "c2")
    assert count_services() == 0
    assert records(cni_env.data_dir) == []


def test_the_recipe_script_runs_as_written():
    """cni/podman/demo.sh, the recipe docs/cni.md points at, runs to its end (it once read
    records from a state layout that had moved, and nothing noticed)."""
    r = subprocess.run([os.path.join(REPO, "cni", "podman", "demo.sh")], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHON=PY))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "services left after podman rm: 0" in r.stdout and r.stdout.rstrip().endswith("OK")

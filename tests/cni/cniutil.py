"""Helpers of the cxi CNI plugin tests (used by conftest.py's fixtures and the test modules):
a per-test software CXI device (PYCXI_SIM_ROOT), real
network namespaces (always removed), the installed ``cxi`` launcher and a libcni-style driver.

Every namespace is named ``cxt<pid>x<n>``; the interface plugin's host side lives in a host-side
namespace of its own, so the machine's network namespace is never touched.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable
VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
DEBIAN_CNI = "/usr/lib/cni"

if HERE not in sys.path:
    sys.path.append(HERE)
from pycxi.cni.cnitool import CniTool, PluginError  # noqa: E402


def _core_ready():
    try:
        import pycxi
        pycxi.Device  # noqa: B018
        return True
    except Exception:
        return False


need_core = pytest.mark.skipif(not _core_ready(), reason="pycxi core (pycxi.Device) not built")
need_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                               reason="needs root and iproute2 for network namespaces")
need_bridge = pytest.mark.skipif(not os.access(os.path.join(DEBIAN_CNI, "bridge"), os.X_OK),
                                 reason="Debian containernetworking-plugins not installed")


def pycxi_cmd():
    exe = os.path.join(os.path.dirname(PY), "pycxi")
    if os.access(exe, os.X_OK):
        return [exe]
    return [PY, "-c", "import sys; from pycxi.cli import main; sys.exit(main())"]


def _cli_has(sub):
    p = subprocess.run(pycxi_cmd() + [sub, "--help"], capture_output=True, text=True)
    return p.returncode == 0


# Until the core's CLI offers them: the same operations through the Python API.
_ACCESS = r"""
import sys, errno, pycxi
from pycxi.errors import CxiLibError
svc, vni, dev = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
try:
    with pycxi.Device(dev) as d:
        lni = d.alloc_lni(svc)
        try:
            lni.alloc_domain(vni).close()
        finally:
            lni.close()
except CxiLibError as e:
    print(errno.errorcode.get(e.errno, e.errno), e); sys.exit(1)
print("OK")
"""


def access_cmd(svc, vni, dev="cxi0"):
    if _cli_has("access-check"):
        return pycxi_cmd() + ["-d", dev, "access-check", "--svc", str(svc), "--vni", str(vni)]
    return [PY, "-c", _ACCESS, str(svc), str(vni), dev]


def write_node_conf(path, doc):
    """The node's policy file for the plugin (root-owned, 0644, as pycxi.cni.policy requires)."""
    path = str(path)
    with open(path, "w") as f:
        json.dump(doc, f)
    os.chmod(path, 0o644)
    return path


def sim_reset(n, env):
    if _cli_has("sim"):
        return run(pycxi_cmd() + ["sim", "reset", "--devices", str(n)], env=env)
    return run([PY, "-c", f"from pycxi.device import sim_reset; sim_reset({n})"], env=env)


def run(cmd, env=None, netns=None, check=False, timeout=60, input=None):
    if netns:
        cmd = ["ip", "netns", "exec", netns] + list(cmd)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check,
                          timeout=timeout, input=input)


# ---------------------------------------------------------------------------------------------
# the software device

DUMP = r"""
import json, pycxi
out = {}
for info in pycxi.devices():
    with pycxi.Device(info.name) as dev:
        rows = []
        for d in dev.svc_list():
            if d.svc_id == 1:
                continue
            try:
                ns = dev.get_netns(d.svc_id)
            except Exception:
                ns = None
            rows.append({"svc": d.svc_id, "enable": bool(d.enable), "vnis": list(d.vnis or ()),
                         "netns": ns})
        out[info.name] = rows
print(json.dumps(out))
"""


def services(env=None):
    """{device: [{svc, enable, vnis, netns}]} of every non-default service, from a fresh process."""
    p = run([PY, "-c", DUMP], env=env or dict(os.environ))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def pyrun(code, env=None, netns=None):
    """Run pycxi code in a fresh process (the software device binds its root once per process,
    so tests never open devices in the pytest process itself)."""
    p = run([PY, "-c", code], env=env or dict(os.environ), netns=netns)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def count_services(env=None):
    return sum(len(v) for v in services(env).values())


# ---------------------------------------------------------------------------------------------
# network namespaces

_seq = itertools.count()


class Netns:
    def __init__(self):
        self.names = []

    def add(self, prefix="cxt"):
        name = f"{prefix}{os.getpid()}x{next(_seq)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], capture_output=True)
        return name

    @staticmethod
    def path(name):
        return f"/run/netns/{name}"

    def delete(self, name):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def cleanup(self):
        for n in reversed(self.names):
            if os.path.exists(self.path(n)):
                subprocess.run(["ip", "netns", "del", n], capture_output=True)
        self.names.clear()



# ---------------------------------------------------------------------------------------------
# plugin installation and the driver



def cxi_conf(cni_env, **kw):
    conf = {"type": "cxi", "dataDir": cni_env.data_dir, "logFile": str(cni_env.tmp / "cxi.log"),
            "logLevel": "debug"}
    conf.update(kw)
    return conf


def conflist(version, name, cxi, cni_env, bridge="cnibr0", subnet="10.88.7.0/24"):
    """interface plugin (bridge; the test-only vethplug for 1.1.0, which Debian's bridge 1.1.1
    does not speak) then cxi."""
    if version == "1.1.0":
        first = {"type": "vethplug"}
    else:
        first = {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                          "dataDir": cni_env.ipam_dir}}
    return {"cniVersion": version, "name": name, "plugins": [first, cxi]}



def plugin_call(cni_env, command, conf, cid="c1", netns_path="", ifname="eth0", args="",
                timeout=60, extra_env=None):
    """Run the installed cxi launcher once; returns (rc, parsed stdout or None, stderr)."""
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command,
           "CNI_PATH": ":".join(cni_env.path)}
    env.update(cni_env.env)
    if command not in ("GC", "STATUS", "VERSION"):
        env.update(CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_ARGS=args)
        if netns_path:
            env["CNI_NETNS"] = netns_path
    for k, v in (extra_env or {}).items():    # None: take the variable away
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    p = subprocess.run([os.path.join(cni_env.bin, "cxi")], input=json.dumps(conf).encode(),
                       env=env, capture_output=True, timeout=timeout)
    out = p.stdout.decode()
    return p.returncode, (json.loads(out) if out.strip() else None), p.stderr.decode()


def records(data_dir):
    out = []
    for root, dirs, files in os.walk(data_dir):
        if "by-netns" in dirs:
            dirs.remove("by-netns")       # the index (symlinks), checked by index_links()
        out.extend(os.path.join(root, f) for f in files if f.endswith(".json"))
    return out


def index_links(data_dir):
    d = os.path.join(data_dir, "by-netns")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.1.2.3/24", "interface": 0}]}

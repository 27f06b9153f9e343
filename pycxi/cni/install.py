"""Install the ``cxi`` plugin into a CNI bin directory, and print or patch a conflist.

    python -m pycxi.cni.install --bin-dir /opt/cni/bin [--conflist /etc/cni/net.d/10-x.conflist]
                                [--plugin-conf '{"vnis": [1024]}'] [--print]
    python -m pycxi.cni.install --bin-dir auto [--host-root /host]   # the runtime's bin dir(s)
    python -m pycxi.cni.install --show-dirs                          # where the runtime looks

The launcher is a three-line script whose shebang is this interpreter with ``-IS`` (isolated, no
``site``): PYTHON* variables cannot hijack it, the machine's slow ``python3`` shim is never used,
and ``site`` (``.pth`` files) is not paid for on every call.  Because ``-S`` skips ``site``, the
launcher puts the directory that holds the ``pycxi`` package (site-packages, or the source tree
of an editable install) on ``sys.path`` itself.
"""
import argparse
import json
import os
import sys

LAUNCHER = """#!{python} -IS
# cxi CNI plugin launcher, written by `python -m pycxi.cni.install` (pycxi {version})
import sys; sys.path.insert(0, {path!r})
from pycxi.cni.plugin import main; sys.exit(main())
"""


def package_root():
    import pycxi
    return os.path.dirname(os.path.dirname(os.path.abspath(pycxi.__file__)))


def launcher_text(python=None, root=None):
    import pycxi
    python = python or sys.executable
    if " " in python or len(python) > 120:
        raise SystemExit(f"interpreter path unusable in a shebang: {python!r}")
    return LAUNCHER.format(python=python, path=root or package_root(),
                           version=getattr(pycxi, "__version__", "?"))


def _write_atomic(path, text, mode):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def precompile():
    """Byte-compile pycxi so that no plugin call pays for compiling (or cannot cache, on a
    read-only tree).  The launcher runs with -I, which ignores PYTHONDONTWRITEBYTECODE."""
    import compileall
    import pycxi
    pkg = os.path.dirname(os.path.abspath(pycxi.__file__))
    try:
        compileall.compile_dir(pkg, quiet=1)
    except OSError:
        pass


def install_launcher(bin_dir, python=None, name="cxi", compile=True):
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    _write_atomic(path, launcher_text(python), 0o755)
    if compile:
        precompile()
    return path


# Where runtimes look for CNI plugins and configs.  containerd reads its CRI plugin's ``cni``
# table (1.x: io.containerd.grpc.v1.cri; 2.x: io.containerd.cri.v1.runtime, ``bin_dirs`` from
# 2.1); k3s and RKE2 generate such a config; without one, containerd's built-in defaults apply:
# upstream /opt/cni/bin, Debian/Ubuntu's package /usr/lib/cni.
CONTAINERD_CONFIGS = ("/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
                      "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
                      "/etc/containerd/config.toml")
CRI_CNI_TABLES = ('plugins."io.containerd.grpc.v1.cri".cni', "plugins.cri.cni",
                  'plugins."io.containerd.cri.v1.runtime".cni')
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
DEFAULT_CONF_DIR = "/etc/cni/net.d"
# k3s without a generated config yet: current releases keep a stable CNI bin dir in data/cni
# (older ones used data/current/bin); its conflists live under agent/etc/cni/net.d
K3S = "/var/lib/rancher/k3s"
K3S_BIN_DIRS = (K3S + "/data/cni", K3S + "/data/current/bin")
K3S_CONF_DIR = K3S + "/agent/etc/cni/net.d"


def _strip_comment(line):
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def _toml_cni_table(text):
    """{"bin_dir": [...], "conf_dir": str} from a containerd config.toml's CRI ``cni`` table.
    A small reader for the few keys needed (tomllib is 3.11+): tables, strings, string lists."""
    import re
    out = {}
    table = None
    for raw in text.splitlines():
        line = _strip_comment(raw).strip()
        if not line:
            continue
        m = re.fullmatch(r"\[\s*(.+?)\s*\]", line)
        if m:
            table = re.sub(r"\s*\.\s*", ".", m.group(1)).replace("'", '"')
            continue
        if table not in CRI_CNI_TABLES:
            continue
        m = re.fullmatch(r"(bin_dirs?|conf_dir)\s*=\s*(.+)", line)
        if not m:
            continue
        vals = re.findall(r'"([^"]*)"|\'([^\']*)\'', m.group(2))
        vals = [a or b for a, b in vals]
        if m.group(1) == "conf_dir" and vals:
            out["conf_dir"] = vals[0]
        elif vals:
            out["bin_dir"] = vals
    return out


def find_cni_dirs(host_root="/"):
    """The runtime's CNI bin dirs and conf dir on this node: ``(bin_dirs, conf_dir, source)``.

    Paths are the node's (without ``host_root``, the prefix under which the node's filesystem is
    visible, e.g. ``/host`` in the DaemonSet)."""
    def on_host(p):
        return os.path.join(host_root, p.lstrip("/"))

    for cfg in CONTAINERD_CONFIGS:
        try:
            with open(on_host(cfg)) as f:
                found = _toml_cni_table(f.read())
        except OSError:
            continue
        if found.get("bin_dir") or found.get("conf_dir"):
            k3s = cfg.startswith(K3S)
            bins = found.get("bin_dir") or ([K3S_BIN_DIRS[0]] if k3s else list(DEFAULT_BIN_DIRS))
            conf = found.get("conf_dir") or (K3S_CONF_DIR if k3s else DEFAULT_CONF_DIR)
            return bins, conf, cfg
    if os.path.isdir(on_host(K3S)):
        bins = [d for d in K3S_BIN_DIRS if os.path.isdir(on_host(d))][:1] or [K3S_BIN_DIRS[0]]
        return bins, K3S_CONF_DIR, f"k3s ({K3S})"
    bins = [d for d in DEFAULT_BIN_DIRS if os.path.isdir(on_host(d))] or [DEFAULT_BIN_DIRS[0]]
    return bins, DEFAULT_CONF_DIR, "defaults (no containerd config with a cni table)"


def example_conflist(name="cxinet", plugin_conf=None):
    cxi = {"type": "cxi"}
    cxi.update(plugin_conf or {})
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": "cni-cxi0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/24"}]]}},
            cxi,
        ],
    }


def patch_conflist(conflist, plugin_conf=None):
    """Append (or update) the chained ``{"type": "cxi", ...}`` entry.  Returns the new dict."""
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise SystemExit("not a conflist: no 'plugins' list (chain cxi after an interface plugin)")
    entry = {"type": "cxi"}
    entry.update(plugin_conf or {})
    for i, p in enumerate(plugins):
        if isinstance(p, dict) and p.get("type") == "cxi":
            plugins[i] = dict(p, **entry)
            break
    else:
        plugins.append(entry)
    return conflist


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pycxi.cni.install", description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", action="append",
                    help="CNI bin directory to write the cxi launcher into (repeat for several); "
                         "'auto': the runtime's, from its containerd config (k3s, RKE2, "
                         "/etc/containerd) or the defaults (/opt/cni/bin, Debian's /usr/lib/cni)")
    ap.add_argument("--host-root", default="/",
                    help="where the node's filesystem is mounted (the DaemonSet: /host); "
                         "--bin-dir auto looks and writes there, the launcher keeps node paths")
    ap.add_argument("--show-dirs", action="store_true",
                    help="print the runtime's CNI bin and conf dirs as found (JSON) and exit")
    ap.add_argument("--python", help="interpreter for the shebang (default: this one)")
    ap.add_argument("--conflist", help="conflist file to patch in place (cxi appended to its chain)")
    ap.add_argument("--plugin-conf", default="{}", help="JSON object merged into the cxi entry")
    ap.add_argument("--print", dest="print_", action="store_true",
                    help="print the (patched or example) conflist on stdout")
    ap.add_argument("--name", default="cxinet", help="network name of the example conflist")
    a = ap.parse_args(argv)
    try:
        plugin_conf = json.loads(a.plugin_conf)
        if not isinstance(plugin_conf, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        ap.error(f"--plugin-conf: {exc}")
    if a.show_dirs:
        bins, conf_dir, source = find_cni_dirs(a.host_root)
        print(json.dumps({"binDirs": bins, "confDir": conf_dir, "source": source}))
        return 0
    bin_dirs = []
    for d in a.bin_dir or ():
        if d == "auto":
            bins, conf_dir, source = find_cni_dirs(a.host_root)
            print(f"CNI dirs from {source}: bin {', '.join(bins)}; conf {conf_dir}", file=sys.stderr)
            bin_dirs.extend(bins)
        else:
            bin_dirs.append(d)
    for d in dict.fromkeys(bin_dirs):
        path = install_launcher(os.path.join(a.host_root, d.lstrip("/")) if d.startswith("/") else d,
                                a.python)
        print(f"installed {path}", file=sys.stderr)
    conf = None
    if a.conflist:
        with open(a.conflist) as f:
            conf = patch_conflist(json.load(f), plugin_conf)
        _write_atomic(a.conflist, json.dumps(conf, indent=2) + "\n", 0o644)
        print(f"patched {a.conflist}", file=sys.stderr)
    if a.print_ or not (bin_dirs or a.conflist):
        if conf is None:
            conf = example_conflist(a.name, plugin_conf)
        print(json.dumps(conf, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Install the ``cxi`` plugin into a CNI bin directory, and print or patch a conflist.

    python -m pycxi.cni.install --bin-dir /opt/cni/bin [--conflist /etc/cni/net.d/10-x.conflist]
                                [--plugin-conf '{"vnis": [1024]}'] [--print]

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
    ap.add_argument("--bin-dir", help="CNI bin directory to write the cxi launcher into")
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
    if a.bin_dir:
        path = install_launcher(a.bin_dir, a.python)
        print(f"installed {path}", file=sys.stderr)
    conf = None
    if a.conflist:
        with open(a.conflist) as f:
            conf = patch_conflist(json.load(f), plugin_conf)
        _write_atomic(a.conflist, json.dumps(conf, indent=2) + "\n", 0o644)
        print(f"patched {a.conflist}", file=sys.stderr)
    if a.print_ or not (a.bin_dir or a.conflist):
        if conf is None:
            conf = example_conflist(a.name, plugin_conf)
        print(json.dumps(conf, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

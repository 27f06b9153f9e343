"""`python -m build` makes an sdist and a wheel that install in a fresh venv and work.

Real parts: the PEP 517 build (setuptools + Cython through `python -m build`), pip, fresh
venvs made by `venv`, and the installed console scripts run as processes.  No network:
the build runs without isolation against the build tools this venv already has, and the
fresh venvs install with ``--no-index`` (PyYAML, the one runtime dependency, is left out
with ``--no-deps``: the smoke test does not read YAML, and the dependency is checked in the
metadata instead).  The extension is compiled from the sdist against the software device
(there is no libcxi on CI machines): once by `python -m build` (its wheel is built from the
sdist), once by pip installing the sdist.
"""
import email
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from coreutil import REPO

pytestmark = pytest.mark.slow

PY = sys.executable


def _version():
    ns = {}
    with open(os.path.join(REPO, "pycxi", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYCXI_BACKEND", "PYCXI_LIBCXI", "PYTHON", "PKG_CONFIG"))}
    env.update(CFLAGS="-O0", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def copy_tree(src):
    """A copy of the files git tracks or would track (new, not ignored): no build/, .venv
    or generated .c can leak into what is built from it."""
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(REPO, rel)):
            os.makedirs(src / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), src / rel)
    return src


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist path, wheel path), built once from a copy of the tree."""
    top = tmp_path_factory.mktemp("pkg")
    src, out = copy_tree(top / "src"), top / "dist"
    r = subprocess.run([PY, "-m", "build", "--no-isolation", "-o", str(out), str(src)],
                       capture_output=True, text=True, env=_env(), cwd=top)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdists, wheels = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return sdists[0], wheels[0]


def test_sdist_has_the_sources_the_extension_needs(dist):
    sdist, _ = dist
    v = _version()
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for need in ("LICENSE", "README.md", "setup.py", "pyproject.toml", "pycxi/device.pyx",
                 "pycxi/svc.pyx", "pycxi/libcxi_enums.pyx", "pycxi/device.pxd", "pycxi/svc.pxd",
                 "pycxi/libcxi.pxd", "pycxi/compat.h", "pycxi/device.pyi", "pycxi/py.typed",
                 "src/sim.c", "src/sim.h", "include/libcxi/libcxi.h",
                 "include/uapi/misc/cxi.h", "include/uapi/ethernet/cxi-abi.h",
                 "pycxi/vni/manifests/crds.yaml", "cni/k8s/Containerfile",
                 "deploy/kustomization.yaml", "deploy/controller/Containerfile"):
        assert need in names, need
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]
    # Cython output is rebuilt from the .pyx, never shipped stale
    assert not [n for n in names if n.startswith("pycxi/") and n.endswith(".c")]
    assert sdist.name == f"pycxi-{v}.tar.gz"


def test_wheel_metadata_license_version_entry_points(dist):
    _, wheel = dist
    v = _version()
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(f"pycxi-{v}.dist-info/METADATA"))
        eps = z.read(f"pycxi-{v}.dist-info/entry_points.txt").decode()
        names = z.namelist()
    assert meta["Version"] == v
    assert meta["License-Expression"] == "BSD-2-Clause"
    assert meta["License-File"] == "LICENSE" and f"pycxi-{v}.dist-info/licenses/LICENSE" in names
    assert any(r.startswith("PyYAML") for r in meta.get_all("Requires-Dist"))
    assert "pycxi = pycxi.cli:main" in eps and "cxi = pycxi.cni.plugin:main" in eps
    for typed in ("pycxi/py.typed", "pycxi/device.pyi", "pycxi/svc.pyi"):
        assert typed in names
    assert [n for n in names if n.startswith("pycxi/device.") and n.endswith(".so")]
    lic = open(os.path.join(REPO, "LICENSE")).read()
    assert "BSD 2-Clause" in lic and "pycxi developers" in lic


def _fresh_venv(path):
    """A venv without pip (fast); the build venv's pip installs into it (``pip --python``)."""
    subprocess.run([PY, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def _build_tools_dir(path):
    """setuptools and Cython from this venv, alone on a path, for a --no-build-isolation build."""
    import importlib.metadata as md

    path.mkdir()
    for dist_name in ("setuptools", "Cython"):
        d = md.distribution(dist_name)
        tops = {str(f).split("/")[0] for f in d.files if not str(f).startswith("..")}
        for top in tops:
            src = os.path.join(str(d.locate_file("")), top)
            if os.path.exists(src) and not top.endswith(".pth") and not (path / top).exists():
                os.symlink(src, path / top)
    return path


def _smoke(venv_py, where):
    """import + a service on the software device + both console scripts, from outside the repo."""
    bindir = venv_py.parent
    sim = where / "sim"
    sim.mkdir()
    env = _env(PYCXI_SIM_ROOT=str(sim), PATH=f"{bindir}:/usr/bin:/bin")
    code = ("import pycxi, pycxi.device, sys\n"
            "assert pycxi.__file__.startswith(sys.prefix), pycxi.__file__\n"
            "pycxi.device.sim_reset(1)\n"
            "with pycxi.Device(0) as d:\n"
            "    s = d.alloc_svc(pycxi.SvcDesc(vnis=[42], members=[('uid', 0)]))\n"
            "    with d.alloc_lni(s) as lni:\n"
            "        lni.alloc_domain(42).close()\n"
            "    d.destroy_svc(s)\n"
            "print(pycxi.__version__, pycxi.BACKEND)\n")
    r = subprocess.run([str(venv_py), "-c", code], capture_output=True, text=True, env=env,
                       cwd=where)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [_version(), "sim"]
    r = subprocess.run([str(bindir / "pycxi"), "-V"], capture_output=True, text=True, env=env,
                       cwd=where)
    assert r.returncode == 0 and r.stdout.startswith(f"pycxi {_version()} (sim"), r.stderr
    r = subprocess.run([str(bindir / "pycxi"), "svc", "list", "--json"], capture_output=True,
                       text=True, env=env, cwd=where)
    assert r.returncode == 0, r.stderr
    assert [s["svc_id"] for s in json.loads(r.stdout)] == [1]
    r = subprocess.run([str(bindir / "cxi")], capture_output=True, text=True, cwd=where,
                       env={**env, "CNI_COMMAND": "VERSION"}, input="")
    assert r.returncode == 0, r.stderr
    assert "1.0.0" in json.loads(r.stdout)["supportedVersions"]


def test_wheel_installs_in_a_fresh_venv(dist, tmp_path):
    _, wheel = dist
    py = _fresh_venv(tmp_path / "venv")
    r = subprocess.run([PY, "-m", "pip", "--python", str(py), "install", "-q", "--no-index",
                        "--no-deps", str(wheel)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    _smoke(py, tmp_path)


def test_sdist_installs_in_a_fresh_venv(dist, tmp_path):
    sdist, _ = dist
    py = _fresh_venv(tmp_path / "venv")
    tools = _build_tools_dir(tmp_path / "buildtools")
    # The build backend runs in the fresh venv's interpreter; only the build tools are added.
    r = subprocess.run([PY, "-m", "pip", "--python", str(py), "install", "-q", "--no-index",
                        "--no-deps", "--no-build-isolation", str(sdist)],
                       capture_output=True, text=True, env=_env(PYTHONPATH=str(tools)),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    _smoke(py, tmp_path)


def test_libcxi_backend_fails_rather_than_falls_back(tmp_path):
    """What the node image relies on: PYCXI_BACKEND=libcxi on a machine without libcxi makes
    no wheel at all (never one on the software device); the sdist, which compiles nothing,
    still builds."""
    src = copy_tree(tmp_path / "src")
    env = _env(PYCXI_BACKEND="libcxi", PKG_CONFIG_PATH=str(tmp_path / "none"))
    r = subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-index", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path / "out"), str(src)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0
    assert "PYCXI_BACKEND=libcxi but no libcxi was found" in r.stdout + r.stderr
    assert not list((tmp_path / "out").glob("*.whl"))  # (no dir at all is fine too)
    r = subprocess.run([PY, "-m", "build", "--sdist", "--no-isolation", "-o",
                        str(tmp_path / "sd"), str(src)], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "sd").glob("pycxi-*.tar.gz"))) == 1

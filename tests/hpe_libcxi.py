"""HPE's real libcxi for the tests: built once per set of inputs by scripts/build-hpe-libcxi.sh
from the upstream source tarballs in $PYCXI_HPE_SRC (with our patches where a flavour names
them), cached in the temp dir across sessions, shared by concurrent sessions through a lock."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPE_SRC = os.environ.get("PYCXI_HPE_SRC", "")
BUILD_SCRIPT = os.path.join(REPO, "scripts", "build-hpe-libcxi.sh")
CACHE = os.path.join(tempfile.gettempdir(), "pycxi-hpe-libcxi")

#: name -> (release, with our driver + libcxi patches, with upstream's test programs)
FLAVOURS = {
    "12.0.2": ("12.0.2", False, False),
    "12.0.2+patches": ("12.0.2", True, False),
    "13.1.0": ("13.1.0", False, False),
    "13.1.0+patches": ("13.1.0", True, True),    # libexec/libcxi-tests/libcxi_test
    "14.0.0": ("14.0.0", False, False),
}


def require_sources():
    if not HPE_SRC:
        pytest.skip("PYCXI_HPE_SRC is unset: no HPE sources (shs-libcxi, shs-cassini-headers, "
                    "the driver's include/ as tarballs) to build the real libcxi from")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYCXI_", "PKG_CONFIG")) and k not in ("PYTHONPATH", "CFLAGS")}
    env.update(extra)
    return env


def _patch_dirs(release):
    return [os.path.join(REPO, "patches", part, f"release-shs-{release}")
            for part in ("shs-cxi-driver", "shs-libcxi")]


def _inputs(release, patched):
    files = [BUILD_SCRIPT] + [os.path.join(HPE_SRC, f"{t}-{release}.tar.gz")
                              for t in ("shs-libcxi", "shs-cassini-headers", "shs-cxi-driver-include")]
    if patched:
        for d in _patch_dirs(release):
            files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".patch"))
    return files


def libcxi_prefix(name: str) -> str:
    """The install prefix of flavour ``name`` (built now, or reused from an earlier build of
    the same inputs)."""
    require_sources()
    release, patched, tests = FLAVOURS[name]
    h = hashlib.sha256(b"tests" if tests else b"")
    for f in _inputs(release, patched):
        with open(f, "rb") as fh:
            h.update(f.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    os.makedirs(CACHE, exist_ok=True)
    prefix = os.path.join(CACHE, f"{name}-{h.hexdigest()[:16]}")
    with open(prefix + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(prefix, ".complete")):
            return prefix
        shutil.rmtree(prefix, ignore_errors=True)
        cmd = [BUILD_SCRIPT, HPE_SRC, release, prefix]
        if patched:
            drv, lib = _patch_dirs(release)
            cmd += ["--driver-patches", drv, "--libcxi-patches", lib]
        # its own process group, so that a timeout stops make and the compilers too
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True,
                             env=clean_env(JOBS="1", PATH=os.environ["PATH"],
                                           **({"LIBCXI_TESTS": "1"} if tests else {})))
        try:
            out, _ = p.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.communicate()
            shutil.rmtree(prefix, ignore_errors=True)
            raise AssertionError(f"libcxi {name}: no build within 20 minutes")
        if p.returncode != 0:
            shutil.rmtree(prefix, ignore_errors=True)
            raise AssertionError(f"libcxi {name} did not build:\n{out[-4000:]}")
        open(os.path.join(prefix, ".complete"), "w").close()
        return prefix


def copy_tree(dst: str, tests=()) -> str:
    """What setup.py and ``tests`` need: never include/ or src/, so that nothing but the
    installed libcxi can provide the headers and the implementation."""
    os.makedirs(dst)
    for f in ("setup.py", "pyproject.toml"):
        shutil.copy2(os.path.join(REPO, f), dst)
    # copy2 keeps mtimes, so cythonize reuses up-to-date generated .c files
    shutil.copytree(os.path.join(REPO, "pycxi"), os.path.join(dst, "pycxi"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    os.makedirs(os.path.join(dst, "tests"))
    for f in ("conftest.py", "coreutil.py", *[os.path.basename(t) for t in tests]):
        shutil.copy2(os.path.join(REPO, "tests", f), os.path.join(dst, "tests", f))
    return dst


def pycxi_tree(name: str, prefix: str, dst: str, tests=()) -> str:
    """:func:`copy_tree`, built against ``prefix``."""
    copy_tree(dst, tests)
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dst,
                       capture_output=True, text=True, timeout=600,
                       env=clean_env(PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"),
                                     PYCXI_BACKEND="libcxi", CFLAGS="-O0"))
    assert r.returncode == 0, f"pycxi against {name}:\n{(r.stdout + r.stderr)[-4000:]}"
    return dst

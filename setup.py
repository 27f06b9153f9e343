"""Build pycxi against a system libcxi when there is one, else the software CXI device.

PYCXI_BACKEND=sim|libcxi|auto (default auto) chooses; PYCXI_LIBCXI_PREFIX points at a
libcxi installed outside pkg-config's path.  An explicit choice that cannot be met
fails the build with a message saying why.
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _fail(msg):
    sys.stderr.write(f"pycxi build: {msg}\n")
    raise SystemExit(1)


def _pkg_config(*args):
    exe = shutil.which("pkg-config")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, *args, "libcxi"], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError:
        return None
    return shlex.split(out.stdout)


def _find_libcxi():
    """(include_dirs, library_dirs, libraries, extra_link_args) or None."""
    prefix = os.environ.get("PYCXI_LIBCXI_PREFIX")
    if prefix:
        inc = os.path.join(prefix, "include")
        libdirs = [d for d in (os.path.join(prefix, "lib64"), os.path.join(prefix, "lib"))
                   if os.path.isdir(d)]
        if not os.path.exists(os.path.join(inc, "libcxi", "libcxi.h")):
            _fail(f"PYCXI_LIBCXI_PREFIX={prefix}: no include/libcxi/libcxi.h there")
        return [inc], libdirs, ["cxi"], [f"-Wl,-rpath,{d}" for d in libdirs]
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is None or libs is None:
        return None
    incs = [f[2:] for f in cflags if f.startswith("-I")]
    libdirs = [f[2:] for f in libs if f.startswith("-L")]
    names = [f[2:] for f in libs if f.startswith("-l")] or ["cxi"]
    return incs, libdirs, names, [f"-Wl,-rpath,{d}" for d in libdirs]


def _compiles(code, incs, libdirs, libs, link, errors=None):
    """Does a test program build against the given libcxi?  (errors: gets the compiler's output)"""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            # HPE's cxi_prov_hw.h (included by libcxi.h) calls memset without <string.h>;
            # the extension's sources include it first too (pycxi/compat.h, Python.h).
            f.write("#include <string.h>\n#include <libcxi/libcxi.h>\n" + code)
        # An undeclared function must not pass for a declared one (gcc < 14 only warns).
        cmd = [cc, "-Werror=implicit-function-declaration", src, "-o",
               os.path.join(tmp, "probe")] + [f"-I{d}" for d in incs]
        if link:
            cmd += [f"-L{d}" for d in libdirs] + [f"-l{n}" for n in libs]
        else:
            cmd.append("-c")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if errors is not None:
            errors.append(r.stderr)
        return r.returncode == 0


def _config():
    choice = os.environ.get("PYCXI_BACKEND", "auto").strip().lower()
    if choice not in ("auto", "sim", "libcxi"):
        _fail(f"PYCXI_BACKEND={choice!r}: expected sim, libcxi or auto")
    found = None if choice == "sim" else _find_libcxi()
    if choice == "libcxi" and found is None:
        _fail("PYCXI_BACKEND=libcxi but no libcxi was found: install libcxi (pkg-config "
              "libcxi must succeed) or set PYCXI_LIBCXI_PREFIX to its install prefix")
    pkg = os.path.join(HERE, "pycxi")
    if found is None:
        return dict(include_dirs=[os.path.join(HERE, "include"), os.path.join(HERE, "src"), pkg],
                    define_macros=[("PYCXI_BACKEND_SIM", "1")],
                    sources=[os.path.join("src", "sim.c")], libraries=[], library_dirs=[],
                    extra_link_args=["-pthread"], backend="sim")
    incs, libdirs, libs, link_args = found
    macros = []
    errors = []
    if not _compiles("int main(void){struct cxil_dev *d=0; return cxil_get_svc(d,1,0);}\n",
                     incs, libdirs, libs, link=True, errors=errors):
        _fail(f"libcxi found ({incs}, {libdirs}) but a test program does not link against it:\n"
              + "\n".join(errors[0].strip().splitlines()[-15:]))
    if _compiles("int main(void){return cxil_svc_set_netns(0,1,1);}\n", incs, libdirs, libs, True):
        macros.append(("PYCXI_HAVE_SET_NETNS", "1"))
    if _compiles("int f(struct cxi_svc_desc *d){d->members[0].svc_member.netns=1;"
                 "d->members[0].type=CXI_SVC_MEMBER_NET_NS;return 0;}\n", incs, libdirs, libs, False):
        macros.append(("PYCXI_HAVE_MEMBER_NETNS", "1"))
    if _compiles("enum cxi_trig_cp t = ANY_LCID;\n", incs, libdirs, libs, False):
        macros.append(("PYCXI_HAVE_TRIG_CP", "1"))     # SHS 13.1 and later
    sys.stderr.write(f"pycxi build: libcxi backend, netns support: "
                     f"{[m for m, _ in macros] or 'none'}\n")
    return dict(include_dirs=incs + [pkg], define_macros=macros, sources=[], libraries=libs,
                library_dirs=libdirs, extra_link_args=link_args, backend="libcxi")


def _extensions():
    from Cython.Build import cythonize

    cfg = _config()
    common = dict(include_dirs=cfg["include_dirs"], define_macros=cfg["define_macros"],
                  # -O2 unless CFLAGS chooses a level (the CI builds use -O0)
                  extra_compile_args=([] if "-O" in os.environ.get("CFLAGS", "") else ["-O2"])
                  + ["-Wno-unused-function"])
    exts = [
        Extension("pycxi.svc", ["pycxi/svc.pyx"], **common),
        Extension("pycxi.libcxi_enums", ["pycxi/libcxi_enums.pyx"], **common),
        Extension("pycxi.device", ["pycxi/device.pyx", *cfg["sources"]], libraries=cfg["libraries"],
                  library_dirs=cfg["library_dirs"], extra_link_args=cfg["extra_link_args"], **common),
    ]
    return cythonize(exts, compiler_directives={"language_level": "3", "embedsignature": True},
                     include_path=[HERE])


def _source_only():
    """The extensions as sources, for commands that only list or package files (sdist,
    metadata): choosing a backend there would make `PYCXI_BACKEND=libcxi python -m build`
    fail at the sdist step on a machine without libcxi, which has nothing to compile."""
    return [Extension("pycxi.svc", ["pycxi/svc.pyx"]),
            Extension("pycxi.libcxi_enums", ["pycxi/libcxi_enums.pyx"]),
            Extension("pycxi.device", ["pycxi/device.pyx", os.path.join("src", "sim.c")])]


_NO_BUILD = {"sdist", "egg_info", "dist_info", "check"}
setup(ext_modules=_source_only() if sys.argv[1:2] and sys.argv[1] in _NO_BUILD else _extensions())

"""pycxi built against a *system* libcxi, for each netns flavour of its headers (issue 3).

There is no Slingshot NIC in CI, so the "system libcxi" is pycxi's software device
built as a shared ``libcxi.so`` and installed into a temporary prefix laid out like an
upstream install (``lib/libcxi.so``, ``lib/pkgconfig/libcxi.pc``, headers under
``include/libcxi/`` and ``include/uapi/``).  The installed headers are derived from our
``include/`` by text edits, one set per flavour:

* ``shs14``   upstream SHS 14.0: ``cxil_svc_set_netns``/``get_netns`` and
  ``CXI_SVC_MEMBER_NET_NS`` = 3, but no ``netns`` field in ``union cxi_svc_member``;
* ``patched`` our patched SHS 12/13.x headers (``include/`` as it is): both;
* ``shs12``   SHS 12.0.x with our patches: the member type and ``svc_member.netns``, but no
  set/get_netns (the 12.0.x kernel has no service enable; the library does not export them);
* ``none``    SHS 13.1 unpatched: no NET_NS member type (``CXI_SVC_MEMBER_MAX`` = 3), no
  set/get_netns ops or declarations; the library does not export them either.

pycxi is then built from a copy of the source tree through setup.py's system-library
path (``PYCXI_BACKEND=libcxi`` + ``pkg-config libcxi``) and the core service tests run
against that build in a subprocess.  The device behind the library is the same software
device in every flavour (it plays a kernel that has both netns ops); what changes is what
pycxi can reach through the headers.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

import hpe_libcxi
from coreutil import REPO

pytestmark = pytest.mark.slow

PY = sys.executable
CC = os.environ.get("CC", "gcc")

FLAVOURS = {
    "shs14": frozenset({"set_netns"}),
    "patched": frozenset({"member", "set_netns"}),
    "shs12": frozenset({"member"}),
    "none": frozenset(),
}

# The core service tests the libcxi builds must pass (the same files as the default build).
CORE_TESTS = ["tests/test_core_rules.py", "tests/test_core_isolation.py",
              "tests/test_core_props.py"]


# -- the installed headers of each flavour ------------------------------------------
def _sub(text, pattern, repl, what, flags=re.M):
    new, n = re.subn(pattern, repl, text, flags=flags)
    assert n >= 1, f"header transformation found nothing to do: {what}"
    return new


def flavour_headers(flavour):
    """{relative path under include/: text} for one flavour, from our include/."""
    rel = ["libcxi/libcxi.h", "uapi/misc/cxi.h", "uapi/ethernet/cxi-abi.h"]
    out = {r: open(os.path.join(REPO, "include", r)).read() for r in rel}
    if flavour == "patched":
        return out
    abi, lib = out["uapi/ethernet/cxi-abi.h"], out["libcxi/libcxi.h"]
    if flavour in ("shs14", "none"):
        # Neither SHS 14 nor unpatched 13.1 has the union field or our feature macro.
        abi = _sub(abi, r"^[^\n]*\n#define CXI_HAVE_SVC_MEMBER_NET_NS 1\n", "",
                   "CXI_HAVE_SVC_MEMBER_NET_NS")
        abi = _sub(abi, r"^\s*unsigned int netns;[^\n]*\n", "", "svc_member.netns")
    lib = _sub(lib, r"^[^\n]*\n#define CXIL_HAVE_SVC_NETNS 1\n", "", "CXIL_HAVE_SVC_NETNS")
    if flavour == "none":
        abi = _sub(abi, r"^\s*CXI_SVC_MEMBER_NET_NS,[^\n]*\n", "", "CXI_SVC_MEMBER_NET_NS")
    if flavour in ("shs12", "none"):
        abi = _sub(abi, r"^\s*CXI_OP_SVC_(SET|GET)_NETNS = \d+,\n", "", "CXI_OP_SVC_*_NETNS")
        abi = _sub(abi, r"CXI_OP_MAX = 86,", "CXI_OP_MAX = 84,", "CXI_OP_MAX")
        lib = _sub(lib, r"^CXIL_API int cxil_svc_(set|get)_netns\([^;]*;\n", "",
                   "cxil_svc_set/get_netns", flags=re.M | re.S)
    out["uapi/ethernet/cxi-abi.h"], out["libcxi/libcxi.h"] = abi, lib
    return out


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_flavour_headers_say_what_they_should(flavour, tmp_path):
    """Compile probes against each flavour's headers: the declarations are as upstream's."""
    h = flavour_headers(flavour)
    for r, text in h.items():
        os.makedirs(tmp_path / "include" / os.path.dirname(r), exist_ok=True)
        (tmp_path / "include" / r).write_text(text)

    def compiles(body):
        src = tmp_path / "probe.c"
        src.write_text("#include <libcxi/libcxi.h>\n" + body + "\n")
        return subprocess.run([CC, "-Werror=implicit-function-declaration", "-c", str(src),
                               "-o", str(tmp_path / "probe.o"), f"-I{tmp_path / 'include'}"],
                              capture_output=True).returncode == 0

    assert compiles("int f(struct cxil_dev *d){return cxil_get_svc(d,1,0);}")
    assert compiles("_Static_assert(sizeof(struct cxi_svc_desc) == 68, \"abi\");")
    has_enum = compiles("int x = CXI_SVC_MEMBER_NET_NS;")
    assert has_enum == (flavour != "none")
    assert compiles(f"_Static_assert(CXI_SVC_MEMBER_MAX == {3 if flavour == 'none' else 4}, \"m\");")
    assert compiles("int f(struct cxil_dev *d){unsigned n; return cxil_svc_get_netns(d,1,&n);}") \
        == (flavour in ("shs14", "patched"))
    assert compiles("int f(struct cxi_svc_desc *d){return d->members[0].svc_member.netns;}") \
        == (flavour in ("shs12", "patched"))
    assert compiles("int x = CXIL_HAVE_SVC_NETNS;") == (flavour == "patched")


# -- the temporary libcxi install and the pycxi build against it ---------------------
def install_libcxi(prefix, flavour):
    """The software device as <prefix>/lib/libcxi.so + libcxi.pc + the flavour's headers."""
    lib, pc = os.path.join(prefix, "lib"), os.path.join(prefix, "lib", "pkgconfig")
    os.makedirs(pc)
    for r, text in flavour_headers(flavour).items():
        path = os.path.join(prefix, "include", r)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    # The device plays a kernel with both netns ops, so it is always built from our full
    # headers; a 12.0.x or unpatched 13.1 libcxi has no set/get_netns: those do not export them.
    cmd = [CC, "-shared", "-fPIC", "-O1", "-pthread", f"-I{REPO}/include", f"-I{REPO}/src",
           os.path.join(REPO, "src", "sim.c"), "-o", os.path.join(lib, "libcxi.so"),
           "-Wl,-soname,libcxi.so"]
    if flavour in ("shs12", "none"):
        vs = os.path.join(prefix, "libcxi.map")
        with open(vs, "w") as f:
            f.write("{ global: *; local: cxil_svc_set_netns; cxil_svc_get_netns; };\n")
        cmd.append(f"-Wl,--version-script={vs}")
    subprocess.run(cmd, check=True, capture_output=True)
    with open(os.path.join(pc, "libcxi.pc"), "w") as f:
        f.write(f"prefix={prefix}\nexec_prefix=${{prefix}}\nlibdir=${{prefix}}/lib\n"
                "includedir=${prefix}/include\n\n"
                "Name: libcxi\nDescription: CXI userspace library (pycxi software device)\n"
                "Version: 1.0.0\nCflags: -I${includedir}\nLibs: -L${libdir} -lcxi\n")


def copy_tree(dst):
    hpe_libcxi.copy_tree(dst, CORE_TESTS)


clean_env = hpe_libcxi.clean_env


@pytest.fixture(scope="module")
def builds():
    """Build all three flavours in parallel (two cores); {flavour: (tree, prefix, log)}."""
    top = tempfile.mkdtemp(prefix="pycxi-libcxi-build-", dir="/tmp")
    procs = {}
    try:
        for flavour in sorted(FLAVOURS):
            prefix, tree = os.path.join(top, flavour, "prefix"), os.path.join(top, flavour, "src")
            install_libcxi(prefix, flavour)
            copy_tree(tree)
            env = clean_env(PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"),
                            PYCXI_BACKEND="libcxi", CFLAGS="-O0")
            procs[flavour] = (tree, prefix, subprocess.Popen(
                [PY, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        out = {}
        for flavour, (tree, prefix, p) in procs.items():
            log, _ = p.communicate(timeout=600)
            out[flavour] = (tree, prefix, log, p.returncode)
        yield out
    finally:
        for _, _, p in procs.values():
            if p.poll() is None:
                p.kill()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(params=sorted(FLAVOURS))
def build(request, builds):
    tree, prefix, log, rc = builds[request.param]
    assert rc == 0, f"pycxi build against the {request.param} libcxi failed:\n{log[-4000:]}"
    return request.param, tree, prefix, log


def run_in(tree, args, timeout=300, **env):
    return subprocess.run([PY, *args], cwd=tree, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(PYTHONPATH=tree, **env))


PROBE = r"""
import json, pycxi, pycxi.device
maps = open("/proc/self/maps").read()
print(json.dumps({"backend": pycxi.BACKEND, "methods": sorted(pycxi.NETNS_METHODS),
                  "file": pycxi.__file__, "device": pycxi.device.__file__,
                  "libcxi": sorted({l.split()[-1] for l in maps.splitlines()
                                    if l.endswith("/libcxi.so")})}))
"""


def test_build_uses_the_system_libcxi_of_its_flavour(build):
    flavour, tree, prefix, log = build
    expect = FLAVOURS[flavour]
    assert "pycxi build: libcxi backend" in log
    r = run_in(tree, ["-c", PROBE])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["backend"] == "libcxi"
    assert set(info["methods"]) == expect, f"{flavour}: NETNS_METHODS {info['methods']}"
    assert info["file"].startswith(tree) and info["device"].startswith(tree)
    assert info["libcxi"] == [os.path.join(prefix, "lib", "libcxi.so")]
    # the extension links libcxi and does not carry a device of its own
    nm = shutil.which("nm") and subprocess.run(["nm", "-D", "--defined-only", info["device"]],
                                               capture_output=True, text=True)
    if nm and nm.returncode == 0:
        assert "cxil_alloc_svc" not in nm.stdout and "pycxi_sim_reset" not in nm.stdout
    r = run_in(tree, ["-m", "pycxi.cli", "-V"])
    assert r.returncode == 0, r.stderr
    want = ", ".join(sorted(expect)) or "none"
    assert f"(libcxi; netns: {want})" in r.stdout


def test_core_service_tests_pass_through_the_libcxi_build(build, tmp_path):
    flavour, tree, prefix, log = build
    root = tmp_path / "sim-root"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o755)
    r = run_in(tree, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *CORE_TESTS],
               timeout=600, PYCXI_SIM_ROOT=str(root))
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, f"core tests through the {flavour} libcxi build:\n{tail}"
    assert re.search(r"\d+ passed", r.stdout), tail
    # every skip is a flavour skip naming this flavour
    for line in r.stdout.splitlines():
        if line.startswith("SKIPPED"):
            assert "netns" in line, line


# -- explicit choices that cannot be met ---------------------------------------------
def _setup_only(tmp_path):
    for f in ("setup.py", "pyproject.toml"):
        shutil.copy2(os.path.join(REPO, f), tmp_path)
    empty = tmp_path / "empty-pc"
    empty.mkdir()
    return str(empty)


def test_backend_libcxi_without_a_libcxi_fails_clearly(tmp_path):
    empty = _setup_only(tmp_path)
    r = subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=clean_env(PYCXI_BACKEND="libcxi", PKG_CONFIG_PATH=empty,
                                     PKG_CONFIG_LIBDIR=empty))
    assert r.returncode != 0
    assert "pycxi build: PYCXI_BACKEND=libcxi but no libcxi was found" in r.stderr
    assert "PYCXI_LIBCXI_PREFIX" in r.stderr and "pkg-config" in r.stderr
    assert "Traceback" not in r.stderr


def test_libcxi_prefix_without_headers_fails_clearly(tmp_path):
    _setup_only(tmp_path)
    r = subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=clean_env(PYCXI_BACKEND="libcxi",
                                     PYCXI_LIBCXI_PREFIX=str(tmp_path / "nowhere")))
    assert r.returncode != 0
    assert "no include/libcxi/libcxi.h there" in r.stderr and "Traceback" not in r.stderr


def test_bogus_backend_fails_clearly(tmp_path):
    _setup_only(tmp_path)
    r = subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=clean_env(PYCXI_BACKEND="bogus"))
    assert r.returncode != 0
    assert "pycxi build: PYCXI_BACKEND='bogus': expected sim, libcxi or auto" in r.stderr
    assert "Traceback" not in r.stderr


# -- HPE's real libcxi (issue 12) ----------------------------------------------------
# The flavours above are our own headers over our own library.  These are HPE's: libcxi
# built by scripts/build-hpe-libcxi.sh from the unmodified upstream sources of a release
# (plus our patches where named), installed into a prefix, and pycxi built against it as
# on a real node.  No NIC here: the tests show that pycxi builds, links HPE's libcxi.so.1,
# finds the netns methods of that release's headers, and fails cleanly when it opens a
# device that is not there.  Which of our own header flavours each one corresponds to:
HPE_FLAVOURS = {
    # name (tests/hpe_libcxi.py): (netns methods pycxi must find, our flavour)
    "12.0.2": (frozenset(), "none (and no svc enable/VNI range calls)"),
    "12.0.2+patches": (frozenset({"member"}), "shs12"),
    "13.1.0": (frozenset(), "none"),
    "13.1.0+patches": (frozenset({"member", "set_netns"}), "patched"),
    "14.0.0": (frozenset({"set_netns"}), "shs14"),
}
assert set(HPE_FLAVOURS) == set(hpe_libcxi.FLAVOURS)


@pytest.fixture(scope="session")
def hpe_builds():
    """{flavour: (tree, prefix, pycxi build log, rc)}: HPE's libcxi per flavour (cached across
    sessions in the temp dir), then pycxi built against it; two builds at a time."""
    hpe_libcxi.require_sources()
    from concurrent.futures import ThreadPoolExecutor

    top = tempfile.mkdtemp(prefix="pycxi-hpe-build-", dir="/tmp")

    def one(name):
        prefix = hpe_libcxi.libcxi_prefix(name)
        tree = os.path.join(top, name)
        copy_tree(tree)
        r = subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=tree,
                           capture_output=True, text=True, timeout=600,
                           env=clean_env(PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"),
                                         PYCXI_BACKEND="libcxi", CFLAGS="-O0"))
        return name, (tree, prefix, r.stdout + r.stderr, r.returncode)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            yield dict(pool.map(one, sorted(HPE_FLAVOURS)))
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(params=sorted(HPE_FLAVOURS))
def hpe_build(request, hpe_builds):
    tree, prefix, log, rc = hpe_builds[request.param]
    assert rc == 0, f"pycxi build against HPE's libcxi {request.param} failed:\n{log[-4000:]}"
    return request.param, tree, prefix, log


HPE_PROBE = r"""
import json, pycxi, pycxi.device
maps = open("/proc/self/maps").read()
print(json.dumps({"backend": pycxi.BACKEND, "methods": sorted(pycxi.NETNS_METHODS),
                  "libcxi": sorted({l.split()[-1] for l in maps.splitlines() if "/libcxi.so" in l})}))
"""


def test_pycxi_builds_against_hpe_libcxi(hpe_build):
    """setup.py's probe passes on HPE's headers (cxi_prov_hw.h needs <string.h> first), the
    extension links HPE's libcxi.so.1 and reports the netns methods of that release."""
    name, tree, prefix, log = hpe_build
    expect = HPE_FLAVOURS[name][0]
    assert "pycxi build: libcxi backend" in log
    assert "implicit declaration" not in log, log[-4000:]
    r = run_in(tree, ["-c", HPE_PROBE])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["backend"] == "libcxi"
    assert set(info["methods"]) == expect, f"{name}: NETNS_METHODS {info['methods']}"
    assert len(info["libcxi"]) == 1
    lib = info["libcxi"][0]
    assert lib.startswith(os.path.join(prefix, "lib", "libcxi.so.1")), lib
    # HPE's library, not our software device built as one
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True)
    assert "cxil_open_device" in nm.stdout and "pycxi_sim" not in nm.stdout
    r = run_in(tree, ["-m", "pycxi.cli", "-V"])
    assert r.returncode == 0, r.stderr
    assert f"(libcxi; netns: {', '.join(sorted(expect)) or 'none'})" in r.stdout
    # HPE's tools came with it (cxi_service is what admins compare pycxi's output with)
    assert os.access(os.path.join(prefix, "bin", "cxi_service"), os.X_OK)


def test_hpe_libcxi_build_without_a_nic_fails_cleanly(hpe_build):
    """No /dev/cxi0 here: the real libcxi says ENOENT, pycxi says so once, no traceback."""
    name, tree, prefix, log = hpe_build
    r = run_in(tree, ["-m", "pycxi.cli", "svc", "list"])
    assert r.returncode != 0
    assert "cxil_open_device" in r.stderr and "ENOENT" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_svc_calls_missing_from_a_release_are_weak(hpe_builds):
    """SHS 12.0.x's libcxi has no cxil_svc_enable/exclusive_cp/vni_range: the extension
    refers to them weakly, so it loads there (the previous test imported it) and the calls
    answer EOPNOTSUPP (compat.h); 13.1 and 14.0 bind them to their libcxi's versioned symbols."""
    for name, versioned in (("12.0.2", False), ("13.1.0", True), ("14.0.0", True)):
        tree, prefix, log, rc = hpe_builds[name]
        assert rc == 0, log[-4000:]
        pkg = os.path.join(tree, "pycxi")
        so = [os.path.join(pkg, f) for f in os.listdir(pkg) if f.startswith("device.") and f.endswith(".so")]
        nm = subprocess.run(["nm", "-D", "--undefined-only", *so], capture_output=True, text=True)
        for fn in ("cxil_svc_enable", "cxil_svc_set_vni_range", "cxil_svc_get_exclusive_cp"):
            refs = [l.split() for l in nm.stdout.splitlines() if l.split()[-1].split("@")[0] == fn]
            assert len(refs) == 1 and refs[0][0] == "w", (name, fn, nm.stdout)
            assert ("@LIBCXI_" in refs[0][-1]) == versioned, (name, refs)


def test_build_script_bad_input_fails_clearly(tmp_path):
    """scripts/build-hpe-libcxi.sh: usage, no source directory, missing tarballs, an unknown
    option: each a one-line reason and exit 2, nothing installed."""
    def run(*args, **env):
        return subprocess.run([hpe_libcxi.BUILD_SCRIPT, *args], capture_output=True, text=True, timeout=60,
                              env=clean_env(PATH=os.environ["PATH"], **env))
    prefix = tmp_path / "prefix"
    r = run("only-one-arg")
    assert r.returncode == 2 and r.stderr.startswith("usage: ")
    r = run("-", "13.1.0", str(prefix))
    assert r.returncode == 2 and "pass SRC_DIR or set PYCXI_HPE_SRC" in r.stderr
    r = run(str(tmp_path), "13.1.0", str(prefix))
    assert r.returncode == 2 and f"missing {tmp_path}/shs-libcxi-13.1.0.tar.gz" in r.stderr
    r = run("-", "13.1.0", str(prefix), "--bogus", PYCXI_HPE_SRC=str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("usage: ")
    assert not prefix.exists()

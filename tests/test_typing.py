"""`mypy --strict` on a script that uses pycxi's public API (the .pyi stubs + the lazy names).

Real mypy over the repository's stubs; a script with a type error must fail, so the check
is not vacuous.
"""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

from coreutil import REPO

pytest.importorskip("mypy", reason="mypy is in the test extra (pip install -e .[test])")

SAMPLE = '''\
"""A user script of the public API."""
from __future__ import annotations

import pycxi
from pycxi import CxiLibError, Device, SvcDesc, SvcMember


def make(dev: Device, netns: int) -> int:
    svc_id = dev.alloc_netns_svc(netns, [42], tcs=["BEST_EFFORT"])
    desc: SvcDesc = dev.get_svc(svc_id)
    assert desc.vnis == [42]
    return svc_id


def main() -> None:
    with pycxi.Device(0) as dev:
        info: pycxi.DevInfo = dev.info
        print(info.name, pycxi.BACKEND, sorted(pycxi.NETNS_METHODS), pycxi.__version__)
        sw: bool = pycxi.SOFTWARE_DEVICE
        s = dev.alloc_svc(SvcDesc(vnis=[7], members=[SvcMember.uid(0)]))
        with dev.alloc_lni(s) as lni:
            dom: pycxi.Domain = lni.alloc_domain(7)
            dom.close()
            cp = lni.alloc_trig_cp(7, "BEST_EFFORT", 0, 1)
            md: pycxi.Md = lni.map(bytearray(4096))
            eq: pycxi.Eq = lni.alloc_evtq(md)
            objs = [lni.alloc_pte(eq), lni.alloc_cmdq(eq, transmit=True, lcid=cp.lcid or 0),
                    lni.alloc_ct(), eq, md]
            for o in objs:
                o.close()
        try:
            make(dev, pycxi.netns_inode())
        except CxiLibError as e:
            print(e.errno)
        use: pycxi.RsrcUse = dev.svc_rsrc_use(s)
        print(use.in_use["AC"], pycxi.TC_NAMES, pycxi.RSRC_TYPES, pycxi.C_PID_ANY)
        for d in pycxi.devices():
            print(d.dev_id + 1)
        dev.destroy_svc(s)
'''


def mypy(tmp_path, text):
    (tmp_path / "sample.py").write_text(text)
    env = {**os.environ, "MYPYPATH": REPO}
    # follow-imports=silent: the sample's use of the API is checked, not pycxi's own modules
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                           "sample.py"], capture_output=True, text=True, cwd=tmp_path, env=env)


def test_public_api_script_passes_mypy_strict(tmp_path):
    r = mypy(tmp_path, SAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_type_error_through_the_lazy_names_is_caught(tmp_path):
    bad = SAMPLE + textwrap.dedent('''
        def wrong(dev: pycxi.Device) -> str:
            return dev.alloc_svc("not a descriptor")
        ''')
    r = mypy(tmp_path, bad)
    assert r.returncode == 1
    assert 'incompatible type "str"; expected "SvcDesc"' in r.stdout
    assert 'Incompatible return value type (got "int", expected "str")' in r.stdout


def test_every_lazy_name_is_declared_for_type_checkers():
    """The TYPE_CHECKING imports in pycxi/__init__.py cover _LAZY, from the same modules."""
    tree = ast.parse(open(os.path.join(REPO, "pycxi", "__init__.py")).read())
    lazy = declared = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_LAZY":
            lazy = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            declared = {a.asname or a.name: imp.module for imp in node.body
                        for a in imp.names if isinstance(imp, ast.ImportFrom)}
    assert lazy and declared == lazy


def test_import_pycxi_stays_lazy():
    r = subprocess.run([sys.executable, "-c", "import pycxi, sys; "
                        "print(sorted(m for m in sys.modules if m.startswith('pycxi')))"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "['pycxi']"

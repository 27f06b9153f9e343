"""``pycxi vni`` as a user runs it: a subprocess, exit codes, stdout and stderr.

Runs ``python -m pycxi.vni.cli`` (the same parser ``pycxi vni`` registers)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def vni(tmp_path: Path, child_env: dict):
    env = dict(child_env)
    env.pop("PYCXI_VNI_DB", None)

    def run(*args: str, db: "str | None" = str(tmp_path / "vni.db"),
            extra_env: "dict | None" = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "pycxi.vni.cli"] + (["--db", db] if db else []) + list(args)
        p = subprocess.run(argv, env={**env, **(extra_env or {})}, capture_output=True,
                           text=True, timeout=60)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    return run


def test_alloc_get_release_list(vni) -> None:
    p = vni("alloc", "job-a", "--owner", "ns/job-a")
    assert (p.returncode, p.stdout, p.stderr) == (0, "1024\n", "")
    assert vni("alloc", "job-a").stdout == "1024\n", "idempotent"
    assert vni("alloc", "job-b").stdout == "1025\n"
    assert vni("get", "job-b").stdout == "1025\n"
    table = vni("list").stdout.splitlines()
    assert table[0].split() == ["VNI", "STATE", "SINCE", "KEY", "OWNER"]
    assert [r.split()[:2] + r.split()[3:] for r in table[1:]] == [
        ["1024", "allocated", "job-a", "ns/job-a"], ["1025", "allocated", "job-b", "-"]]
    p = vni("release", "job-a")
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    p = vni("release", "job-a")
    assert p.returncode == 0 and p.stderr.count("\n") == 1 and "held no VNI" in p.stderr
    p = vni("get", "job-a")
    assert (p.returncode, p.stdout) == (1, "") and p.stderr.count("\n") == 1
    rows = json.loads(vni("list", "--json").stdout)
    assert [(r["key"], r["vni"], r["state"], r["owner"]) for r in rows] == [
        ("job-a", 1024, "quarantined", "ns/job-a"), ("job-b", 1025, "allocated", None)]
    assert all(isinstance(r["since"], float) for r in rows)


def test_options_before_or_after_the_action(vni, tmp_path: Path) -> None:
    db = str(tmp_path / "other.db")
    assert vni("alloc", "a", "--db", db, "--range", "3000-3001", db=None).stdout == "3000\n"
    assert vni("--db", db, "--range", "3000-3001", "alloc", "b", db=None).stdout == "3001\n"
    p = vni("--range", "3000-3001", "alloc", "c", "--db", db, db=None)
    assert p.returncode == 3 and "3000-3001" in p.stderr and p.stderr.count("\n") == 1


def test_db_from_environment(vni, tmp_path: Path) -> None:
    db = str(tmp_path / "env" / "vni.db")
    assert vni("alloc", "x", db=None, extra_env={"PYCXI_VNI_DB": db}).stdout == "1024\n"
    assert Path(db).exists()
    assert vni("get", "x", "--db", db, db=None).stdout == "1024\n"


def test_ranges_repeatable_and_comma_separated(vni) -> None:
    args = ["--range", "5000-5001,6000", "--range", "7000-7000"]
    got = [vni("alloc", f"k{i}", *args).stdout.strip() for i in range(4)]
    assert got == ["5000", "5001", "6000", "7000"]
    p = vni("alloc", "k4", *args)
    assert p.returncode == 3
    assert p.stderr.startswith("pycxi vni: no free VNI") and p.stderr.count("\n") == 1


def test_quarantine_option(vni) -> None:
    assert vni("alloc", "a", "--range", "4000", "--quarantine", "0").stdout == "4000\n"
    vni("release", "a")
    assert vni("alloc", "b", "--range", "4000", "--quarantine", "0").stdout == "4000\n"
    vni("release", "b")
    assert vni("alloc", "c", "--range", "4000", "--quarantine", "3600").returncode == 3


@pytest.mark.parametrize("args", [
    ["--range", "9-2", "alloc", "x"],
    ["--range", "0-5", "alloc", "x"],
    ["--quarantine", "-1", "alloc", "x"],
    ["--quarantine", "soon", "alloc", "x"],
    ["alloc"],
    ["frobnicate", "x"],
    [],
])
def test_usage_errors(args, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # in-process (the same parser as the subprocess runs): exit status 2, nothing on
    # stdout, and the last line of stderr names the problem
    from pycxi.vni.cli import main

    try:
        rc = main(["--db", str(tmp_path / "vni.db"), *args])
    except SystemExit as e:  # argparse's way out
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("pycxi"), err
    assert not (tmp_path / "vni.db").exists(), "a usage error touches nothing"


def test_usage_error_in_a_subprocess(vni) -> None:
    p = vni("--range", "9-2", "alloc", "x")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines()[-1] == (
        "pycxi vni: error: argument --range: invalid VNI range 9-2: "
        "need 1 <= first <= last <= 65535")


def test_runtime_errors_are_one_line(vni, tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("not a database\n" * 100)
    for db in (str(bad), "/proc/no-such-dir/vni.db"):
        p = vni("alloc", "x", db=db)
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.startswith("pycxi vni: ") and p.stderr.count("\n") == 1, p.stderr


def test_in_process_main(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pycxi.vni.cli import main

    db = str(tmp_path / "vni.db")
    assert main(["vni", "--db", db, "alloc", "k"]) == 0
    assert main(["--db", db, "get", "k"]) == 0
    assert capsys.readouterr().out == "1024\n1024\n"


def test_registered_in_pycxi_cli(tmp_path: Path, child_env: dict) -> None:
    """`pycxi vni ...` through the top-level CLI, which registers this module."""
    pytest.importorskip("pycxi.cli")
    db = str(tmp_path / "vni.db")
    run = [sys.executable, "-m", "pycxi.cli", "vni", "--db", db]
    p = subprocess.run(run + ["alloc", "k"], env=child_env, capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stdout) == (0, "1024\n"), p.stderr
    # VNI 10 is reserved, so this range has nothing to give: exit 3, one line
    p = subprocess.run(run + ["--range", "10", "alloc", "k2"], env=child_env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_release_refused_while_an_attachment_holds_the_key(vni, tmp_path: Path) -> None:
    """The CNI plugin's localAllocator records its attachments as holders: the admin's
    `release` does not pull the VNI from under a running pod."""
    from pycxi.vni.sqlite import SqliteStore
    db = str(tmp_path / "held.db")
    s = SqliteStore(db)
    v = s.acquire("pod/ns/p", holder="net1/c1/eth0")
    s.close()
    p = vni("--db", db, "release", "pod/ns/p")
    assert p.returncode == 1 and "still held by 1 attachment(s) (net1/c1/eth0)" in p.stderr
    assert vni("--db", db, "get", "pod/ns/p").stdout == f"{v}\n"

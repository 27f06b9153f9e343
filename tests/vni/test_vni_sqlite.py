"""What is specific to the SQLite store: cost that stays flat, crashes inside a
transaction, lock waits, forks and damaged files."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pycxi.vni.sqlite import SCHEMA_VERSION, SqliteStore
from pycxi.vni.store import VniError
from vni_stores import FakeClock, SqliteFactory


@pytest.fixture
def factory(tmp_path: Path):
    f = SqliteFactory(tmp_path)
    yield f
    f.close()


def vm_steps(store: SqliteStore, n: int, prefix: str) -> float:
    """SQLite virtual-machine instructions per acquire: a deterministic measure of work
    (wall-clock time would make a flaky test)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._conn.set_progress_handler(count, 1)
    try:
        for i in range(n):
            store.acquire(f"{prefix}{i}")
    finally:
        store._conn.set_progress_handler(None, 1)
    return steps / n


def test_cost_per_allocation_is_flat(factory: SqliteFactory, clock: FakeClock) -> None:
    s = factory.open(clock=clock, quarantine=90)
    small = vm_steps(s, 20, "small-")
    c = s._conn
    # 60,000 held and 3,000 in quarantine, written directly: 63k acquires would take
    # seconds and test nothing more
    c.execute("UPDATE vnis SET state = 'allocated', key = 'fill-' || vni, since = ? "
              "WHERE state = 'free' AND vni BETWEEN 1044 AND 61043", (clock.t,))
    c.execute("UPDATE vnis SET state = 'quarantined', key = 'q-' || vni, since = ? "
              "WHERE state = 'free' AND vni BETWEEN 61044 AND 64043", (clock.t,))
    assert sum(a.state == "allocated" for a in s.list()) == 60_020
    clock.advance(30)  # quarantine not over: the purge must not visit those rows
    big = vm_steps(s, 20, "big-")
    # wrapped: the cursor sits at the start of the range, in front of 60k held VNIs
    c.execute("UPDATE meta SET value = 1024 WHERE name = 'cursor'")
    wrapped = vm_steps(s, 1, "wrapped-")
    assert s.get("wrapped-0") == 64064  # after the 20 "big-" ones at 64044..
    assert big < 1.5 * small, (small, big)
    assert wrapped < 1.5 * small, (small, wrapped)


def test_kill_inside_a_transaction(factory: SqliteFactory) -> None:
    """SIGKILL while a big write transaction is open (some pages may already be in
    the WAL): the write is gone, the lock is free, the file is intact."""
    s = factory.open()
    v = s.acquire("kept")
    script = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "c.execute(\"UPDATE vnis SET state = 'allocated', key = 'ghost-' || vni, since = 0 "
        "WHERE state = 'free'\")\n"
        "print('inside', flush=True)\n"
        "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(factory.path)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "inside\n"
        with pytest.raises(VniError, match="locked"):
            SqliteStore(factory.path, timeout=0.1).acquire("blocked")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
    t0 = time.monotonic()
    s2 = SqliteStore(factory.path, timeout=5)
    w = s2.acquire("after")
    assert time.monotonic() - t0 < 2
    assert [a.key for a in s2.list()] == ["kept", "after"]
    assert (s2.get("kept"), w) == (v, v + 1)
    assert s2._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    s2.close()


def test_lock_wait_and_readers(factory: SqliteFactory) -> None:
    s = factory.open()
    v = s.acquire("a")
    other = sqlite3.connect(factory.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        quick = SqliteStore(factory.path, timeout=0.2)
        t0 = time.monotonic()
        with pytest.raises(VniError, match="locked"):
            quick.acquire("b")
        assert time.monotonic() - t0 < 2
        assert quick.get("a") == v, "readers are not blocked by a writer (WAL)"
        assert [a.key for a in quick.list()] == ["a"]
        # a writer that waits long enough gets through once the lock is released
        result = []
        t = threading.Thread(target=lambda: result.append(SqliteStore(factory.path).acquire("c")))
        t.start()
        time.sleep(0.2)
        other.execute("ROLLBACK")
        t.join(10)
        assert result == [v + 1]
        quick.close()
    finally:
        other.close()


def test_threads_share_one_store(factory: SqliteFactory) -> None:
    s = factory.open()
    got: dict = {}

    def work(t: int) -> None:
        for i in range(100):
            got[f"t{t}-{i}"] = s.acquire(f"t{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 400 and len(set(got.values())) == 400


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_must_open_its_own(factory: SqliteFactory) -> None:
    s = factory.open()
    s.acquire("parent")
    pid = os.fork()
    if pid == 0:  # child: the inherited handle must refuse, a new one must work
        code = 1
        try:
            s.acquire("child")
        except VniError:
            code = 0 if SqliteStore(factory.path).acquire("child2") else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.get("child") is None and s.get("child2") is not None


def test_creates_parent_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "vni.db"
    with SqliteStore(path) as s:
        assert s.acquire("x") == 1024
        assert s._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "vni.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(VniError, match="not a database"):
        SqliteStore(path)


def test_unknown_schema_version(factory: SqliteFactory) -> None:
    factory.open().close()
    c = sqlite3.connect(factory.path)
    c.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (SCHEMA_VERSION + 1,))
    c.commit()
    c.close()
    with pytest.raises(VniError, match="schema version"):
        SqliteStore(factory.path)


def test_bad_arguments(tmp_path: Path) -> None:
    for q in (-1, float("nan"), float("inf"), "soon", None):
        with pytest.raises(VniError):
            SqliteStore(tmp_path / "x.db", quarantine=q)
    with pytest.raises(VniError):
        SqliteStore(tmp_path / "x.db", ranges=[(0, 5)])
    with SqliteStore(tmp_path / "x.db") as s, pytest.raises(VniError):
        s.acquire("k", owner=5)  # type: ignore[arg-type]


# --- holders: a VNI goes back only when no attachment holds it ----------------------------------

def test_holders_keep_the_vni_until_the_last_goes(tmp_path: Path, clock: FakeClock) -> None:
    s = SqliteStore(tmp_path / "v.db", ranges=[(5000, 5001)], quarantine=10, clock=clock)
    try:
        v = s.acquire("pod/a", holder="net1/c0/eth0")
        assert s.acquire("pod/a", holder="net1/c1/eth0") == v       # the next sandbox
        assert s.acquire("pod/a", holder="net2/c1/net1") == v       # a second network
        assert s.holders("pod/a") == ["net1/c0/eth0", "net1/c1/eth0", "net2/c1/net1"]
        assert s.release("pod/a", holder="net1/c0/eth0") is False
        assert s.release("pod/a") is False              # no holder given: still held by two
        assert s.release("pod/a", holder="net1/c0/eth0") is False   # idempotent
        assert s.get("pod/a") == v
        assert s.release("pod/a", holder="net2/c1/net1") is False
        assert s.release("pod/a", holder="net1/c1/eth0") is True
        assert s.get("pod/a") is None and s.holders() == []
        # quarantined, not handed out at once
        w = s.acquire("pod/b", holder="net1/c2/eth0")
        assert w != v
        with pytest.raises(VniError):
            s.acquire("pod/c")
        clock.advance(10)
        assert s.acquire("pod/c") == v
    finally:
        s.close()


def test_forget_and_prune_holders(tmp_path: Path, clock: FakeClock) -> None:
    s = SqliteStore(tmp_path / "v.db", ranges=[(5000, 5009)], quarantine=0, clock=clock)
    try:
        a = s.acquire("pod/a", holder="n1/x/eth0")
        s.acquire("pod/a", holder="n2/x/eth0")
        b = s.acquire("pod/b", holder="n1/y/eth0")
        j = s.acquire("job/j", holder="n1/z/eth0")
        s.acquire("pod/c", holder="n1/keep/eth0")
        assert s.forget("n1/z/eth0") and s.get("job/j") == j and s.holders("job/j") == []
        s.acquire("job/j", holder="n1/z/eth0")
        # prefix "n1/" must not touch "n10/..." nor another network's holders
        s.acquire("pod/d", holder="n10/w/eth0")
        out = s.prune_holders("n1/", {"n1/keep/eth0"},
                              releasable=lambda k: not k.startswith("job/"))
        assert sorted(out) == [("n1/x/eth0", "pod/a", False), ("n1/y/eth0", "pod/b", True),
                               ("n1/z/eth0", "job/j", False)]
        assert s.get("pod/a") == a and s.holders("pod/a") == ["n2/x/eth0"]
        assert s.get("pod/b") is None and b not in [x.vni for x in s.list() if x.state == "allocated"]
        assert s.get("job/j") == j
        assert s.holders() == ["n1/keep/eth0", "n10/w/eth0", "n2/x/eth0"]
    finally:
        s.close()


def test_exhausted_acquire_records_no_holder(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "v.db", ranges=[(5000, 5000)], quarantine=0)
    try:
        s.acquire("pod/a", holder="n/a/eth0")
        with pytest.raises(VniError):
            s.acquire("pod/b", holder="n/b/eth0")
        assert s.holders() == ["n/a/eth0"]
    finally:
        s.close()


def test_schema_1_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database written by the previous pycxi (schema 1, no holders) keeps its allocations
    and gains the holders table; keys without holders release as before."""
    path = tmp_path / "v.db"
    s = SqliteStore(path, ranges=[(5000, 5009)])
    v = s.acquire("old-key")
    s.close()
    c = sqlite3.connect(path)
    c.execute("DROP TABLE holders")
    c.execute("UPDATE meta SET value = 1 WHERE name = 'schema'")
    c.commit()
    c.close()
    s = SqliteStore(path, ranges=[(5000, 5009)])
    try:
        assert s.get("old-key") == v and s.holders() == []
        assert s._conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0] == 2
        assert s.release("old-key") is True
    finally:
        s.close()

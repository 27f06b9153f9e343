"""Conformance suite for VNI stores: every test runs against every store in
``vni_stores.STORE_FACTORIES`` (the SQLite store; the Kubernetes store registers
itself there and runs against a fake API server, as no kube-apiserver can be
installed in CI)."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycxi.vni.store import (
    DEFAULT_RANGES,
    RESERVED_VNIS,
    Allocation,
    VniError,
    VniExhausted,
    in_ranges,
)
from vni_stores import FakeClock, StoreFactory

WORKER = str(Path(__file__).with_name("vni_worker.py"))


def held(store) -> dict:
    return {a.key: a.vni for a in store.list() if a.state == "allocated"}


def quarantined(store) -> dict:
    return {a.vni: a.key for a in store.list() if a.state == "quarantined"}


# --- basics ---------------------------------------------------------------------------


def test_acquire_get_list(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(clock=clock)
    assert s.get("job-a") is None
    assert s.list() == []
    v = s.acquire("job-a", owner="ns/job-a")
    assert in_ranges(v, DEFAULT_RANGES) and v not in RESERVED_VNIS
    assert s.get("job-a") == v
    assert s.list() == [Allocation(key="job-a", vni=v, state="allocated", since=clock.t,
                                   owner="ns/job-a")]


def test_acquire_is_idempotent(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(clock=clock)
    v = s.acquire("a", owner="first")
    clock.advance(5)
    assert s.acquire("a") == v
    assert s.acquire("a", owner="second") == v
    # and through another handle on the same state
    assert store_factory.open(clock=clock).acquire("a") == v
    [a] = s.list()
    assert (a.vni, a.since, a.owner) == (v, clock.t - 5, "first"), "re-acquire changes nothing"


def test_distinct_keys_distinct_vnis(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(clock=clock)
    vnis = [s.acquire(f"k{i}") for i in range(50)]
    assert len(set(vnis)) == 50
    assert held(s) == {f"k{i}": v for i, v in enumerate(vnis)}


def test_invalid_key(store_factory: StoreFactory) -> None:
    s = store_factory.open()
    for bad in ("", None, 5):
        with pytest.raises(VniError):
            s.acquire(bad)  # type: ignore[arg-type]
        with pytest.raises(VniError):
            s.release(bad)  # type: ignore[arg-type]


def test_close_is_idempotent(store_factory: StoreFactory) -> None:
    with store_factory.open() as s:
        v = s.acquire("a")
    s.close()
    with pytest.raises(VniError):
        s.acquire("b")
    assert store_factory.open().get("a") == v


# --- release and quarantine -------------------------------------------------------------


def test_release_starts_quarantine(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2002)], quarantine=30, clock=clock)
    va, vb, vc = (s.acquire(k) for k in "abc")
    clock.advance(1)
    assert s.release("a") is True
    assert s.release("a") is False, "second release holds nothing"
    assert s.release("never") is False
    assert s.get("a") is None
    assert Allocation(key="a", vni=va, state="quarantined", since=clock.t) in s.list()
    # the only VNI not held is in quarantine until 30 s after the release
    clock.advance(29)
    with pytest.raises(VniExhausted):
        s.acquire("d")
    assert quarantined(s) == {va: "a"}
    clock.advance(1)  # whole seconds: the boundary is exact
    assert quarantined(s) == {}, "quarantine is over exactly 30 s after release"
    assert s.acquire("d") == va
    assert held(s) == {"b": vb, "c": vc, "d": va}


def test_reacquire_after_release_gets_another_vni(store_factory: StoreFactory,
                                                  clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2009)], quarantine=60, clock=clock)
    v1 = s.acquire("a")
    s.release("a")
    v2 = s.acquire("a")
    assert v2 != v1, "the key's old VNI is quarantined like anyone's"
    assert held(s) == {"a": v2} and quarantined(s) == {v1: "a"}


def test_zero_quarantine(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2000)], quarantine=0, clock=clock)
    assert s.acquire("a") == 2000
    s.release("a")
    assert s.acquire("b") == 2000


def test_quarantine_uses_the_acquirers_setting(store_factory: StoreFactory,
                                               clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2000)], quarantine=100, clock=clock)
    s.acquire("a")
    s.release("a")
    clock.advance(50)
    with pytest.raises(VniExhausted):
        s.acquire("b")
    s2 = store_factory.open(ranges=[(2000, 2000)], quarantine=50, clock=clock)
    assert s2.acquire("b") == 2000


# --- allocation order --------------------------------------------------------------------


def test_round_robin_next_fit(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2004)], quarantine=0, clock=clock)
    assert [s.acquire(k) for k in "abc"] == [2000, 2001, 2002]
    s.release("a")
    # next-fit: 2000 is free, but the search continues after the last VNI handed out
    assert s.acquire("d") == 2003
    s.release("c")
    assert s.acquire("e") == 2004
    # wrap around to the start, skipping held VNIs (2001 is b's)
    assert s.acquire("f") == 2000
    assert s.acquire("g") == 2002
    # the cursor is part of the shared state, not of one handle: a fresh handle
    # continues after 2002, it does not restart at the lowest free VNI
    s.release("f")  # 2000
    s.release("d")  # 2003
    s2 = store_factory.open(ranges=[(2000, 2004)], quarantine=0, clock=clock)
    assert s2.acquire("h") == 2003
    assert s2.acquire("i") == 2000
    with pytest.raises(VniExhausted):
        s2.acquire("j")


def test_round_robin_over_several_ranges(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(3000, 3001), (2000, 2001)], quarantine=0, clock=clock)
    assert [s.acquire(k) for k in "abcd"] == [2000, 2001, 3000, 3001]
    s.release("b")
    s.release("c")
    assert s.acquire("e") == 2001, "wraps from the last range to the first"
    assert s.acquire("f") == 3000


def test_quarantined_vnis_are_skipped(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2003)], quarantine=10, clock=clock)
    for k in "abcd":
        s.acquire(k)
    s.release("b")  # 2001
    clock.advance(5)
    s.release("a")  # 2000
    clock.advance(5)  # b's quarantine is over, a's is not
    assert s.acquire("e") == 2001


def test_exhaustion(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(2000, 2003)], quarantine=10, clock=clock)
    vnis = [s.acquire(f"k{i}") for i in range(4)]
    assert sorted(vnis) == [2000, 2001, 2002, 2003]
    before = s.list()
    with pytest.raises(VniExhausted) as ei:
        s.acquire("one-too-many")
    assert isinstance(ei.value, VniError)
    msg = str(ei.value)
    assert "2000-2003" in msg and "4 allocated" in msg, msg
    assert s.list() == before, "a failed acquire changes nothing"
    assert s.get("one-too-many") is None
    s.release("k2")
    with pytest.raises(VniExhausted, match="1 in quarantine"):
        s.acquire("one-too-many")
    clock.advance(10)
    assert s.acquire("one-too-many") == 2002


# --- reserved VNIs and range changes ---------------------------------------------------


def test_reserved_vnis_never_handed_out(store_factory: StoreFactory, clock: FakeClock) -> None:
    s = store_factory.open(ranges=[(1, 12)], quarantine=0, clock=clock)
    got = [s.acquire(f"k{i}") for i in range(10)]
    assert got == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
    with pytest.raises(VniExhausted):
        s.acquire("more")
    # and not after churn either
    for rnd in range(3):
        for i in range(10):
            s.release(f"k{i}")
        assert not RESERVED_VNIS & {s.acquire(f"r{rnd}-{i}") for i in range(10)}
        for i in range(10):
            s.release(f"r{rnd}-{i}")
    only_reserved = store_factory.open(ranges=[(10, 10)], clock=clock)
    with pytest.raises(VniExhausted):
        only_reserved.acquire("x")


def test_range_change(store_factory: StoreFactory, clock: FakeClock) -> None:
    old = store_factory.open(ranges=[(2000, 2009)], quarantine=10, clock=clock)
    va, vb = old.acquire("a"), old.acquire("b")
    assert (va, vb) == (2000, 2001)
    new = store_factory.open(ranges=[(3000, 3002)], quarantine=10, clock=clock)
    # held outside the new range: still held, listed, and idempotent
    assert new.get("a") == 2000
    assert new.acquire("a") == 2000
    assert held(new) == {"a": 2000, "b": 2001}
    assert [new.acquire(k) for k in "cde"] == [3000, 3001, 3002]
    new.release("a")
    clock.advance(10)
    # 2000 is free again, but outside the new range: never handed out
    with pytest.raises(VniExhausted):
        new.acquire("f")
    assert held(new) == {"b": 2001, "c": 3000, "d": 3001, "e": 3002}
    # going back to the old range makes it available again (next-fit from the cursor)
    back = store_factory.open(ranges=[(2000, 2009)], quarantine=10, clock=clock)
    assert back.acquire("f") == 2000
    assert back.acquire("g") == 2002


# --- processes ---------------------------------------------------------------------------


def _spawn(cfg: dict, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], env=env, **kw)


def test_concurrent_processes_never_share_a_vni(store_factory: StoreFactory, tmp_path: Path,
                                                child_env: dict) -> None:
    """8 processes x 1,000 keys against one store, all starting at once; every 10th
    key is released again, and 50 keys are acquired by every process."""
    nproc, nkeys = 8, 1000
    go = str(tmp_path / "go")
    procs = []
    for p in range(nproc):
        ops = []
        for j in range(nkeys):
            ops.append(["acquire", f"w{p}-{j}"])
            if j % 10 == 9:
                ops.append(["release", f"w{p}-{j - 5}"])
            if j % 20 == 0:
                ops.append(["acquire", f"shared-{(j // 20 + p) % 50}"])
        with open(tmp_path / f"out{p}", "w") as out:
            procs.append(_spawn({"factory": store_factory.name, "spec": store_factory.spec(),
                                 "ops": ops, "go": go, "quarantine": 3600}, child_env,
                                stdout=out, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 60
        while len([f for f in os.listdir(tmp_path) if f.startswith("go.ready.")]) < nproc:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), "a worker died before the start"
            time.sleep(0.01)
        open(go, "w").close()
        for p in procs:
            assert p.wait(timeout=getattr(store_factory, "process_timeout", 120)) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p in range(nproc):
        lines = [json.loads(line) for line in (tmp_path / f"out{p}").read_text().splitlines()]
        assert lines[-1][0] == "done", lines[-5:]
        results.append(lines[:-1])

    owner_of: dict = {}   # vni -> key: one key per VNI over the whole run (quarantine 1 h)
    vni_of: dict = {}     # key -> vni: every acquire of a key while held agrees
    released = set()
    for lines in results:
        for op, key, res in lines:
            assert op != "error", (key, res)
            if op == "acquire":
                assert isinstance(res, int) and in_ranges(res, DEFAULT_RANGES)
                assert res not in RESERVED_VNIS
                assert owner_of.setdefault(res, key) == key, f"VNI {res} given to two keys"
                assert vni_of.setdefault(key, res) == res, f"{key} got two VNIs"
            elif op == "release":
                assert res is True
                released.add(key)
    assert len(vni_of) == nproc * nkeys + 50
    s = store_factory.open()
    expect_held = {k: v for k, v in vni_of.items() if k not in released}
    assert held(s) == expect_held
    assert quarantined(s) == {vni_of[k]: k for k in released}


def test_sigkilled_allocator_loses_nothing(store_factory: StoreFactory,
                                           child_env: dict) -> None:
    """A process killed while allocating in a loop: every VNI it reported is still
    held, nothing is held twice, and others can allocate at once afterwards."""
    store_factory.open().acquire("before")
    p = _spawn({"factory": store_factory.name, "spec": store_factory.spec(),
                "forever": "kill-", "quarantine": 3600}, child_env,
               stdout=subprocess.PIPE, text=True)
    reported = {}
    try:
        assert p.stdout is not None
        for line in p.stdout:
            op, key, vni = json.loads(line)
            assert op == "acquire", (op, key, vni)
            reported[key] = vni
            if len(reported) == 200:
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    s = store_factory.open()
    t0 = time.monotonic()
    after = s.acquire("after")
    assert time.monotonic() - t0 < 5, "the killed process left a lock behind"
    h = held(s)
    killed = {k: v for k, v in h.items() if k.startswith("kill-")}
    for k, v in reported.items():
        assert killed.get(k) == v, f"{k} reported {v} but the store says {killed.get(k)}"
    # at most the keys whose acquire committed after the last line we read
    extra = set(killed) - set(reported)
    assert all(int(k.split("-")[1]) >= 200 for k in extra)
    assert len(set(h.values())) == len(h), "a VNI is held twice"
    assert after not in killed.values()

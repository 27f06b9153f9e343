"""The controller's work queue (pycxi.vni.controller.KeyQueue): kopf's event handlers
hand each event to it, its worker threads run the reconciler.  What the reconciler
relies on: one call at a time per object, in order, the newest state never lost;
different objects in parallel; a failing call neither kills a worker nor the key.

Real threads; the handlers block on events the test controls, so nothing here waits
on a clock to decide that something did not happen."""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from pycxi.vni.controller import KeyQueue

WAIT = 10.0


def drained(q: KeyQueue) -> None:
    """Until no key waits or runs (a positive wait: it returns as soon as that holds)."""
    deadline = time.monotonic() + WAIT
    while len(q):
        assert time.monotonic() < deadline, "queue not drained"
        time.sleep(0.002)


class Recorder:
    """Handler calls, with a gate per key that the test opens."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: List[Tuple[str, int]] = []
        self.running: Dict[str, int] = {}
        self.overlap = False
        self.gates: Dict[str, threading.Event] = {}
        self.started: Dict[str, threading.Event] = {}
        self.done = threading.Condition(self.lock)

    def gate(self, key: str) -> threading.Event:
        self.started.setdefault(key, threading.Event())
        return self.gates.setdefault(key, threading.Event())

    def __call__(self, key: str, value: int) -> None:
        with self.lock:
            self.running[key] = self.running.get(key, 0) + 1
            if self.running[key] > 1:
                self.overlap = True
        if key in self.gates:
            self.started[key].set()
            assert self.gates[key].wait(WAIT)
        with self.lock:
            self.running[key] -= 1
            self.calls.append((key, value))
            self.done.notify_all()

    def wait_calls(self, n: int) -> None:
        with self.lock:
            assert self.done.wait_for(lambda: len(self.calls) >= n, WAIT), self.calls


def test_a_call_queued_behind_a_running_one_is_replaced_by_the_newest():
    q, rec = KeyQueue(workers=2), Recorder()
    try:
        gate = rec.gate("a")
        q.put("a", rec, "a", 1)
        assert rec.started["a"].wait(WAIT)      # 1 runs and blocks
        for v in (2, 3, 4):                     # queued while 1 runs: only 4 counts
            q.put("a", rec, "a", v)
        gate.set()
        drained(q)
        assert rec.calls == [("a", 1), ("a", 4)]
        assert not rec.overlap
    finally:
        q.close()


def test_other_keys_run_while_one_key_is_busy():
    q, rec = KeyQueue(workers=2), Recorder()
    try:
        gate = rec.gate("slow")
        q.put("slow", rec, "slow", 1)
        assert rec.started["slow"].wait(WAIT)
        for i in range(20):
            q.put(f"k{i}", rec, f"k{i}", i)
        rec.wait_calls(20)                      # the blocked key holds one worker only
        assert ("slow", 1) not in rec.calls
        gate.set()
        rec.wait_calls(21)
    finally:
        q.close()


def test_a_failing_call_is_logged_and_the_key_and_workers_go_on(caplog):
    q, rec = KeyQueue(workers=1), Recorder()

    def boom(key: str, value: int) -> None:
        raise RuntimeError("handler bug")

    try:
        q.put("a", boom, "a", 0)
        q.put("a", rec, "a", 1)
        q.put("b", boom, "b", 0)
        q.put("c", rec, "c", 2)
        rec.wait_calls(1)
        q.put("a", rec, "a", 3)
        rec.wait_calls(3)
        assert ("c", 2) in rec.calls and ("a", 3) in rec.calls
        assert any("handler bug" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
    finally:
        q.close()


def test_close_takes_no_more_work_and_stops_the_workers():
    q, rec = KeyQueue(workers=3), Recorder()
    q.put("a", rec, "a", 1)
    rec.wait_calls(1)
    q.close()
    assert all(not t.is_alive() for t in q._threads)
    q.put("b", rec, "b", 2)
    assert len(q) == 0 and rec.calls == [("a", 1)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 1000)), min_size=1, max_size=60),
       st.integers(1, 4))
def test_per_key_order_and_the_last_value_always_runs(puts, workers):
    """Whatever the interleaving: per key, the values run in the order they were put
    (a subsequence: some are replaced), never two at once, and the last one put runs."""
    q, rec = KeyQueue(workers=workers), Recorder()
    try:
        for k, v in puts:
            q.put(k, rec, k, v)
        last = {k: v for k, v in puts}
        drained(q)
        assert not rec.overlap
        assert {k: [v for kk, v in rec.calls if kk == k][-1] for k in last} == last
        for k in last:
            put_order = [v for kk, v in puts if kk == k]
            ran = [v for kk, v in rec.calls if kk == k]
            it = iter(put_order)
            assert all(any(v == p for p in it) for v in ran), (put_order, ran)
    finally:
        q.close()

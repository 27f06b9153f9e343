"""Random acquire/release/clock/range-change sequences against every store, compared
step by step with a plain in-memory model of the rules."""
from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from pycxi.vni.store import RESERVED_VNIS, VniExhausted
from vni_stores import STORE_FACTORIES, FakeClock, StoreFactory

KEYS = [f"k{i}" for i in range(14)]
# small, so that exhaustion and wrap-around happen; the first contains 1 and 10
RANGE_SETS = [((1, 12),), ((2000, 2007),), ((2000, 2003), (2010, 2013)), ((2004, 2011),)]
QUARANTINE = 7  # integer seconds and integer clock steps keep float comparisons exact


class Model:
    def __init__(self, ranges) -> None:
        self.ranges = ranges
        self.held: dict = {}        # key -> (vni, since)
        self.released: dict = {}    # vni -> (key, release time)
        self.cursor = None

    def expire(self, now) -> None:
        self.released = {v: (k, t) for v, (k, t) in self.released.items()
                         if now < t + QUARANTINE}

    def acquire(self, key, now):
        if key in self.held:
            return self.held[key][0]
        self.expire(now)
        eligible = sorted({v for lo, hi in self.ranges for v in range(lo, hi + 1)}
                          - RESERVED_VNIS)
        cursor = self.ranges[0][0] if self.cursor is None else self.cursor
        start = next((i for i, v in enumerate(eligible) if v >= cursor), 0)
        busy = {v for v, _ in self.held.values()} | set(self.released)
        for v in eligible[start:] + eligible[:start]:
            if v not in busy:
                self.held[key] = (v, now)
                self.cursor = v + 1
                return v
        return None

    def release(self, key, now) -> bool:
        if key not in self.held:
            return False
        v, _ = self.held.pop(key)
        self.released[v] = (key, now)
        return True


def make_machine(factory_cls, tmp_path_factory, request):
    counter = itertools.count()

    class StoreVsModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.factory: StoreFactory = factory_cls(
                tmp_path_factory.mktemp(f"model{next(counter)}"), request)
            self.clock = FakeClock()
            self.model = Model(RANGE_SETS[1])
            self.store = self.factory.open(ranges=RANGE_SETS[1], quarantine=QUARANTINE,
                                           clock=self.clock)

        @rule(key=st.sampled_from(KEYS))
        def acquire(self, key) -> None:
            expect = self.model.acquire(key, self.clock.t)
            try:
                got = self.store.acquire(key)
            except VniExhausted:
                got = None
            assert got == expect

        @rule(key=st.sampled_from(KEYS))
        def release(self, key) -> None:
            assert self.store.release(key) == self.model.release(key, self.clock.t)

        @rule(key=st.sampled_from(KEYS))
        def get(self, key) -> None:
            assert self.store.get(key) == self.model.held.get(key, (None,))[0]

        @rule(seconds=st.integers(0, 2 * QUARANTINE))
        def tick(self, seconds) -> None:
            self.clock.advance(seconds)

        @rule(ranges=st.sampled_from(RANGE_SETS))
        def reopen(self, ranges) -> None:
            # a new handle with other ranges over the same state
            self.store.close()
            self.store = self.factory.open(ranges=ranges, quarantine=QUARANTINE,
                                           clock=self.clock)
            self.model.ranges = ranges

        @invariant()
        def listing_matches(self) -> None:
            self.model.expire(self.clock.t)
            got = {(a.key, a.vni, a.state, a.since) for a in self.store.list()}
            want = {(k, v, "allocated", t) for k, (v, t) in self.model.held.items()}
            want |= {(k, v, "quarantined", t) for v, (k, t) in self.model.released.items()}
            assert got == want

        def teardown(self) -> None:
            self.store.close()
            self.factory.close()

    return StoreVsModel


def test_store_matches_model(store_factory, tmp_path_factory, request) -> None:
    cls = STORE_FACTORIES[store_factory.name]
    machine = make_machine(cls, tmp_path_factory, request)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=cls.model_examples, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))

"""The shared rules in pycxi.vni.store: range parsing and the next-fit order."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycxi.vni.store import (
    DEFAULT_QUARANTINE,
    RESERVED_VNIS,
    VNI_MAX,
    VniError,
    VniRangeError,
    format_ranges,
    iter_candidates,
    next_free,
    normalize_ranges,
    parse_ranges,
)

# Ranges near each other, so that overlaps and adjacency are common, plus the edges.
bound = st.one_of(st.integers(1, 400), st.integers(VNI_MAX - 50, VNI_MAX))
pair = st.tuples(bound, st.integers(0, 60)).map(lambda t: (t[0], min(VNI_MAX, t[0] + t[1])))
pairs = st.lists(pair, min_size=1, max_size=8)


def covered(ranges) -> set:
    return {v for lo, hi in ranges for v in range(lo, hi + 1)}


@given(pairs, st.sampled_from(["", " "]), st.booleans())
def test_parse_ranges_is_the_union(ps, space, single) -> None:
    text = f"{space},{space}".join(
        f"{lo}" if single and lo == hi else f"{lo}{space}-{space}{hi}" for lo, hi in ps)
    got = parse_ranges(text)
    assert covered(got) == covered(ps)
    # sorted, disjoint and not even adjacent: merged as far as possible
    assert all(lo <= hi for lo, hi in got)
    assert all(a[1] + 1 < b[0] for a, b in zip(got, got[1:]))
    assert parse_ranges(format_ranges(got)) == got


@given(st.text(alphabet="0123456789-, x+\t", max_size=30))
def test_parse_ranges_rejects_cleanly(text) -> None:
    # anything either parses into valid ranges or raises VniRangeError, nothing else
    try:
        got = parse_ranges(text)
    except VniRangeError as e:
        assert isinstance(e, ValueError) and isinstance(e, VniError)
    else:
        assert got and all(1 <= lo <= hi <= VNI_MAX for lo, hi in got)


@pytest.mark.parametrize("text", [
    "", ",", "0-5", "5-2", "1-65536", "-5", "5-", "a-b", "1-2-3", "1024-65535,", "١-٢", "+5"])
def test_parse_ranges_errors(text) -> None:
    with pytest.raises(VniRangeError):
        parse_ranges(text)


def test_parse_ranges_examples() -> None:
    assert parse_ranges("1024-2047,4096-8191") == ((1024, 2047), (4096, 8191))
    assert parse_ranges(" 4096-8191 , 1024-2047") == ((1024, 2047), (4096, 8191))
    assert parse_ranges("5,6,7-9") == ((5, 9),)
    assert parse_ranges("1-65535") == ((1, 65535),)


@pytest.mark.parametrize("bad", [[], [(5, 2)], [(0, 3)], [(1, 70000)], [(1.5, 3)], [(True, 3)],
                                 [(1, 2, 3)], [5]])
def test_normalize_ranges_errors(bad) -> None:
    with pytest.raises(VniRangeError):
        normalize_ranges(bad)


def test_quarantine_default_outlasts_grace_and_del_retries() -> None:
    # 30 s termination grace (kubelet default, our recommended maximum) + 5 x 1 s DEL
    # retries on EBUSY, with margin to spare
    assert DEFAULT_QUARANTINE >= 30 + 5 + 30


def model_next(ranges, cursor, taken):
    """The rule, written as plainly as possible: eligible VNIs in ascending order,
    rotated to start at the first one >= cursor."""
    eligible = sorted(covered(ranges) - RESERVED_VNIS)
    start = next((i for i, v in enumerate(eligible) if v >= cursor), 0)
    for v in eligible[start:] + eligible[:start]:
        if v not in taken:
            return v
    return None


@settings(max_examples=200)
@given(pairs, st.one_of(bound, st.integers(0, VNI_MAX + 1)), st.data())
def test_next_free_matches_the_model(ps, cursor, data) -> None:
    ranges = normalize_ranges(ps)
    universe = sorted(covered(ranges))
    taken = set(data.draw(st.lists(st.sampled_from(universe), max_size=len(universe))))
    assert next_free(ranges, cursor, taken) == model_next(ranges, cursor, taken)
    cands = list(iter_candidates(ranges, cursor))
    assert sorted(cands) == sorted(covered(ranges) - RESERVED_VNIS), "each VNI exactly once"

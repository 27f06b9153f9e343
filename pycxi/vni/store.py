"""The VNI allocation store: one interface, shared rules, two implementations.

A *store* maps keys (a workload, a claim, a container) to VNIs.  The SQLite store
(:mod:`pycxi.vni.sqlite`) serves one machine; the Kubernetes store serves a cluster.
Both implement :class:`VniStore` and follow the rules below, and the same conformance
tests (``tests/vni/``) run against both.

Rules
-----
* A VNI is held by at most one key at a time.  ``acquire(key)`` is idempotent: while
  ``key`` holds a VNI, every call returns that VNI.
* ``release(key)`` puts the VNI into *quarantine*: nobody gets it until ``quarantine``
  seconds after the release, so a straggler of the old holder (a pod still inside its
  termination grace period, a CNI DEL being retried) never shares it with a new holder.
* New VNIs come from the configured ranges in round-robin *next-fit* order: a
  persistent cursor remembers the last VNI handed out, the next search starts just
  after it and wraps at the end of the last range.  Together with the quarantine this
  spreads reuse over the whole range instead of recycling the lowest VNI first.
* :data:`RESERVED_VNIS` (0 is invalid, 1 and 10 belong to the driver's default
  service) and VNIs outside the ranges are never handed out.
* When the ranges change, VNIs held outside the new ranges stay held (and listed)
  until released, but are not handed out again.
"""
from __future__ import annotations

import abc
import time
from typing import Callable, Container, Iterable, Iterator, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_QUARANTINE",
    "DEFAULT_RANGES",
    "RESERVED_VNIS",
    "STATE_ALLOCATED",
    "STATE_QUARANTINED",
    "VNI_MAX",
    "Allocation",
    "Ranges",
    "VniError",
    "VniBusy",
    "VniExhausted",
    "VniRangeError",
    "VniStore",
    "exhausted_message",
    "format_ranges",
    "in_ranges",
    "iter_candidates",
    "next_free",
    "normalize_ranges",
    "parse_ranges",
    "quarantine_over",
    "search_segments",
]

Ranges = Tuple[Tuple[int, int], ...]

#: VNIs are 16 bit; 0 is invalid (``is_vni_valid`` in the driver).
VNI_MAX = 65535

#: Slurm's and Flux's default VNI space.
DEFAULT_RANGES: Ranges = ((1024, 65535),)

#: Never handed out: 0 is invalid, 1 and 10 are the driver's default-service VNIs.
RESERVED_VNIS: frozenset = frozenset({0, 1, 10})

#: Seconds a released VNI stays out of circulation.  It must outlast the longest time
#: a process of the previous holder can still send on it: the pod termination grace
#: period (kubelet default and our recommended maximum: 30 s), plus the CNI DEL that
#: tears the service down and its retries (Slurm's 5 x 1 s on EBUSY, and the runtime
#: retrying a failed DEL), plus margin for clock skew and slow nodes.  30 + 5 + 55 s
#: of margin = 90 s; the original used 60 s with the same 30 s grace limit.
DEFAULT_QUARANTINE = 90.0

#: The node's one embedded (SQLite) VNI store: ``pycxi vni`` and the CNI plugin's
#: ``localAllocator`` both default to it, so they can never hand out the same VNI twice.
DEFAULT_DB = "/var/lib/pycxi/vni.db"

STATE_ALLOCATED = "allocated"
STATE_QUARANTINED = "quarantined"


class VniError(Exception):
    """Base class of all VNI store errors."""


class VniExhausted(VniError):
    """No VNI in the configured ranges is free (all held or in quarantine)."""


class VniBusy(VniError):
    """The store stayed locked by another user past the timeout (try again later)."""


class VniRangeError(VniError, ValueError):
    """An invalid VNI range specification."""


class Allocation(NamedTuple):
    """One entry of :meth:`VniStore.list` (immutable).

    ``since`` is the acquire time for ``allocated`` entries and the release time for
    ``quarantined`` ones (epoch seconds, from the store's clock); a quarantined entry
    keeps the key and owner of its last holder.  A NamedTuple rather than a dataclass:
    importing dataclasses costs the CNI plugin's start-up ~10 ms.
    """

    key: str
    vni: int
    state: str  # "allocated" | "quarantined"
    since: float
    owner: Optional[str] = None

    def to_dict(self) -> dict:
        return self._asdict()


# --- ranges -------------------------------------------------------------------------


def normalize_ranges(ranges: Iterable[Sequence[int]]) -> Ranges:
    """Validate inclusive ``(lo, hi)`` pairs; return them sorted with overlapping and
    adjacent ranges merged.  Raises :class:`VniRangeError`."""
    pairs = []
    for r in ranges:
        try:
            lo, hi = r
        except (TypeError, ValueError):
            raise VniRangeError(f"a VNI range is a (first, last) pair, not {r!r}") from None
        # bool is an int subclass, but True..False as a VNI range is surely a mistake
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)):
            raise VniRangeError(f"VNI range bounds must be integers, not {r!r}")
        if not 1 <= lo <= hi <= VNI_MAX:
            raise VniRangeError(
                f"invalid VNI range {lo}-{hi}: need 1 <= first <= last <= {VNI_MAX}")
        pairs.append((lo, hi))
    if not pairs:
        raise VniRangeError("no VNI range given")
    pairs.sort()
    merged = [pairs[0]]
    for lo, hi in pairs[1:]:
        plo, phi = merged[-1]
        if lo <= phi + 1:
            merged[-1] = (plo, max(phi, hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def parse_ranges(text: str) -> Ranges:
    """Parse ``"1024-2047,4096-8191"`` (inclusive; a single number is a range of one)
    into normalized ranges.  Raises :class:`VniRangeError`."""
    if not isinstance(text, str):
        raise VniRangeError(f"expected a string like '1024-65535', not {text!r}")
    pairs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise VniRangeError(f"empty VNI range in {text!r}")
        lo_s, sep, hi_s = part.partition("-")
        if not sep:
            hi_s = lo_s
        lo_s, hi_s = lo_s.strip(), hi_s.strip()
        # isdigit() rejects signs, so "-5" and "5--7" cannot sneak through int()
        if not (lo_s.isascii() and lo_s.isdigit() and hi_s.isascii() and hi_s.isdigit()):
            raise VniRangeError(
                f"invalid VNI range {part!r} in {text!r}: expected FIRST-LAST, e.g. 1024-65535")
        pairs.append((int(lo_s), int(hi_s)))
    return normalize_ranges(pairs)


def format_ranges(ranges: Ranges) -> str:
    """The inverse of :func:`parse_ranges`."""
    return ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges)


def in_ranges(vni: int, ranges: Ranges) -> bool:
    return any(lo <= vni <= hi for lo, hi in ranges)


# --- the shared allocation rule -----------------------------------------------------


def search_segments(ranges: Ranges, cursor: int) -> "list[tuple[int, int]]":
    """The ranges split at ``cursor``, in search order: the parts at or after the
    cursor first, then the parts before it (the wrap-around)."""
    after = [(max(lo, cursor), hi) for lo, hi in ranges if hi >= cursor]
    before = [(lo, min(hi, cursor - 1)) for lo, hi in ranges if lo < cursor]
    return after + before


def iter_candidates(ranges: Ranges, cursor: int) -> Iterator[int]:
    """Every VNI that may be handed out under ``ranges``, in round-robin order starting
    at the first one >= ``cursor`` and wrapping once.  Stores that can test a VNI
    cheaply (a set, an atomic create) take the first candidate that is free."""
    for lo, hi in search_segments(ranges, cursor):
        for v in range(lo, hi + 1):
            if v not in RESERVED_VNIS:
                yield v


def next_free(ranges: Ranges, cursor: int, taken: Container[int]) -> Optional[int]:
    """The VNI to hand out next, given the cursor and the held + quarantined VNIs;
    None when exhausted.  O(range) in the worst case: fine for a set in memory, the
    SQLite store uses an index instead."""
    for v in iter_candidates(ranges, cursor):
        if v not in taken:
            return v
    return None


def quarantine_over(released_at: float, now: float, quarantine: float) -> bool:
    """A VNI released at ``released_at`` may be handed out again at ``now``."""
    return now >= released_at + quarantine


def exhausted_message(ranges: Ranges, allocated: int, quarantined: int,
                      next_expiry: Optional[float] = None) -> str:
    msg = (f"no free VNI in range(s) {format_ranges(ranges)}: "
           f"{allocated} allocated, {quarantined} in quarantine")
    if next_expiry is not None:
        msg += f"; the next quarantine ends in {max(0.0, next_expiry):.0f} s"
    return msg


# --- the interface -------------------------------------------------------------------


class VniStore(abc.ABC):
    """Maps keys to VNIs under the rules in this module's docstring.

    Implementations must be safe against concurrent users of the same backing state
    (processes for SQLite, controller replicas for Kubernetes).  ``clock`` returns
    epoch seconds; tests inject a fake one to make quarantine fast to test.
    """

    def __init__(self, ranges: Iterable[Sequence[int]] = DEFAULT_RANGES,
                 quarantine: float = DEFAULT_QUARANTINE,
                 clock: Callable[[], float] = time.time) -> None:
        self.ranges: Ranges = normalize_ranges(ranges)
        try:
            quarantine = float(quarantine)
        except (TypeError, ValueError):
            raise VniError(f"quarantine must be a number of seconds, not {quarantine!r}") from None
        if not quarantine >= 0.0 or quarantine == float("inf"):  # also rejects NaN
            raise VniError(f"quarantine must be a finite number of seconds >= 0, not {quarantine}")
        self.quarantine = quarantine
        self.clock = clock

    @abc.abstractmethod
    def acquire(self, key: str, owner: Optional[str] = None) -> int:
        """The VNI held by ``key``, allocating one if it holds none.

        Raises :class:`VniExhausted` when no VNI in the ranges is free."""

    @abc.abstractmethod
    def release(self, key: str) -> bool:
        """Release ``key``'s VNI into quarantine; False if it held none."""

    @abc.abstractmethod
    def get(self, key: str) -> Optional[int]:
        """The VNI held by ``key``, or None."""

    @abc.abstractmethod
    def list(self) -> "list[Allocation]":
        """Allocated and quarantined VNIs, sorted by VNI."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources; idempotent."""

    def __enter__(self) -> "VniStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_key(key: object) -> str:
        if not isinstance(key, str) or not key:
            raise VniError(f"a VNI key must be a non-empty string, not {key!r}")
        return key

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ranges={format_ranges(self.ranges)!r}, "
                f"quarantine={self.quarantine})")

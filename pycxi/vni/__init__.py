"""VNI allocation for pycxi: the store interface and its shared rules
(:mod:`pycxi.vni.store`), a local SQLite store (:mod:`pycxi.vni.sqlite`) and the
``pycxi vni`` command (:mod:`pycxi.vni.cli`).

Pure Python: nothing here imports the pycxi extension, so the CNI plugin and the
controller can use it without a CXI device.
"""
from __future__ import annotations

from pycxi.vni.store import (
    DEFAULT_QUARANTINE,
    DEFAULT_RANGES,
    RESERVED_VNIS,
    Allocation,
    VniError,
    VniExhausted,
    VniRangeError,
    VniStore,
    parse_ranges,
)

__all__ = [
    "DEFAULT_QUARANTINE",
    "DEFAULT_RANGES",
    "RESERVED_VNIS",
    "Allocation",
    "VniError",
    "VniExhausted",
    "VniRangeError",
    "VniStore",
    "parse_ranges",
]

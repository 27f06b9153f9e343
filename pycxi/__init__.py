"""pycxi: the HPE Slingshot CXI service API from Python.

Built against a system libcxi when one is found, otherwise against pycxi's software
CXI device (``pycxi.BACKEND`` says which; ``pycxi.SOFTWARE_DEVICE`` is True for the latter,
which is a model for tests and demos, not a NIC and no security boundary).  The extension is loaded lazily, so
``import pycxi.vni`` and friends stay cheap.
"""
from __future__ import annotations

from pycxi.errors import CxiError, CxiLibError, CxiUserError, errno_name

__version__ = "0.1.0"

# name -> submodule; resolved on first access (PEP 562)
_LAZY = {
    "BACKEND": "pycxi.device",
    "SOFTWARE_DEVICE": "pycxi.device",
    "NETNS_METHODS": "pycxi.device",
    "C_PID_ANY": "pycxi.svc",
    "Device": "pycxi.device",
    "DevInfo": "pycxi.device",
    "Lni": "pycxi.device",
    "Domain": "pycxi.device",
    "Cp": "pycxi.device",
    "devices": "pycxi.device",
    "SvcDesc": "pycxi.svc",
    "SvcMember": "pycxi.svc",
    "FailInfo": "pycxi.svc",
    "RsrcUse": "pycxi.svc",
    "RSRC_TYPES": "pycxi.svc",
    "TC_NAMES": "pycxi.svc",
    "DEVICE_TOTALS": "pycxi.svc",
    "netns_inode": "pycxi.netns",
}

__all__ = ["CxiError", "CxiLibError", "CxiUserError", "errno_name", "__version__", *_LAZY]


def __getattr__(name: str) -> object:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pycxi' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(__all__)

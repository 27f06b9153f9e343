"""pycxi: the HPE Slingshot CXI service API from Python.

Built against a system libcxi when one is found, otherwise against pycxi's software
CXI device (``pycxi.BACKEND`` says which; ``pycxi.SOFTWARE_DEVICE`` is True for the latter,
which is a model for tests and demos, not a NIC and no security boundary).  Every name is
loaded lazily (even the errors: the CNI plugin's no-op DEL imports this package and nothing
else of it), so ``import pycxi.vni`` and friends stay cheap.
"""
# No `from __future__ import annotations` (one more module to load per CNI call): the
# annotations here are valid at run time on Python 3.9.

# not `from typing import TYPE_CHECKING`: importing typing costs the CNI plugin ~8 ms per
# call; type checkers treat this name as true all the same
TYPE_CHECKING = False

if TYPE_CHECKING:  # what the lazy names below are, for type checkers; no import cost at run time
    # ("X as X": an explicit re-export under mypy --strict)
    from pycxi._version import __version__ as __version__
    from pycxi.errors import CxiError as CxiError
    from pycxi.errors import CxiLibError as CxiLibError
    from pycxi.errors import CxiUserError as CxiUserError
    from pycxi.errors import errno_name as errno_name
    from pycxi.device import BACKEND as BACKEND
    from pycxi.device import NETNS_METHODS as NETNS_METHODS
    from pycxi.device import SOFTWARE_DEVICE as SOFTWARE_DEVICE
    from pycxi.device import Cp as Cp
    from pycxi.device import Ct as Ct
    from pycxi.device import Cq as Cq
    from pycxi.device import Eq as Eq
    from pycxi.device import Md as Md
    from pycxi.device import Pte as Pte
    from pycxi.device import DevInfo as DevInfo
    from pycxi.device import Device as Device
    from pycxi.device import Domain as Domain
    from pycxi.device import Lni as Lni
    from pycxi.device import devices as devices
    from pycxi.netns import netns_inode as netns_inode
    from pycxi.svc import C_PID_ANY as C_PID_ANY
    from pycxi.svc import DEVICE_TOTALS as DEVICE_TOTALS
    from pycxi.svc import RSRC_TYPES as RSRC_TYPES
    from pycxi.svc import TC_NAMES as TC_NAMES
    from pycxi.svc import FailInfo as FailInfo
    from pycxi.svc import RsrcUse as RsrcUse
    from pycxi.svc import SvcDesc as SvcDesc
    from pycxi.svc import SvcMember as SvcMember

# name -> submodule; resolved on first access (PEP 562)
_LAZY = {
    "__version__": "pycxi._version",
    "CxiError": "pycxi.errors",
    "CxiLibError": "pycxi.errors",
    "CxiUserError": "pycxi.errors",
    "errno_name": "pycxi.errors",
    "BACKEND": "pycxi.device",
    "SOFTWARE_DEVICE": "pycxi.device",
    "NETNS_METHODS": "pycxi.device",
    "C_PID_ANY": "pycxi.svc",
    "Device": "pycxi.device",
    "DevInfo": "pycxi.device",
    "Lni": "pycxi.device",
    "Domain": "pycxi.device",
    "Cp": "pycxi.device",
    "Md": "pycxi.device",
    "Eq": "pycxi.device",
    "Pte": "pycxi.device",
    "Cq": "pycxi.device",
    "Ct": "pycxi.device",
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

__all__ = list(_LAZY)


def __getattr__(name: str) -> object:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pycxi' has no attribute {name!r}")
    value = getattr(__import__(mod, fromlist=(name,)), name)   # (importlib: one more module)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

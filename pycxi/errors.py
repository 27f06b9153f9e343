"""Exceptions of pycxi, and the one place where libcxi's ``-errno`` becomes one."""
from __future__ import annotations

import errno as _errno
import os


class CxiError(Exception):
    """Base class of every pycxi error."""


class CxiUserError(CxiError, ValueError):
    """Invalid input, rejected in Python before any C call."""


class CxiLibError(CxiError, OSError):
    """A libcxi call returned ``-errno``.

    ``errno`` and ``strerror`` are the standard OSError attributes; ``func`` is the
    C function's name; ``fail_info`` is a :class:`pycxi.FailInfo` for ``ENOSPC`` from
    ``cxil_alloc_svc``/``cxil_update_svc`` and ``None`` otherwise.
    """

    def __init__(self, err: int, func: str, fail_info: object | None = None,
                 detail: str = "") -> None:
        msg = f"{func}: {os.strerror(err)} ({errno_name(err)})"
        if detail:
            msg += f": {detail}"
        if fail_info is not None:
            msg += f" [{fail_info}]"
        super().__init__(err, msg)
        self.func = func
        self.fail_info = fail_info

    def __str__(self) -> str:
        return self.strerror or ""


def errno_name(err: int) -> str:
    """``EPERM`` for 1, ... (``E<n>`` for unknown numbers)."""
    return _errno.errorcode.get(err, f"E{err}")


def from_rc(rc: int, func: str, fail_info: object | None = None, detail: str = "") -> CxiLibError:
    """Build the exception for a negative libcxi return code ``rc``."""
    return CxiLibError(-rc, func, fail_info, detail)

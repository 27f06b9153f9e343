"""Network-namespace identities as the CXI driver sees them (the nsfs inode)."""
from __future__ import annotations

import os

from pycxi.errors import CxiUserError


def netns_inode(path_or_pid: str | int | os.PathLike | None = None) -> int:
    """Return the inode of a network namespace.

    ``None``: the calling thread's (``/proc/thread-self/ns/net``); an ``int``: that pid's;
    a path: a bind-mounted namespace such as ``/run/netns/x`` or ``/proc/PID/ns/net``.
    This is the number the driver compares against ``current->nsproxy->net_ns->ns.inum``.
    """
    if path_or_pid is None:
        path = "/proc/thread-self/ns/net"
    elif isinstance(path_or_pid, bool):
        raise CxiUserError("netns: expected a path or a pid, got a bool")
    elif isinstance(path_or_pid, int):
        if path_or_pid <= 0:
            raise CxiUserError(f"netns: invalid pid {path_or_pid}")
        path = f"/proc/{path_or_pid}/ns/net"
    else:
        path = os.fspath(path_or_pid)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path.isdigit():
            return netns_inode(int(path))
    return os.stat(path).st_ino

"""Helpers for the core tests: processes in other namespaces, as other users."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def netns_inode_of(name):
    return os.stat(f"/run/netns/{name}").st_ino


def run_py(code, netns=None, env=None, timeout=60):
    """Run Python code in a fresh interpreter, optionally inside a named netns."""
    cmd = [sys.executable, "-c", code]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=env or os.environ.copy(),
                          timeout=timeout)


class Forked:
    def __init__(self, returncode, output):
        self.returncode = returncode
        self.stdout = self.stderr = output


def run_forked(fn, netns=None, user=None, timeout=60):
    """Run ``fn()`` in a forked child, after entering ``netns`` and dropping to
    ``user=(uid, gid)`` for real (setgroups, setgid, setuid); its return value is the
    exit status.  Forking (not exec) keeps pycxi importable for any uid."""
    import ctypes
    import signal
    import time

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 99
        try:
            os.close(rfd)
            os.dup2(wfd, 1)
            os.dup2(wfd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            if netns:
                fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                os.close(fd)
            if user is not None:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            status = int(fn() or 0)
        except BaseException as e:  # report, never unwind into the parent's code
            print(f"child failed: {e!r}", file=sys.stderr)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(rfd, "rb") as r:
        while True:
            data = r.read(65536)
            if not data:
                break
            chunks.append(data)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
    _, st = os.waitpid(pid, 0)
    return Forked(os.waitstatus_to_exitcode(st), b"".join(chunks).decode(errors="replace"))


def pycxi_cli(*args, netns=None, user=None, timeout=60):
    """The ``pycxi`` command in a forked child (as ``user``, in ``netns``)."""
    def fn():
        from pycxi.cli import main
        return main(list(args))
    return run_forked(fn, netns=netns, user=user, timeout=timeout)

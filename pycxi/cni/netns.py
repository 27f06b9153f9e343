"""The pod's network namespace: validating ``CNI_NETNS``, pinning it, telling whether a pod is gone.

The driver admits a process to a NET_NS service by comparing the inode number of the caller's
netns with the one recorded in the service.  Two things follow:

* ``CNI_NETNS`` must name a network namespace, and not the node's own: any other file has an
  inode number too (``/etc/passwd``), and ``/proc/self/ns/net`` would bind the service to the
  host's namespace, admitting every host process.  :func:`open_netns` accepts only an nsfs file
  whose ``NS_GET_NSTYPE`` is ``CLONE_NEWNET`` and that is neither the plugin's netns nor that of
  pid 1.
* The kernel reuses an inode number as soon as its namespace is freed.  So the plugin *pins* the
  namespace -- a bind mount of it onto a file under ``dataDir`` (:func:`pin`), made after the
  record's intent and before any service, removed (:func:`unpin`) only after the service is gone.
  While the pin exists the namespace exists, so no namespace made later can carry its number.
"""
import errno
import fcntl
import os

NS_GET_NSTYPE = 0xB703            # _IO(0xb7, 0x3), linux/nsfs.h
CLONE_NEWNET = 0x40000000
_NS_KINDS = {0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
             0x10000000: "user", 0x20000000: "pid", 0x40000000: "network", 0x00000080: "time"}


class NotANetns(Exception):
    """``CNI_NETNS`` is unusable; ``str()`` says why (the caller maps it to CNI code 4)."""


def open_netns(path):
    """Open ``path`` as a pod's network namespace.  Returns ``(fd, inode)``; the caller closes fd.

    Refuses (:class:`NotANetns`) anything but an nsfs network namespace other than the plugin's
    own and pid 1's.  Only an nsfs file is opened at all (a FIFO or a device node named as
    CNI_NETNS is never opened), and the opened file is checked again (no swap in between)."""
    try:
        own = os.stat("/proc/self/ns/net")
    except OSError as exc:
        raise NotANetns(f"cannot read the plugin's own netns: {exc}") from None
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotANetns(f"{type(exc).__name__}: {exc.strerror}") from None
    if st.st_dev != own.st_dev or (st.st_mode & 0o170000) != 0o100000:
        raise NotANetns("not a namespace file (nsfs): e.g. /var/run/netns/<name> or /proc/<pid>/ns/net")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise NotANetns("the path changed while it was opened")
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:
            raise NotANetns(f"not a namespace file (NS_GET_NSTYPE: {exc.strerror})") from None
        if kind != CLONE_NEWNET:
            raise NotANetns(f"a {_NS_KINDS.get(kind, hex(kind))} namespace, not a network namespace")
        if fst.st_ino == own.st_ino:
            raise NotANetns("the plugin's own network namespace (the node's): a pod needs its own")
        try:
            init = os.stat("/proc/1/ns/net").st_ino
        except OSError:
            init = None
        if fst.st_ino == init:
            raise NotANetns("the initial network namespace (pid 1's): a pod needs its own")
        return fd, fst.st_ino
    except BaseException:
        os.close(fd)
        raise


def pin(fd, target, inode):
    """Bind-mount the namespace open at ``fd`` onto the file ``target`` (created if missing).

    Any earlier layer at ``target`` (an ADD killed after its mount) is removed first, so there
    is exactly one.  Raises OSError if the mount fails or does not name ``inode``."""
    from pycxi.device import mount_bind
    unpin(target, unlink=False)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
    mount_bind(f"/proc/self/fd/{fd}", target)
    if os.stat(target).st_ino != inode:
        unpin(target)
        raise OSError(errno.EIO, f"the pin at {target} does not name netns {inode}")


def unpin(target, unlink=True):
    """Remove every mount at ``target`` (and the file).  Idempotent; never follows a symlink."""
    from pycxi.device import umount
    for _ in range(64):
        try:
            umount(target)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):   # not a mount point (any more)
                break
            raise
    if unlink:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass


def pinned_inode(target):
    """The netns inode the pin at ``target`` holds, or None (no file, or not a mount)."""
    try:
        st = os.stat(target)
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return st.st_ino if st.st_dev == own.st_dev else None


def pod_state(path, inode, ignore_under):
    """Whether the pod that owns netns ``inode`` (runtime file ``path``) is gone: True (gone),
    False (alive: :func:`in_use`), None (cannot tell from here).

    Gone needs the runtime's file to be checkable here: a path outside /proc whose directory is
    visible (containerd, CRI-O, podman: ``/run/netns/...``) that no longer names the namespace,
    or a ``/proc/<pid>/...`` path when nothing here refers to the namespace (as the runtime's
    own GC sees it).  A path in a directory not visible here (a node component without the
    host's ``/run/netns``) is never taken for a dead pod."""
    if in_use(path, inode, ignore_under):
        return False
    if not isinstance(path, str) or not path.startswith("/"):
        return True
    if path.startswith("/proc/") or os.path.isdir(os.path.dirname(path)):
        return True
    return None


def _mount_escape(path):
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011") \
        .replace("\n", "\\012")


def in_use(path, inode, ignore_under):
    """Whether anything but the plugin's own pins still refers to netns ``inode``: ``path`` (the
    runtime's netns file) still names it, a process lives in it, or an nsfs mount outside
    ``ignore_under`` (the plugin's dataDir) holds it.  False means the pod is gone.

    Seen from this mount namespace and this pid namespace: a sweep must run where the runtime's
    netns files and the node's processes are visible (the host's).  A namespace kept only by an
    open file descriptor is not seen: its service is then released, which can only deny the pod,
    never admit anyone else."""
    if not isinstance(inode, int) or inode <= 0:
        return False
    if isinstance(path, str) and path:
        try:
            if os.stat(path).st_ino == inode:
                return True
        except OSError:
            pass
    tag = f"net:[{inode}]"
    skip = _mount_escape(os.path.normpath(ignore_under)).rstrip("/") + "/" if ignore_under else None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if tag in line:
                    fields = line.split(" ", 5)
                    if len(fields) > 4 and fields[3] == tag and not (skip and fields[4].startswith(skip)):
                        return True
    except OSError:
        return True      # cannot tell: assume in use, never destroy by mistake
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True
    for p in pids:
        try:
            if os.readlink(f"/proc/{p}/ns/net") == tag:
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH, errno.EACCES, errno.EPERM):
                return True
    return False

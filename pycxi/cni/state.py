"""Per-attachment state records, the only link between a pod and its CXI service IDs.

Layout under ``dataDir`` (default ``/run/cni/cxi``; services do not survive a reboot, nor does
tmpfs)::

    <dataDir>/lock                               one flock for every cxi network on the node
    <dataDir>/<network>/<containerID>_<ifname>.json
    <dataDir>/by-netns/<inode>:<network>:<containerID>_<ifname>   -> ../<network>/<...>.json

The ``by-netns`` symlinks index the records by netns inode, so that ADD and DEL find the records
sharing a netns (inode reuse, shared namespaces) without reading every record on the node.  A
link is made before its record's intent is written and removed after the record; a dangling
link (a writer died in between) is ignored and removed.

A record is written atomically (temporary file in the same directory, then rename) and only
while the lock is held.  ADD writes it three times: the intent (devices, netns inode, VNIs, no
service IDs yet) *before* any service exists, then each service ID as soon as the device returns
it, then ``phase: ready``.  So every service the plugin creates is either recorded or can be
found from an intent (see :func:`pycxi.cni.commands.find_orphans`).
"""
import errno
import fcntl
import json
import os

RECORD_VERSION = 1
PHASE_ADDING = "adding"
PHASE_READY = "ready"
PHASE_DELETING = "deleting"


class Lock:
    """``with Lock(path):`` -- an exclusive flock on ``path`` (created 0600 if missing)."""

    def __init__(self, path):
        self.path = path
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        return self

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)     # closing drops the flock
            self.fd = -1


class StateStore:
    """Records of one network under ``data_dir``."""

    def __init__(self, data_dir, network):
        data_dir = os.path.normpath(data_dir)
        self.data_dir = data_dir
        self.network = network
        self.dir = os.path.join(data_dir, network)

    def ensure_dirs(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def lock(self):
        self.ensure_dirs()
        return Lock(os.path.join(self.data_dir, "lock"))

    @staticmethod
    def filename(container_id, ifname):
        return f"{container_id}_{ifname}.json"

    def path(self, container_id, ifname):
        return os.path.join(self.dir, self.filename(container_id, ifname))

    def load(self, container_id, ifname):
        return _read(self.path(container_id, ifname))

    def save(self, rec):
        rec["version"] = RECORD_VERSION
        path = self.path(rec["containerID"], rec["ifname"])
        tmp = os.path.join(self.dir, f".{os.getpid()}.tmp")
        data = json.dumps(rec, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        # No fsync: a record must survive the death of the process (rename is atomic), not of
        # the machine -- CXI services do not survive a reboot either (dataDir is on tmpfs).
        os.rename(tmp, path)

    # -- the by-netns index
    @property
    def index_dir(self):
        return os.path.join(self.data_dir, "by-netns")

    def _link(self, inode, network, container_id, ifname):
        return os.path.join(self.index_dir, f"{inode}:{network}:{self.filename(container_id, ifname)}")

    def index(self, rec):
        os.makedirs(self.index_dir, mode=0o700, exist_ok=True)
        target = os.path.join("..", rec["network"], self.filename(rec["containerID"], rec["ifname"]))
        try:
            os.symlink(target, self._link(rec["netnsInode"], rec["network"], rec["containerID"], rec["ifname"]))
        except FileExistsError:
            pass

    def unindex(self, rec):
        try:
            os.unlink(self._link(rec.get("netnsInode"), rec.get("network"), rec.get("containerID"),
                                 rec.get("ifname")))
        except (FileNotFoundError, TypeError):
            pass

    def same_netns(self, inode):
        """Records (of every network) whose netns inode is ``inode``, from the index."""
        out = []
        prefix = f"{inode}:"
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return out
        for n in names:
            if not n.startswith(prefix):
                continue
            link = os.path.join(self.index_dir, n)
            rec = _read(os.path.join(self.index_dir, os.readlink(link))) if os.path.islink(link) else None
            if rec is None or rec.get("netnsInode") != inode:
                try:
                    os.unlink(link)          # dangling, or the record moved on to another netns
                except FileNotFoundError:
                    pass
                if rec is None:
                    continue
            if "corrupt" not in rec:
                rec["_path"] = os.path.normpath(rec["_path"])
                out.append(rec)
        return out

    def unindex_key(self, container_id, ifname):
        """Remove the index link of (network, containerID, ifname) whatever its inode (DEL of a
        record that was never written: an ADD killed between the link and the intent)."""
        suffix = f":{self.network}:{self.filename(container_id, ifname)}"
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return
        for n in names:
            if n.endswith(suffix):
                try:
                    os.unlink(os.path.join(self.index_dir, n))
                except FileNotFoundError:
                    pass

    def clean_index(self):
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return
        for n in names:
            link = os.path.join(self.index_dir, n)
            if not os.path.exists(link):
                try:
                    os.unlink(link)
                except FileNotFoundError:
                    pass

    def remove(self, container_id, ifname):
        try:
            os.unlink(self.path(container_id, ifname))
        except FileNotFoundError:
            pass

    def records(self):
        """Every record of this network (unreadable ones as ``{"corrupt": path}``)."""
        return _scan(self.dir)

    def all_records(self):
        """Every record of every network under ``data_dir`` (used to know which IDs are taken)."""
        out = []
        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            return out
        for n in names:
            d = os.path.join(self.data_dir, n)
            if n != "by-netns" and os.path.isdir(d):
                out.extend(_scan(d))
        return out

    def clean_tmp(self):
        """Remove temporary files of writers that are gone (a writer SIGKILLed mid-save)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for n in names:
            if n.startswith(".") and n.endswith(".tmp"):
                pid = n[1:-4]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    try:
                        os.unlink(os.path.join(self.dir, n))
                    except FileNotFoundError:
                        pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(data)
        if not isinstance(rec, dict):
            raise ValueError("not an object")
    except ValueError:
        return {"corrupt": path}
    rec["_path"] = path
    return rec


def _scan(d):
    out = []
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for n in sorted(names):
        if n.endswith(".json") and not n.startswith("."):
            rec = _read(os.path.join(d, n))
            if rec is not None:
                out.append(rec)
    return out


def recorded_ids(records, exclude=None):
    """{(device, svc_id)} of every service recorded in ``records`` (minus record ``exclude``)."""
    out = set()
    for r in records:
        if exclude is not None and r.get("_path") == exclude:
            continue
        for s in r.get("services") or ():
            if isinstance(s, dict) and isinstance(s.get("svc"), int):
                out.add((s.get("device"), s["svc"]))
    return out


def netns_alive(path, inode):
    """Whether the network namespace with ``inode`` still exists.

    True when ``path`` still names it; otherwise it is looked for among the nsfs bind mounts
    of this mount namespace and the namespaces of every process.  (A namespace kept only by an
    open file descriptor of some process, or bound in another mount namespace, is missed.)
    """
    if not isinstance(inode, int) or inode <= 0:
        return False
    if isinstance(path, str) and path:
        try:
            if os.stat(path).st_ino == inode:
                return True
        except OSError:
            pass
    tag = f"net:[{inode}]"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if tag in line:
                    return True
    except OSError:
        pass
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True      # cannot tell: assume alive, never destroy by mistake
    for p in pids:
        try:
            if os.readlink(f"/proc/{p}/ns/net") == tag:
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH, errno.EACCES, errno.EPERM):
                return True
    return False

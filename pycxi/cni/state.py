"""Per-attachment state records, the only link between a pod and its CXI service IDs.

Layout under ``dataDir`` (default ``/run/cni/cxi``; services do not survive a reboot, nor does
tmpfs).  Only the three top-level names below are ever made by this version; every name derived
from input (network name, containerID, ifname) is encoded (``E``), so it never contains ``/``
or ``.`` and can never equal a fixed name, another network's directory or another record::

    <dataDir>/lock                                  one flock for every cxi network on the node
    <dataDir>/_networks/<E(network)>/<E(containerID)>.<E(ifname)>.json    the record
    <dataDir>/_networks/<E(network)>/<E(containerID)>.<E(ifname)>.netns   the netns pin (a mount)
    <dataDir>/_index/<inode>.<E(network)>.<E(containerID)>.<E(ifname)>    -> the record (symlink)

``E`` keeps ``[A-Za-z0-9_-]`` and writes any other character as ``%XX`` per UTF-8 byte
(reversible: :func:`decode`); ``.`` only ever separates encoded parts.  A name longer than
:data:`MAX_NAME` is replaced by ``~`` and the SHA-256 of its encoded form (``~`` is never
produced by ``E``).  Temporary files start with ``.``, which ``E`` never produces either.
The names and paths are defined in :mod:`pycxi.cni.layout` (which the DEL fast path loads without
this module).

The ``_index`` links index the records by netns inode, so that ADD finds the records sharing a
netns without reading every record on the node.  A link is made before its record's intent is
written and removed after the record; a dangling link (a writer died in between) is ignored and
removed.

A record is written atomically (temporary file in the same directory, then rename) and only
while the lock is held.  ADD writes it: the intent (devices, netns inode, VNIs, ``pin``, no
service IDs yet) *before* the pin and before any service exists, then each service ID as soon as
the device returns it, then ``phase: ready``.  So every service the plugin creates, and every
pin, is either recorded or can be found from an intent.

Version 1 (the layout before this one: ``<dataDir>/<network>/<containerID>_<ifname>.json``, and
``<dataDir>/by-netns``) is migrated under the lock by the first call of a newer plugin
(:meth:`StateStore.migrate_legacy`): pods running across a plugin upgrade keep being found by
DEL and GC, and get their namespace pinned if it still exists.
"""
import fcntl
import json
import os

from pycxi.cni.layout import (INDEX, LEGACY_INDEX, LOCK, MAX_NAME, NETWORKS, decode, encode,  # noqa: F401
                              index_link, index_links_of, name_of, network_dir, nothing_stored,
                              record_stem)

RECORD_VERSION = 2
PHASE_ADDING = "adding"
PHASE_READY = "ready"
PHASE_DELETING = "deleting"
PHASES = (PHASE_ADDING, PHASE_READY, PHASE_DELETING)

# service entry states: "intent" (no ID yet), "enabled", "disabled" (kept: LNIs remain, admits
# no new LNI), "busy" (kept: LNIs remain and the driver refused to disable it -- still enabled)
SVC_STATES = ("intent", "enabled", "disabled", "busy")


# --------------------------------------------------------------------------------------------
# the record

class BadRecord(ValueError):
    pass


def _want(d, key, types, default=None, optional=True):
    """``d[key]`` if it has one of ``types`` (a bool is not an int here), else BadRecord."""
    v = d.get(key, default)
    if v is None and optional:
        return None
    if not isinstance(v, types) or (type(v) is bool and types is not bool):
        raise BadRecord(f"{key}: expected {getattr(types, '__name__', types)}, got {v!r}")
    return v


class ServiceEntry:
    """One service of an attachment on one device."""
    __slots__ = ("device", "svc", "state")
    device: str
    svc: "int | None"          # None while an intent
    state: str                 # one of SVC_STATES

    def __init__(self, device, svc=None, state="intent"):
        self.device, self.svc, self.state = device, svc, state

    def to_dict(self):
        return {"device": self.device, "svc": self.svc, "state": self.state}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise BadRecord(f"services: expected objects, got {d!r}")
        dev = _want(d, "device", str, optional=False)
        svc = _want(d, "svc", int)
        state = d.get("state", "intent" if svc is None else "enabled")
        if state not in SVC_STATES or (svc is None) != (state == "intent"):
            raise BadRecord(f"services: bad state {state!r} for svc {svc!r}")
        return cls(dev, svc, state)

    def __repr__(self):
        return f"ServiceEntry({self.device!r}, {self.svc!r}, {self.state!r})"


class Record:
    """The state of one attachment (network, containerID, ifname): what ADD made for it.

    Loaded and validated only by :meth:`from_dict`; written only by :meth:`to_dict`.  ``path``
    (where it lives) is not part of the file."""
    __slots__ = ("network", "container_id", "ifname", "netns", "netns_inode", "pin", "vnis",
                 "vni_source", "vni_key", "vni_release", "local_allocator", "phase", "services",
                 "pid", "time", "sim_root", "path")
    network: str
    container_id: str
    ifname: str
    netns: "str | None"            # the runtime's CNI_NETNS at ADD
    netns_inode: int               # what the services are bound to
    pin: bool                      # a pin of the netns may exist at <record>.netns
    vnis: "list[int]"
    vni_source: "str | None"
    vni_key: "str | None"          # local allocator: the key to release
    vni_release: bool              # local allocator: release on DEL (per-pod key)
    local_allocator: "dict | None"
    phase: str                     # one of PHASES
    services: "list[ServiceEntry]"
    pid: int
    time: int
    sim_root: "str | None"         # software device: the PYCXI_SIM_ROOT of the services
    path: "str | None"

    def __init__(self, network, container_id, ifname, netns=None, netns_inode=0, pin=False,
                 vnis=(), vni_source=None, vni_key=None, vni_release=False, local_allocator=None,
                 phase=PHASE_ADDING, services=(), pid=0, time=0, sim_root=None, path=None):
        self.network, self.container_id, self.ifname = network, container_id, ifname
        self.netns, self.netns_inode, self.pin = netns, netns_inode, pin
        self.vnis = list(vnis)
        self.vni_source, self.vni_key, self.vni_release = vni_source, vni_key, vni_release
        self.local_allocator = local_allocator
        self.phase, self.services = phase, list(services)
        self.pid, self.time, self.sim_root, self.path = pid, time, sim_root, path

    @property
    def key(self):
        return (self.container_id, self.ifname)

    def to_dict(self):
        d = {"version": RECORD_VERSION, "network": self.network, "containerID": self.container_id,
             "ifname": self.ifname, "netns": self.netns, "netnsInode": self.netns_inode,
             "pin": self.pin, "vnis": list(self.vnis), "phase": self.phase,
             "services": [s.to_dict() for s in self.services], "pid": self.pid, "time": self.time}
        for k, v in (("vniSource", self.vni_source), ("vniKey", self.vni_key),
                     ("localAllocator", self.local_allocator), ("simRoot", self.sim_root)):
            if v is not None:
                d[k] = v
        if self.vni_release:
            d["vniRelease"] = True
        return d

    @classmethod
    def from_dict(cls, d, path=None, network=None):
        """Validate a parsed record (version 1 or 2).  ``network``: the network of a version-1
        record that lacks the field (its directory name)."""
        if not isinstance(d, dict):
            raise BadRecord("not an object")
        version = d.get("version", 1)
        if version not in (1, RECORD_VERSION):
            raise BadRecord(f"unknown record version {version!r}")
        vnis = _want(d, "vnis", list, [])
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vnis):
            raise BadRecord(f"vnis: expected integers, got {vnis!r}")
        phase = d.get("phase", PHASE_ADDING)
        if phase not in PHASES:
            raise BadRecord(f"phase: {phase!r}")
        services = _want(d, "services", list, [])
        inode = _want(d, "netnsInode", int, 0) or 0
        la = _want(d, "localAllocator", dict)
        return cls(network=_want(d, "network", str, network, optional=False),
                   container_id=_want(d, "containerID", str, optional=False),
                   ifname=_want(d, "ifname", str, optional=False),
                   netns=_want(d, "netns", str), netns_inode=inode,
                   pin=version >= 2 and d.get("pin") is True,
                   vnis=vnis, vni_source=_want(d, "vniSource", str), vni_key=_want(d, "vniKey", str),
                   vni_release=d.get("vniRelease") is True, local_allocator=la, phase=phase,
                   services=[ServiceEntry.from_dict(s) for s in services],
                   pid=_want(d, "pid", int, 0) or 0, time=_want(d, "time", int, 0) or 0,
                   sim_root=_want(d, "simRoot", str), path=path)

    def __repr__(self):
        return (f"Record({self.network!r}, {self.container_id!r}, {self.ifname!r}, "
                f"inode={self.netns_inode}, phase={self.phase!r}, services={self.services!r})")


class Unreadable:
    """A record file that cannot be parsed or validated (``path``, ``why``)."""
    __slots__ = ("path", "why")

    def __init__(self, path, why):
        self.path, self.why = path, why

    def __repr__(self):
        return f"Unreadable({self.path!r}, {self.why!r})"


def read_record(path, network=None):
    """Record, Unreadable, or None when ``path`` does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        return Unreadable(path, "a directory")
    try:
        return Record.from_dict(json.loads(data), path, network)
    except (ValueError, UnicodeDecodeError) as exc:     # BadRecord and JSONDecodeError too
        return Unreadable(path, str(exc))


def recorded_ids(records, exclude=None):
    """{(device, svc_id)} of every service recorded in ``records`` (minus path ``exclude``)."""
    out = set()
    for r in records:
        if isinstance(r, Record) and r.path != exclude:
            out.update((s.device, s.svc) for s in r.services if s.svc is not None)
    return out


# --------------------------------------------------------------------------------------------
# the lock and the store

class Lock:
    """``with Lock(path):`` -- an exclusive flock on ``path`` (created 0600 if missing)."""

    def __init__(self, path, after=None):
        self.path = path
        self.after = after
        self.fd = -1

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except IsADirectoryError:
            # version 1 let a network be named "lock": its directory sits where the lock
            # belongs.  Every call of that version failed there, so it is empty.
            os.rmdir(self.path)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            if self.after is not None:
                self.after()
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
    """Records of one network under ``data_dir`` (and the node-wide index and lock)."""

    def __init__(self, data_dir, network, log=None):
        self.data_dir = os.path.normpath(data_dir)
        self.network = network
        self.log = log
        self.networks_dir = os.path.join(self.data_dir, NETWORKS)
        self.dir = network_dir(self.data_dir, network)
        self.index_dir = os.path.join(self.data_dir, INDEX)

    def for_network(self, network):
        return StateStore(self.data_dir, network, self.log)

    def ensure_dirs(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def lock(self):
        """The node-wide lock; once held, records of the previous layout are migrated."""
        self.ensure_dirs()
        return Lock(os.path.join(self.data_dir, LOCK), after=self.migrate_legacy)

    # -- names
    def stem(self, container_id, ifname):
        return record_stem(self.data_dir, self.network, container_id, ifname)

    def path(self, container_id, ifname):
        return self.stem(container_id, ifname) + ".json"

    @staticmethod
    def pin_path(rec):
        return rec.path[:-len(".json")] + ".netns"

    def new_record(self, container_id, ifname, **kw):
        return Record(self.network, container_id, ifname, path=self.path(container_id, ifname), **kw)

    # -- records
    def load(self, container_id, ifname):
        return read_record(self.path(container_id, ifname), self.network)

    def save(self, rec):
        """Write ``rec`` atomically at ``rec.path`` (any network's)."""
        d = os.path.dirname(rec.path)
        tmp = os.path.join(d, f".{os.getpid()}.tmp")
        data = json.dumps(rec.to_dict(), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        # No fsync: a record must survive the death of the process (rename is atomic), not of
        # the machine -- CXI services do not survive a reboot either (dataDir is on tmpfs).
        os.rename(tmp, rec.path)

    def remove(self, rec):
        try:
            os.unlink(rec.path)
        except FileNotFoundError:
            pass

    def records(self):
        """Every record of this network (Record or Unreadable)."""
        return _scan(self.dir, self.network)

    def all_records(self):
        """Every record of every network (used to know which service IDs are taken)."""
        out = []
        try:
            names = os.listdir(self.networks_dir)
        except FileNotFoundError:
            return out
        for n in sorted(names):
            if not n.startswith("."):
                out.extend(_scan(os.path.join(self.networks_dir, n)))
        return out

    def network_stores(self):
        """A store for every network that has a directory (names read from its records)."""
        out = []
        for rec in self.all_records():
            if isinstance(rec, Record) and not any(s.dir == os.path.dirname(rec.path) for s in out):
                out.append(self.for_network(rec.network))
        return out

    def clean_tmp(self):
        """Remove temporary files of writers that are gone (a writer SIGKILLed mid-save)."""
        _clean_tmp(self.dir)

    def nothing_for(self, container_id, ifname):
        """Whether provably nothing of (network, containerID, ifname) is stored
        (:func:`pycxi.cni.layout.nothing_stored`)."""
        return nothing_stored(self.data_dir, self.network, container_id, ifname)

    # -- the by-inode index
    def _link(self, inode, network, container_id, ifname):
        return index_link(self.data_dir, inode, network, container_id, ifname)

    def index(self, rec):
        os.makedirs(self.index_dir, mode=0o700, exist_ok=True)
        target = os.path.relpath(rec.path, self.index_dir)
        try:
            os.symlink(target, self._link(rec.netns_inode, rec.network, rec.container_id, rec.ifname))
        except FileExistsError:
            pass

    def unindex(self, rec):
        try:
            os.unlink(self._link(rec.netns_inode, rec.network, rec.container_id, rec.ifname))
        except FileNotFoundError:
            pass

    def same_netns(self, inode):
        """Records (of every network) whose netns inode is ``inode``, from the index."""
        out = []
        prefix = f"{inode}."
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return out
        for n in names:
            if not n.startswith(prefix):
                continue
            link = os.path.join(self.index_dir, n)
            try:
                target = os.path.normpath(os.path.join(self.index_dir, os.readlink(link)))
            except OSError:
                continue
            rec = read_record(target) if target.startswith(self.networks_dir + os.sep) else None
            if not isinstance(rec, Record) or rec.netns_inode != inode:
                try:
                    os.unlink(link)          # dangling, or the record moved on to another netns
                except FileNotFoundError:
                    pass
                continue
            out.append(rec)
        return out

    def unindex_key(self, container_id, ifname):
        """Remove the index link of (network, containerID, ifname) whatever its inode (DEL of a
        record that was never written: an ADD killed between the link and the intent)."""
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return
        for n in index_links_of(names, self.network, container_id, ifname):
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

    # -- version 1 -> 2
    def migrate_legacy(self):
        """Move records of the version-1 layout into this one (under the lock).

        Version 1 kept ``<dataDir>/<network>/<containerID>_<ifname>.json`` and an index in
        ``<dataDir>/by-netns``; its network names matched ``[A-Za-z0-9][A-Za-z0-9_.-]*``, so
        none is ``_networks`` or ``_index``.  Each record is rewritten here (version 2, the same
        services), its namespace pinned if it still exists, and then the old file removed;
        interrupted, the next call finishes it (an existing new record wins)."""
        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            return
        if len(names) <= 3 and all(n in (LOCK, NETWORKS, INDEX) for n in names):
            return                        # the usual case: nothing to migrate
        from pycxi.cni import netns as nsmod
        for n in names:
            if n in (LOCK, NETWORKS, INDEX) or n.startswith("."):
                continue
            d = os.path.join(self.data_dir, n)
            if n == LEGACY_INDEX:
                _remove_links(d)
                continue
            if os.path.islink(d) or not os.path.isdir(d):
                continue
            for rec in _scan(d, n):
                if isinstance(rec, Unreadable):
                    self._warn(f"legacy record {rec.path} is unreadable ({rec.why}); left in place")
                    continue
                old = rec.path
                store = self.for_network(rec.network)
                store.ensure_dirs()
                new = store.path(rec.container_id, rec.ifname)
                if not os.path.exists(new):
                    rec.path = new
                    if rec.services and _netns_names(rec.netns, rec.netns_inode):
                        rec.pin = True            # intent first, then the pin
                    store.index(rec)
                    store.save(rec)
                    if rec.pin:
                        self._pin_legacy(nsmod, rec)
                    self._warn(f"migrated record {old} to {new}" + (" (netns pinned)" if rec.pin else ""))
                os.unlink(old)
            _clean_tmp(d)
            try:
                os.rmdir(d)
            except OSError:
                pass

    def _pin_legacy(self, nsmod, rec):
        try:
            fd, inode = nsmod.open_netns(rec.netns)
            try:
                if inode == rec.netns_inode:
                    nsmod.pin(fd, self.pin_path(rec), inode)
            finally:
                os.close(fd)
        except (OSError, nsmod.NotANetns) as exc:
            self._warn(f"could not pin the netns of migrated record {rec.path}: {exc}")

    def _warn(self, msg):
        if self.log is not None:
            self.log.warning(msg)


def _netns_names(path, inode):
    try:
        return bool(path) and os.stat(path).st_ino == inode
    except OSError:
        return False


def _remove_links(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = os.path.join(d, n)
        if os.path.islink(p):
            os.unlink(p)
    try:
        os.rmdir(d)
    except OSError:
        pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_tmp(d):
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return
    for n in names:
        if n.startswith(".") and n.endswith(".tmp"):
            pid = n[1:-4]
            if pid.isdigit() and not _pid_alive(int(pid)):
                try:
                    os.unlink(os.path.join(d, n))
                except FileNotFoundError:
                    pass


def _scan(d, network=None):
    out = []
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for n in sorted(names):
        if n.endswith(".json") and not n.startswith("."):
            rec = read_record(os.path.join(d, n), network)
            if rec is not None:
                out.append(rec)
    return out

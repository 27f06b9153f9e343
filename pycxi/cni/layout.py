"""Where an attachment's state lives under ``dataDir``: the names (:func:`encode`, :func:`name_of`),
the paths, and :func:`nothing_stored`, the DEL fast path's check (layout: :mod:`pycxi.cni.state`).

Imports nothing but the built-in ``posix`` module, which the interpreter has loaded before any of
our code runs (``os`` is not, under ``-S``): a DEL with nothing to do loads this module and no
other of pycxi's beyond the plugin's own (see :func:`pycxi.cni.plugin.nothing_to_delete`).
Paths are joined as :func:`os.path.join` would, for the normalized ``data_dir`` the callers pass.
"""
import posix

DEFAULT_DATA_DIR = "/run/cni/cxi"
LOCK = "lock"
NETWORKS = "_networks"
INDEX = "_index"
LEGACY_INDEX = "by-netns"
MAX_NAME = 200

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def encode(s):
    """A file-name-safe, reversible spelling of ``s``: ``[A-Za-z0-9_-]`` kept, any other
    character ``%XX`` per UTF-8 byte (lone surrogates too, e.g. undecodable environment bytes)."""
    if _SAFE.issuperset(s):
        return s or "%"          # "" would be no name at all; a lone % is no other encoding
    out = []
    for ch in s:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def decode(e):
    """Inverse of :func:`encode`."""
    if "%" not in e or e == "%":
        return "" if e == "%" else e
    buf = bytearray()
    i = 0
    while i < len(e):
        if e[i] == "%":
            buf.append(int(e[i + 1:i + 3], 16))
            i += 3
        else:
            buf.extend(e[i].encode())
            i += 1
    return buf.decode("utf-8", "surrogatepass")


def name_of(*parts):
    """The file name for ``parts`` (each encoded, joined by ``.``), hashed when too long."""
    joined = ".".join(encode(p) for p in parts)
    if len(joined) <= MAX_NAME:
        return joined
    import hashlib
    return "~" + hashlib.sha256(joined.encode()).hexdigest()


def join(a, *names):
    """``os.path.join`` (posixpath's, for str), without importing it."""
    for n in names:
        if n.startswith("/"):
            a = n
        elif not a or a.endswith("/"):
            a += n
        else:
            a += "/" + n
    return a


def is_normal(data_dir):
    """Whether ``data_dir`` is absolute and already what ``os.path.normpath`` makes of it."""
    return data_dir == "/" or (data_dir[:1] == "/" and data_dir[:2] != "//" and all(
        p not in ("", ".", "..") for p in data_dir[1:].split("/")))


# -- the paths (``data_dir`` normalized; every name derived from input is encoded)

def network_dir(data_dir, network):
    return join(data_dir, NETWORKS, name_of(network))


def record_stem(data_dir, network, container_id, ifname):
    """The record is ``<stem>.json``, the netns pin ``<stem>.netns``."""
    return join(network_dir(data_dir, network), name_of(container_id, ifname))


def index_link(data_dir, inode, network, container_id, ifname):
    return join(data_dir, INDEX, f"{inode}.{name_of(network, container_id, ifname)}")


def index_links_of(names, network, container_id, ifname):
    """The names (of ``_index``'s) that are links of the attachment, whatever their inode."""
    suffix = "." + name_of(network, container_id, ifname)
    return [n for n in names if n.endswith(suffix) and n[:-len(suffix)].isdigit()]


def legacy_record(data_dir, network, container_id, ifname):
    """Where version 1 kept the record (names not encoded: they were checked then)."""
    return join(data_dir, network, f"{container_id}_{ifname}.json")


def _lexists(path):
    try:
        posix.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def nothing_stored(data_dir, network, container_id, ifname):
    """Whether provably nothing of (network, containerID, ifname) is stored: no record, no
    index link, no record of the previous layout (DEL's fast path; no lock needed: a record
    is created only by an ADD of the same attachment, which the runtime does not run
    concurrently with its DEL).  ``data_dir`` normalized (:func:`is_normal`); an error
    listing the index (other than its absence) is raised."""
    if _lexists(record_stem(data_dir, network, container_id, ifname) + ".json") \
            or _lexists(join(data_dir, LEGACY_INDEX)) \
            or _lexists(legacy_record(data_dir, network, container_id, ifname)):
        return False
    try:
        names = posix.listdir(join(data_dir, INDEX))
    except FileNotFoundError:
        return True
    return not index_links_of(names, network, container_id, ifname)

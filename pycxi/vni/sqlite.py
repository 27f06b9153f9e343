"""A VNI store in one SQLite file, for single nodes and podman (no Kubernetes).

Design
------
Every VNI 1..65535 except :data:`~pycxi.vni.store.RESERVED_VNIS` has exactly one row
in ``vnis``, in state ``free``, ``allocated`` or ``quarantined``; the VNI is the
primary key, so no VNI can be held twice, and a partial unique index on ``key`` for
allocated rows means no key holds two.  Finding the next VNI is an index seek on
``(state, vni)``: "first free VNI >= cursor within a range", once per range segment, so
an allocation costs O(log n) whether 10 or 60,000 VNIs are held.  (OpenCUBE's
original computed the whole free set with ``EXCEPT`` over 65k rows on every call.)
Expired quarantine rows are returned to ``free`` lazily by the next acquire, through
an index on the release time.  Keeping all rows regardless of the configured ranges
makes range changes free: a VNI outside the ranges is simply never searched for.

Concurrency and crashes: every write is one ``BEGIN IMMEDIATE`` transaction (the
write lock is taken up front, so two processes cannot both read "free" and then both
write), the database is in WAL mode so readers never block, and a busy timeout makes
writers queue instead of failing.  A process killed at any point loses only its
uncommitted transaction, which SQLite rolls back.  ``synchronous=NORMAL`` is durable
against process crashes; after a power loss the last commits may be lost (never
corrupted), and so are the containers that held those VNIs.  WAL needs shared memory
between the processes, so the file must be on a local filesystem (not NFS).

Holders: a key may be held by several *attachments* at once (the CNI plugin's
``network/containerID/ifname``: two networks of one pod, or the next sandbox of a pod
whose previous sandbox is not deleted yet).  ``holders`` has one row per attachment;
``acquire(key, holder=h)`` adds it in the same transaction that finds the VNI, and
``release(key, holder=h)`` removes it and quarantines the VNI only when no holder of the
key is left -- also in one transaction, so an acquire racing a release either keeps the
VNI or comes after the quarantine.  Keys acquired without a holder (``pycxi vni alloc``)
have none, and release as before.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence

from pycxi.vni.store import (
    DEFAULT_QUARANTINE,
    DEFAULT_RANGES,
    RESERVED_VNIS,
    STATE_ALLOCATED,
    STATE_QUARANTINED,
    VNI_MAX,
    Allocation,
    VniBusy,
    VniError,
    VniExhausted,
    VniStore,
    exhausted_message,
    search_segments,
)

__all__ = ["SqliteStore", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_HOLDERS = """
CREATE TABLE holders (
    holder TEXT PRIMARY KEY,  -- one attachment holds one key
    key    TEXT NOT NULL,
    since  REAL
);
CREATE INDEX holders_key ON holders (key);
"""

_SCHEMA = f"""
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value
);
CREATE TABLE vnis (
    vni   INTEGER PRIMARY KEY CHECK (vni BETWEEN 1 AND {VNI_MAX}),
    state TEXT NOT NULL CHECK (state IN ('free', 'allocated', 'quarantined')),
    key   TEXT,     -- holder (for quarantined rows: the last holder)
    since REAL,     -- acquire time (allocated) or release time (quarantined)
    owner TEXT,
    CHECK ((state = 'free') = (key IS NULL))
);
""" + _HOLDERS

# Indexes are created after the bulk insert of the 65k rows: faster than maintaining
# them row by row.
_INDEXES = """
CREATE INDEX vnis_state ON vnis (state, vni);
CREATE UNIQUE INDEX vnis_key ON vnis (key) WHERE state = 'allocated';
CREATE INDEX vnis_release ON vnis (since) WHERE state = 'quarantined';
"""

_RESERVED_SQL = ", ".join(str(v) for v in sorted(RESERVED_VNIS))

# The first free VNI in [lo, hi]: an index seek, not a scan.  Reserved VNIs have no
# row at all; the NOT IN is belt and braces.
_FIND_FREE = ("SELECT vni FROM vnis WHERE state = 'free' AND vni BETWEEN ? AND ? "
              f"AND vni NOT IN ({_RESERVED_SQL}) ORDER BY vni LIMIT 1")


class SqliteStore(VniStore):
    """A :class:`~pycxi.vni.store.VniStore` over one SQLite file, safe to share
    between processes (and threads) on one machine.

    ``timeout`` is how long an operation waits for another process's transaction
    before failing with :class:`~pycxi.vni.store.VniError`.
    """

    def __init__(self, path: "str | os.PathLike[str]",
                 ranges: Iterable[Sequence[int]] = DEFAULT_RANGES,
                 quarantine: float = DEFAULT_QUARANTINE,
                 clock: Callable[[], float] = time.time,
                 timeout: float = 10.0) -> None:
        super().__init__(ranges, quarantine, clock)
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: Optional[sqlite3.Connection] = None
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, the module's
            # implicit transactions would start them too late (deferred).
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise VniError(f"cannot open VNI database {self.path}: {e}") from e
        self._conn = conn
        try:
            self._setup(conn)
        except BaseException:
            self.close()
            raise

    # --- plumbing ---------------------------------------------------------------

    def _error(self, e: sqlite3.Error) -> VniError:
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return VniBusy(f"VNI database {self.path} stayed locked by another process: {e}")
        return VniError(f"VNI database {self.path}: {e}")

    def _setup(self, conn: sqlite3.Connection) -> None:
        try:
            # Switching to WAL needs a moment without other connections; it is a
            # property of the file, so only the first opener really switches.
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if mode.lower() != "wal":
                log.warning("VNI database %s: journal mode is %s, not WAL", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise self._error(e) from e
        exists = "SELECT 1 FROM sqlite_master WHERE name = 'meta'"
        # Only the creator needs the write lock: opening must not wait for writers.
        with self._read() as c:
            created = c.execute(exists).fetchone() is not None
        if not created:
            with self._tx() as c:
                if c.execute(exists).fetchone() is None:  # lost no race to another creator
                    self._create(c)
        with self._read() as c:
            row = c.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is not None and row[0] == 1:
            with self._tx() as c:     # 1 -> 2: the holders table (no holder: release as before)
                if c.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0] == 1:
                    for stmt in filter(str.strip, _HOLDERS.split(";")):
                        c.execute(stmt)
                    c.execute("UPDATE meta SET value = 2 WHERE name = 'schema'")
        with self._read() as c:
            row = c.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise VniError(f"VNI database {self.path} has schema version "
                               f"{row and row[0]!r}; this pycxi knows {SCHEMA_VERSION}")

    def _create(self, c: sqlite3.Connection) -> None:
        log.info("creating VNI database %s", self.path)
        for stmt in filter(str.strip, _SCHEMA.split(";")):
            c.execute(stmt)
        c.execute(f"""
            WITH RECURSIVE seq(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM seq WHERE v < {VNI_MAX})
            INSERT INTO vnis (vni, state) SELECT v, 'free' FROM seq
            WHERE v NOT IN ({_RESERVED_SQL})""")
        for stmt in filter(str.strip, _INDEXES.split(";")):
            c.execute(stmt)
        c.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                      [("schema", SCHEMA_VERSION), ("cursor", None)])

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise VniError(f"VNI store {self.path} is closed")
        if os.getpid() != self._pid:
            # A connection inherited across fork() shares locks with the parent and
            # can corrupt the file; each process must open its own store.
            raise VniError("VNI store used in a forked child; open a new SqliteStore there")
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, with the write lock taken at BEGIN."""
        with self._lock:
            c = self._connection()
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._error(e) from e
            try:
                yield c
            except BaseException as e:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error matters more
                if isinstance(e, sqlite3.Error):
                    raise self._error(e) from e
                raise
            try:
                c.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                raise self._error(e) from e

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            c = self._connection()
            try:
                yield c
            except sqlite3.Error as e:
                raise self._error(e) from e

    # --- the store interface ------------------------------------------------------

    def acquire(self, key: str, owner: Optional[str] = None,
                holder: Optional[str] = None) -> int:
        """As :meth:`VniStore.acquire`; with ``holder``, also record that attachment as a
        holder of ``key`` (idempotent; an attachment holds one key)."""
        key = self._check_key(key)
        if owner is not None and not isinstance(owner, str):
            raise VniError(f"owner must be a string or None, not {owner!r}")
        if holder is not None:
            self._check_key(holder)
        with self._tx() as c:
            now = float(self.clock())
            if holder is not None:
                c.execute("INSERT OR REPLACE INTO holders (holder, key, since) VALUES (?, ?, ?)",
                          (holder, key, now))
            row = c.execute("SELECT vni FROM vnis WHERE key = ? AND state = 'allocated'",
                            (key,)).fetchone()
            if row is not None:
                return row[0]
            # INDEXED BY: without statistics the planner would pick vnis_state and
            # visit every quarantined row, not just the expired ones.
            c.execute("UPDATE vnis INDEXED BY vnis_release "
                      "SET state = 'free', key = NULL, since = NULL, owner = NULL "
                      "WHERE state = 'quarantined' AND since <= ?", (now - self.quarantine,))
            cursor = c.execute("SELECT value FROM meta WHERE name = 'cursor'").fetchone()[0]
            if cursor is None:
                cursor = self.ranges[0][0]
            for lo, hi in search_segments(self.ranges, cursor):
                row = c.execute(_FIND_FREE, (lo, hi)).fetchone()
                if row is not None:
                    break
            else:
                raise VniExhausted(self._exhausted(c, now))
            vni = row[0]
            c.execute("UPDATE vnis SET state = 'allocated', key = ?, since = ?, owner = ? "
                      "WHERE vni = ?", (key, now, owner, vni))
            c.execute("UPDATE meta SET value = ? WHERE name = 'cursor'", (vni + 1,))
        log.debug("VNI %d allocated to %r", vni, key)
        return vni

    def _exhausted(self, c: sqlite3.Connection, now: float) -> str:
        allocated = quarantined = 0
        first_release: Optional[float] = None
        for lo, hi in self.ranges:
            for state, n, t in c.execute(
                    "SELECT state, count(*), min(since) FROM vnis WHERE state != 'free' "
                    "AND vni BETWEEN ? AND ? GROUP BY state", (lo, hi)):
                if state == STATE_ALLOCATED:
                    allocated += n
                else:
                    quarantined += n
                    first_release = t if first_release is None else min(first_release, t)
        expiry = None if first_release is None else first_release + self.quarantine - now
        return exhausted_message(self.ranges, allocated, quarantined, expiry)

    def release(self, key: str, holder: Optional[str] = None) -> bool:
        """Drop ``holder`` (if given) from ``key``'s holders; release ``key``'s VNI into
        quarantine only if no holder is left.  False if nothing was released."""
        key = self._check_key(key)
        with self._tx() as c:
            if holder is not None:
                c.execute("DELETE FROM holders WHERE holder = ? AND key = ?", (holder, key))
            if c.execute("SELECT 1 FROM holders WHERE key = ? LIMIT 1", (key,)).fetchone():
                log.debug("VNI of %r kept: other attachments still hold it", key)
                return False
            cur = c.execute("UPDATE vnis SET state = 'quarantined', since = ? "
                            "WHERE key = ? AND state = 'allocated'", (float(self.clock()), key))
            released = cur.rowcount > 0
        if released:
            log.debug("VNI of %r released into quarantine", key)
        return released

    def forget(self, holder: str) -> bool:
        """Drop ``holder`` without releasing anything (a job key's VNI outlives its pods)."""
        with self._tx() as c:
            return c.execute("DELETE FROM holders WHERE holder = ?", (holder,)).rowcount > 0

    def holders(self, key: Optional[str] = None) -> "list[str]":
        """The attachments holding ``key`` (all holders when None), sorted."""
        with self._read() as c:
            if key is None:
                rows = c.execute("SELECT holder FROM holders ORDER BY holder").fetchall()
            else:
                rows = c.execute("SELECT holder FROM holders WHERE key = ? ORDER BY holder",
                                 (key,)).fetchall()
        return [r[0] for r in rows]

    def prune_holders(self, prefix: str, keep: "Iterable[str]",
                      releasable: Callable[[str], bool] = lambda key: True
                      ) -> "list[tuple[str, str, bool]]":
        """Drop the holders starting with ``prefix`` that are not in ``keep`` (the CNI GC's
        valid attachments of one network), and release each key left without any holder
        if ``releasable(key)``; one transaction.  Returns ``(holder, key, released)``."""
        keep = set(keep)
        out = []
        with self._tx() as c:
            stale = [(h, k) for h, k in c.execute(
                "SELECT holder, key FROM holders WHERE substr(holder, 1, ?) = ?",
                (len(prefix), prefix)) if h not in keep]
            now = float(self.clock())
            for h, k in stale:
                c.execute("DELETE FROM holders WHERE holder = ?", (h,))
            for h, k in stale:
                released = False
                if releasable(k) and not c.execute(
                        "SELECT 1 FROM holders WHERE key = ? LIMIT 1", (k,)).fetchone():
                    released = c.execute(
                        "UPDATE vnis SET state = 'quarantined', since = ? "
                        "WHERE key = ? AND state = 'allocated'", (now, k)).rowcount > 0
                out.append((h, k, released))
        return out

    def get(self, key: str) -> Optional[int]:
        key = self._check_key(key)
        with self._read() as c:
            row = c.execute("SELECT vni FROM vnis WHERE key = ? AND state = 'allocated'",
                            (key,)).fetchone()
        return None if row is None else row[0]

    def list(self) -> "list[Allocation]":
        with self._read() as c:
            cutoff = float(self.clock()) - self.quarantine
            # Expired quarantine rows may not have been purged yet: filter, don't
            # write (list must not need the write lock).
            rows = c.execute(
                "SELECT key, vni, state, since, owner FROM vnis WHERE state = 'allocated' "
                "UNION ALL "
                "SELECT key, vni, state, since, owner FROM vnis "
                "WHERE state = 'quarantined' AND since > ? ORDER BY vni", (cutoff,)).fetchall()
        return [Allocation(key=k, vni=v, state=s, since=t, owner=o) for k, v, s, t, o in rows]

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

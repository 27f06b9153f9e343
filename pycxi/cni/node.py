"""The node component: sweeps the ``cxi`` plugin's leftovers without waiting for the runtime, and
exports the node's CXI state as Prometheus metrics.

    pycxi node sweep [--data-dir /run/cni/cxi] [--interval 30] [--once]
                     [--metrics-port 9477] [--metrics-address 0.0.0.0] [--remove-orphans]

Why it exists: containerd 1.6 (and other runtimes) never send CNI GC, and DEL uses the conflist
loaded *now*: rename the network under a running pod and the pod's DEL looks for its record
under the new name, finds nothing, and the pod's services leak.  A killed runtime, a pod whose
DEL kept failing, a service left busy by DEL (LNIs still open) leak the same way.  A leaked
service bound to a dead network namespace is a hazard: the kernel reuses netns inode numbers.

Each sweep, under the plugin's node-wide lock:

* **records** (every network under ``dataDir``): a record in phase ``deleting`` (DEL left a busy
  service), or whose network namespace is gone, is torn down as DEL/GC would (services destroyed,
  local VNI released, record and index link removed).  A namespace is gone when its recorded pin
  (``/run/netns/...``: containerd, CRI-O, podman) no longer exists or holds another namespace --
  also when the kernel has reused the inode number meanwhile.  When the pin's directory is not
  visible here (mount the host's ``/run/netns``) or the path is a ``/proc/<pid>`` one, the
  record is left alone unless a mount or process here still has it, and counted as
  *unverifiable*;
* **orphans**: services on a NIC that no record knows, bound to a network namespace that no longer
  exists (e.g. a state directory wiped under running pods).  They are counted, and destroyed with
  ``--remove-orphans``.  Services with uid/gid members, unbound ones and the default service are
  never touched.

Metrics (text format 0.0.4, ``GET /metrics``; ``/healthz`` answers 200 once a sweep has run):
``pycxi_node_services{device}``, ``pycxi_node_records{network}``,
``pycxi_node_rsrc_in_use{device,resource}`` / ``pycxi_node_rsrc_total{device,resource}``,
``pycxi_node_tle_pools_in_use{device}``, ``pycxi_node_leaked_removed_total{reason}``,
``pycxi_node_orphaned_services{device}``, ``pycxi_node_orphans_removed_total``,
``pycxi_node_unverifiable_records``, ``pycxi_node_sweep_errors_total``,
``pycxi_node_sweeps_total``, ``pycxi_node_last_sweep_timestamp_seconds``,
``pycxi_node_sweep_duration_seconds``.

This is not the CNI hot path, but it is imported by nothing else and uses the standard library
and pycxi only (``http.server`` in a thread for the metrics).
"""
import os
import threading
import time

from pycxi.cni import state as st
from pycxi.cni.log import Log

REASON_NETNS_GONE = "netns_gone"
REASON_DELETING = "busy_at_del"
REASON_CORRUPT = "unreadable"

RSRC_TOTALS = (("PTE", "num_ptes"), ("TXQ", "num_txqs"), ("TGQ", "num_tgqs"), ("EQ", "num_eqs"),
               ("CT", "num_cts"), ("LE", "num_les"), ("TLE", "num_tles"), ("AC", "num_acs"))


class Stats:
    """What the metrics endpoint serves: counters accumulate over sweeps, gauges are the last
    sweep's view.  Replaced/updated under ``lock``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.removed = {REASON_NETNS_GONE: 0, REASON_DELETING: 0, REASON_CORRUPT: 0}
        self.orphans_removed = 0
        self.errors = 0
        self.sweeps = 0
        self.last = 0.0
        self.duration = 0.0
        self.services = {}         # device -> count (default service excluded)
        self.records = {}          # network -> count
        self.in_use = {}           # (device, resource) -> in use
        self.totals = {}           # (device, resource) -> device total
        self.tle_pools = {}        # device -> TLE pools taken
        self.orphans = {}          # device -> orphaned services seen (after removal, if any)
        self.unverifiable = 0


def _netns_gone(path, inode):
    """True: the pod's netns is gone; False: alive; None: cannot tell from here.

    The recorded path is authoritative when it can be checked here: every runtime that calls
    CNI with a pinned namespace (containerd, CRI-O, podman: ``/run/netns/...``) removes the pin
    when it is done with the sandbox, so a missing pin, or a pin now holding another namespace,
    means the pod is gone -- even if the kernel has meanwhile given the inode number to another
    namespace (exactly when a leftover service is dangerous: it would admit that namespace).
    ``/proc/<pid>/ns/net`` paths and pins in directories not visible here cannot be checked:
    alive if a mount or process here has the inode, else unknown."""
    if not isinstance(inode, int) or inode <= 0:
        return True
    if isinstance(path, str) and path.startswith("/") and not path.startswith("/proc/") \
            and os.path.isdir(os.path.dirname(path)):
        try:
            return os.stat(path).st_ino != inode
        except FileNotFoundError:
            return True
        except OSError:
            return None
    return False if st.netns_alive(path, inode) else None


def _why(rec):
    """Why the sweep should release ``rec``, or None; "unverifiable" when it cannot tell."""
    if "corrupt" in rec:
        return REASON_CORRUPT
    if rec.get("phase") == st.PHASE_DELETING:
        return REASON_DELETING
    gone = _netns_gone(rec.get("netns"), rec.get("netnsInode"))
    if gone is None:
        return "unverifiable"
    return REASON_NETNS_GONE if gone else None


def sweep_records(data_dir, log, devs):
    """One pass over every network's records under the node lock.

    Returns ({reason: removed}, [errors], unverifiable).  The one place the node component calls
    the plugin's release code (``commands.teardown``, as DEL and GC do)."""
    from pycxi.cni import commands
    removed = {}
    errors = []
    unverifiable = 0
    networks = sorted(n for n in os.listdir(data_dir)
                      if n != "by-netns" and os.path.isdir(os.path.join(data_dir, n)))
    if not networks:
        return removed, errors, unverifiable
    store0 = st.StateStore(data_dir, networks[0])
    with store0.lock():
        store0.clean_index()
        all_records = store0.all_records()
        for rec in all_records:
            commands.adopt_sim_root(rec)
        for net in networks:
            store = st.StateStore(data_dir, net)
            store.clean_tmp()
            for rec in store.records():
                why = _why(rec)
                if why is None:
                    continue
                if why == "unverifiable":
                    unverifiable += 1
                    continue
                path = os.path.normpath(rec.get("_path") or rec.get("corrupt") or "")
                what = rec.get("corrupt") or f"{net}/{rec.get('containerID')}/{rec.get('ifname')}"
                log.info(f"sweep: releasing {what} ({why})")
                try:
                    done, errs = commands.teardown(store, rec, None, devs, log, all_records)
                except Exception as exc:
                    from pycxi.cni.errors import from_exception
                    errors.append(f"{what}: {from_exception(exc)}")
                    continue
                errors.extend(f"{what}: {e}" for e in errs)
                if not done and not errs:
                    errors.append(f"{what}: service still busy (LNIs open): kept for the next sweep")
                if done:
                    removed[why] = removed.get(why, 0) + 1
                    # drop the released record so its service IDs no longer count as taken
                    all_records[:] = [r for r in all_records
                                      if os.path.normpath(r.get("_path") or "") != path]
    return removed, errors, unverifiable


def scan_devices(data_dir, log, devs, remove_orphans):
    """Services, resource use and orphans of every CXI device; orphans destroyed if asked.
    Under the node lock (taken after :func:`sweep_records` has released it): no ADD is between
    its intent and its service ID meanwhile."""
    if not os.path.isdir(data_dir):
        return _scan_devices(data_dir, log, devs, remove_orphans)
    with st.Lock(os.path.join(data_dir, "lock")):
        return _scan_devices(data_dir, log, devs, remove_orphans)


def _scan_devices(data_dir, log, devs, remove_orphans):
    from pycxi.cni import nic
    out = {"services": {}, "in_use": {}, "totals": {}, "tle_pools": {}, "orphans": {},
           "orphans_removed": 0, "errors": []}
    records = st.StateStore(data_dir, "_").all_records() if os.path.isdir(data_dir) else []
    taken = st.recorded_ids(records)
    intents = [(r.get("netnsInode"), sorted(r.get("vnis") or ())) for r in records
               if any(isinstance(s, dict) and s.get("svc") is None for s in r.get("services") or ())]
    import pycxi
    for info in pycxi.devices():
        name = info.name
        try:
            dev = devs.get(name)
            descs = [d for d in dev.svc_list() if d.svc_id != 1]
            out["services"][name] = len(descs)
            for rsrc, attr in RSRC_TOTALS:
                out["totals"][(name, rsrc)] = int(getattr(info, attr, 0) or 0)
                out["in_use"][(name, rsrc)] = 0
            pools = set()
            for use in dev.svc_rsrc_list():
                for rsrc, n in (use.in_use or {}).items():
                    key = (name, str(rsrc))
                    out["in_use"][key] = out["in_use"].get(key, 0) + int(n)
                if use.tle_pool_id is not None and use.tle_pool_id >= 0:
                    pools.add(use.tle_pool_id)
            out["tle_pools"][name] = len(pools)
            orphans = []
            for d in descs:
                if (name, d.svc_id) in taken:
                    continue
                ino = nic.svc_netns(dev, d.svc_id, d)
                if not ino or any("NET" not in str(getattr(m, "type", "")).upper()
                                  for m in d.members or ()):
                    continue       # not bound to a netns, or has uid/gid members: not ours
                if (ino, sorted(d.vnis or ())) in intents:
                    continue       # an interrupted ADD's service: its record's DEL/GC owns it
                if st.netns_alive(None, ino):
                    continue
                orphans.append(d.svc_id)
            removed = 0
            for sid in orphans:
                if remove_orphans and nic.destroy(dev, sid, 5, 0.1, log) != "busy":
                    log.warning(f"sweep: destroyed orphaned service {name}/{sid} "
                                "(no record, its netns is gone)")
                    removed += 1
                else:
                    log.warning(f"sweep: orphaned service {name}/{sid}: no record, its netns "
                                "is gone" + ("" if remove_orphans else " (--remove-orphans)"))
            out["orphans_removed"] += removed
            out["orphans"][name] = len(orphans) - removed
            out["services"][name] = len(descs) - removed
        except Exception as exc:
            from pycxi.cni.errors import from_exception
            out["errors"].append(f"{name}: {from_exception(exc)}")
    return out


def sweep_once(data_dir, stats, log, remove_orphans=False):
    """One sweep: records, then devices; updates ``stats``.  Returns the list of errors."""
    from pycxi.cni.commands import Devices
    t0 = time.monotonic()
    devs = Devices()
    errors = []
    removed, unverifiable = {}, 0
    try:
        if os.path.isdir(data_dir):
            try:
                removed, errs, unverifiable = sweep_records(data_dir, log, devs)
                errors.extend(errs)
            except Exception as exc:
                errors.append(f"records: {type(exc).__name__}: {exc}")
        dv = scan_devices(data_dir, log, devs, remove_orphans)
        errors.extend(dv["errors"])
        records = {}
        if os.path.isdir(data_dir):
            for n in os.listdir(data_dir):
                d = os.path.join(data_dir, n)
                if n != "by-netns" and os.path.isdir(d):
                    records[n] = len(st.StateStore(data_dir, n).records())
    finally:
        devs.close()
    for e in errors:
        log.warning(f"sweep: {e}")
    with stats.lock:
        for k, v in removed.items():
            stats.removed[k] = stats.removed.get(k, 0) + v
        stats.orphans_removed += dv["orphans_removed"]
        stats.errors += len(errors)
        stats.sweeps += 1
        stats.last = time.time()
        stats.duration = time.monotonic() - t0
        stats.services = dv["services"]
        stats.in_use = dv["in_use"]
        stats.totals = dv["totals"]
        stats.tle_pools = dv["tle_pools"]
        stats.orphans = dv["orphans"]
        stats.records = records
        stats.unverifiable = unverifiable
    return errors


# ---------------------------------------------------------------------------------------------
# metrics

def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(stats):
    """The Prometheus text exposition of ``stats``."""
    lines = []

    def metric(name, kind, help_, samples):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels)
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    with stats.lock:
        metric("pycxi_node_services", "gauge", "CXI services on the NIC (the default service excluded)",
               [((("device", d),), n) for d, n in sorted(stats.services.items())])
        metric("pycxi_node_records", "gauge", "cxi plugin attachment records per network",
               [((("network", k),), n) for k, n in sorted(stats.records.items())])
        metric("pycxi_node_rsrc_in_use", "gauge", "NIC resources in use by all services",
               [((("device", d), ("resource", r)), n) for (d, r), n in sorted(stats.in_use.items())])
        metric("pycxi_node_rsrc_total", "gauge", "NIC resources the device has",
               [((("device", d), ("resource", r)), n) for (d, r), n in sorted(stats.totals.items())])
        metric("pycxi_node_tle_pools_in_use", "gauge", "TLE pools taken (4 per NIC)",
               [((("device", d),), n) for d, n in sorted(stats.tle_pools.items())])
        metric("pycxi_node_orphaned_services", "gauge",
               "services no record knows whose network namespace is gone (after the last sweep)",
               [((("device", d),), n) for d, n in sorted(stats.orphans.items())])
        metric("pycxi_node_unverifiable_records", "gauge",
               "records whose netns this process cannot check (mount /run/netns, hostPID)",
               [((), stats.unverifiable)])
        metric("pycxi_node_leaked_removed_total", "counter",
               "attachment records (and their services) released by the sweep, by reason",
               [((("reason", k),), n) for k, n in sorted(stats.removed.items())])
        metric("pycxi_node_orphans_removed_total", "counter", "orphaned services destroyed",
               [((), stats.orphans_removed)])
        metric("pycxi_node_sweep_errors_total", "counter", "problems the sweeps could not fix",
               [((), stats.errors)])
        metric("pycxi_node_sweeps_total", "counter", "sweeps run", [((), stats.sweeps)])
        metric("pycxi_node_last_sweep_timestamp_seconds", "gauge", "end of the last sweep",
               [((), f"{stats.last:.3f}")])
        metric("pycxi_node_sweep_duration_seconds", "gauge", "duration of the last sweep",
               [((), f"{stats.duration:.6f}")])
    return "\n".join(lines) + "\n"


def serve_metrics(stats, address, port):
    """Start the metrics endpoint in a daemon thread; returns the server (``.server_port``)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, code = render(stats).encode(), "text/plain; version=0.0.4; charset=utf-8", 200
            elif path == "/healthz":
                ok = stats.sweeps > 0
                body, ctype, code = (b"ok\n" if ok else b"no sweep yet\n"), "text/plain", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):      # no access log on stderr
            pass

    srv = ThreadingHTTPServer((address, port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="metrics", daemon=True).start()
    return srv


def run(data_dir, interval=30.0, once=False, metrics_address="0.0.0.0", metrics_port=None,
        remove_orphans=False, log_level="info", log_file=None):
    """``pycxi node sweep``: sweep every ``interval`` seconds (or once) until SIGTERM/SIGINT."""
    import signal
    log = Log(log_level, log_file, prefix="pycxi-node")
    stats = Stats()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    srv = None
    if metrics_port is not None:
        srv = serve_metrics(stats, metrics_address, metrics_port)
        log.info(f"metrics on http://{metrics_address}:{srv.server_port}/metrics")
    try:
        while True:
            errors = sweep_once(data_dir, stats, log, remove_orphans)
            if once:
                return 1 if errors else 0
            if stop.wait(interval):
                return 0
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()


def _cmd(args):
    port = args.metrics_port
    return run(args.data_dir, interval=args.interval, once=args.once,
               metrics_address=args.metrics_address, metrics_port=port,
               remove_orphans=args.remove_orphans, log_level=args.log_level, log_file=args.log_file)


def register(sub):
    """Adds ``node sweep`` to the ``pycxi`` command."""
    from pycxi.cni.config import DEFAULT_DATA_DIR

    def positive(text):
        v = float(text)
        if not 0 < v <= 86400:
            raise ValueError(text)
        return v

    def port(text):
        v = int(text)
        if not 0 <= v <= 65535:
            raise ValueError(text)
        return v

    node = sub.add_parser("node", help="the node component: sweep the cxi plugin's leftovers, "
                                       "export metrics")
    acts = node.add_subparsers(dest="node_action", metavar="ACTION")
    acts.required = True
    a = acts.add_parser("sweep", help="release leaked records/services periodically (or --once)",
                        description=__doc__.split("\n\n")[2] if __doc__ else None)
    a.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="the plugin's dataDir (default %(default)s)")
    a.add_argument("--interval", type=positive, default=30.0, help="seconds between sweeps")
    a.add_argument("--once", action="store_true", help="one sweep; exit 1 if problems remain")
    a.add_argument("--metrics-port", type=port, default=None,
                   help="serve Prometheus metrics on this port (0: any free port)")
    a.add_argument("--metrics-address", default="0.0.0.0")
    a.add_argument("--remove-orphans", action="store_true",
                   help="also destroy services no record knows whose netns is gone")
    a.add_argument("--log-level", default="info", choices=("error", "warning", "info", "debug"))
    a.add_argument("--log-file", default=None)
    a.set_defaults(func=_cmd)

"""ADD, DEL, CHECK, GC and STATUS of the ``cxi`` plugin.

Each ``cmd_*`` takes the parsed :class:`~pycxi.cni.config.NetConf`, the environment dict and a
logger, and returns the result dict to print (ADD) or None.  Errors are raised as
:class:`~pycxi.cni.errors.CniError` (or any exception, translated by the dispatcher).

Invariant: every service this plugin creates is recorded under its
(containerID, ifname) -- as an ID, or as an *intent* from which it can be found again -- or is
destroyed before ADD returns; DEL and GC leave no service and no record behind.
"""
import os
try:
    import _signal as signal     # the C module: same calls, without signal.py's enum set-up
except ImportError:             # pragma: no cover
    import signal
import time

from pycxi.cni import netns as nsmod
from pycxi.cni import state as st
from pycxi.cni import vni as vnisrc
from pycxi.cni.errors import (CniError, ERR_CHECK, ERR_GC, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_IO,
                              ERR_NO_DEVICE, ERR_NOT_AVAILABLE, ERR_TRY_AGAIN_LATER, ERR_UNKNOWN_CONTAINER,
                              from_exception)


# --------------------------------------------------------------------------------------------
# helpers

class Devices:
    """Open device handles of one invocation, closed at the end."""

    def __init__(self):
        self.devs = {}

    def get(self, name):
        dev = self.devs.get(name)
        if dev is None:
            from pycxi.cni import nic
            dev = self.devs[name] = nic.open_device(name)
        return dev

    def close(self):
        for dev in self.devs.values():
            try:
                dev.close()
            except Exception:
                pass
        self.devs.clear()


def open_netns(path):
    """(fd, inode) of the pod's network namespace ``path``; anything else is code 4."""
    try:
        return nsmod.open_netns(path)
    except nsmod.NotANetns as exc:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {path!r} is not a pod network namespace",
                       str(exc)) from None
    except OSError as exc:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {path!r} cannot be opened",
                       f"{type(exc).__name__}: {exc}") from None


def _device_absent(exc):
    import errno
    e = getattr(exc, "errno", None)
    return e in (errno.ENODEV, errno.ENOENT, errno.ENXIO) and getattr(exc, "func", "") in (
        "cxil_open_device", "open", "")


def adopt_sim_root(rec):
    """Software device only: a record remembers the ``PYCXI_SIM_ROOT`` its services were made
    under, and DEL/GC/CHECK use it when their own environment lacks it (a runtime may run DEL
    from a process with a scrubbed environment, e.g. podman's conmon-spawned cleanup).  Real
    NICs are global, like the software device is meant to be; this keeps it so."""
    if isinstance(rec, st.Record) and rec.sim_root and not os.environ.get("PYCXI_SIM_ROOT"):
        os.environ["PYCXI_SIM_ROOT"] = rec.sim_root


def looks_ours(dev, sid, desc, inode, vnis):
    """Whether service ``sid`` is one this plugin made for netns ``inode`` and ``vnis``: exactly
    those VNIs, and bound to that netns or restricted to members with no member at all (the
    set_netns path before ``set_netns``).  A service with a uid/gid member or another netns --
    e.g. someone else's that reused a destroyed service's ID -- is never ours."""
    from pycxi.cni import nic
    if sid == 1 or sorted(desc.vnis or ()) != sorted(vnis or ()):
        return False
    ns = nic.svc_netns(dev, sid, desc)
    return ns == inode or (ns == 0 and not list(desc.members or ())
                           and bool(getattr(desc, "restricted_members", False)))


def find_orphans(dev, device_name, vnis, inode, taken):
    """Services on ``dev`` that a killed ADD of ``inode``/``vnis`` may have left: not recorded
    anywhere (``taken``), same VNI set, and either bound to ``inode`` or restricted to members
    with no member at all (``alloc_netns_svc``'s set_netns path before ``set_netns``: a service
    that admits nobody).  A service with a uid/gid member or another netns is never touched."""
    if not vnis:
        return []
    return [d.svc_id for d in dev.svc_list()
            if (device_name, d.svc_id) not in taken and looks_ours(dev, d.svc_id, d, inode, vnis)]


def release_services(rec, conf, devs, log, taken):
    """Destroy the services of ``rec`` (in reverse order), carrying on past errors.

    Returns (done, errors): ``done`` when nothing of the record is left on any NIC.  A service
    still busy after the retries (LNIs exist) is disabled if the driver allows it and kept in
    the record as "disabled", or as "busy" when the driver refused (it is then still enabled).
    """
    from pycxi.cni import nic
    retries = conf.destroy_retries if conf is not None else 5
    delay = conf.destroy_retry_delay if conf is not None else 0.1
    inode = rec.netns_inode
    errors = []
    done = True
    keep = []
    for entry in reversed(rec.services):
        name = entry.device
        try:
            try:
                dev = devs.get(name)
            except Exception as exc:
                if _device_absent(exc):
                    log.warning(f"{name}: device gone; its services went with it")
                    continue
                raise
            ids = []
            if entry.svc is not None:
                sid = entry.svc
                if (name, sid) in taken:
                    log.warning(f"{name}: service {sid} now belongs to another record; not touched")
                    continue
                desc = nic.get_svc(dev, sid)
                if desc is None:
                    continue
                if not looks_ours(dev, sid, desc, inode, rec.vnis):
                    log.warning(f"{name}: service {sid} is no longer ours (other VNIs or "
                                "members: its ID was reused); not touched")
                    continue
                ids.append(sid)
            else:
                ids.extend(find_orphans(dev, name, rec.vnis, inode, taken))
                if ids:
                    log.info(f"{name}: found unrecorded service(s) {ids} of an interrupted ADD")
            busy = []
            for sid in ids:
                log.debug(f"{name}: destroying service {sid}")
                outcome = nic.destroy(dev, sid, retries, delay, log)
                if outcome == "busy":
                    busy.append((sid, nic.disable(dev, sid, log)))
            for sid, disabled in busy:
                keep.append(st.ServiceEntry(name, sid, "disabled" if disabled else "busy"))
                done = False
        except Exception as exc:
            err = from_exception(exc)
            errors.append(f"{name}: {err}")
            keep.append(entry)
            done = False
    keep.reverse()
    rec.services = keep
    return done, errors


def kept_services(rec):
    """What is left of ``rec`` on the NICs, truthfully (for DEL's and GC's answers)."""
    out = []
    for e in rec.services:
        if e.state == "busy":
            out.append(f"{e.device} service {e.svc} is in use by LNIs and still ENABLED (the driver "
                       "refuses to disable a service with LNIs); kept, its netns stays pinned")
        elif e.state == "disabled":
            out.append(f"{e.device} service {e.svc} is in use by LNIs; disabled (admits no new LNI), "
                       "kept until the LNIs are gone")
        else:
            out.append(f"{e.device} service {e.svc if e.svc is not None else '(intent)'} "
                       f"could not be released ({e.state})")
    return out


def teardown(store, rec, conf, devs, log, all_records=None):
    """Release a record completely if possible: services, then the netns pin (only once no
    service is left), the local VNI, the record.  Returns (done, errors); when not done, the
    record is kept in phase ``deleting`` with what is left of its services."""
    if isinstance(rec, st.Unreadable):
        pin = rec.path[:-len(".json")] + ".netns"
        if os.path.exists(pin):
            # what its services are is unknown: releasing the pin could let another namespace
            # take the inode they are bound to
            return False, [f"unreadable record {rec.path} ({rec.why}) with a netns pin: left in "
                           "place for an administrator"]
        log.warning(f"removing unreadable record {rec.path} ({rec.why})")
        try:
            os.unlink(rec.path)
        except FileNotFoundError:
            pass
        return True, []
    if all_records is None:
        # only records on the same netns can legitimately hold a service bound to it
        all_records = store.same_netns(rec.netns_inode)
    taken = st.recorded_ids(all_records, exclude=rec.path)
    done, errors = release_services(rec, conf, devs, log, taken)
    if not done:
        rec.phase = st.PHASE_DELETING
        store.save(rec)
        return False, errors
    if rec.pin:
        try:
            nsmod.unpin(store.pin_path(rec))
        except OSError as exc:
            rec.phase = st.PHASE_DELETING
            store.save(rec)
            return False, errors + [f"removing the netns pin: {type(exc).__name__}: {exc}"]
    try:
        vnisrc.release_local(rec.to_dict(), conf, log)     # it reads the file's keys
    except Exception as exc:
        errors.append(f"releasing VNI key {rec.vni_key!r}: {type(exc).__name__}: {exc}")
    store.remove(rec)
    store.unindex(rec)
    return True, errors


def same_live_netns(store, rec, inode):
    """Whether ``rec``'s namespace is the live namespace ``inode`` (not a dead one whose number
    was reused): its pin or its runtime path still names that inode."""
    if rec.pin and nsmod.pinned_inode(store.pin_path(rec)) == inode:
        return True
    try:
        return bool(rec.netns) and os.stat(rec.netns).st_ino == inode
    except OSError:
        return False


def reclaim_stale(store, inode, container_id, conf, devs, log):
    """Records of another container with the same netns inode whose own netns is gone: the kernel
    reused the inode, so their services would admit the new pod.  Destroy them now.  (A pinned
    namespace cannot be reused; this covers records made before pinning, see migrate_legacy.)"""
    records = store.same_netns(inode)
    for rec in records:
        if rec.container_id == container_id or same_live_netns(store, rec, inode):
            continue
        log.warning(f"netns inode {inode} reused: releasing stale record of container "
                    f"{rec.container_id} ({rec.path})")
        done, errors = teardown(store, rec, conf, devs, log, records)
        if not done:
            raise CniError(ERR_TRY_AGAIN_LATER, "a stale CXI service bound to this netns inode "
                           "cannot be removed yet", "; ".join(errors + kept_services(rec)))


def _result(conf):
    out = dict(conf.prev_result)
    out["cniVersion"] = conf.cni_version
    return out


# --------------------------------------------------------------------------------------------
# verbs

def cmd_add(conf, env, log):
    cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
    if conf.prev_result is None:
        raise CniError(ERR_INVALID_CONFIG, "cxi must be called as a chained plugin",
                       "prevResult is missing: put an interface plugin (bridge, flannel, ...) first")
    # cni-config: what the network config may ask for is the node's call (pycxi.cni.policy)
    from pycxi.cni import policy
    policy.apply(conf)
    fd, inode = open_netns(netns)
    try:
        return _add(conf, env, log, cid, ifname, netns, fd, inode)
    finally:
        os.close(fd)


def _add(conf, env, log, cid, ifname, netns, fd, inode):
    store = st.StateStore(conf.data_dir, conf.name, log)
    choice = None
    if conf.vnis is None and conf.local_allocator is None and conf.kubernetes is not None:
        choice = vnisrc.resolve(conf, env, log)        # network I/O: outside the lock

    devs = Devices()
    try:
        with store.lock():
            old = store.load(cid, ifname)
            if old is not None:
                log.info(f"ADD over an existing record {cid}/{ifname}: replacing it")
                done, errors = teardown(store, old, conf, devs, log)
                if not done:
                    raise CniError(ERR_TRY_AGAIN_LATER, "the previous CXI services of this "
                                   "attachment cannot be removed yet",
                                   "; ".join(errors + (kept_services(old) if isinstance(old, st.Record) else [])))
            rec = store.new_record(cid, ifname, netns=netns, netns_inode=inode, pid=os.getpid(),
                                   time=int(time.time()), sim_root=os.environ.get("PYCXI_SIM_ROOT") or None)
            if choice is None and conf.vnis is None and conf.local_allocator is not None:
                # record the key before the allocator hands out a VNI: a DEL/GC releases it
                la = conf.local_allocator
                rec.vni_source = vnisrc.SOURCE_LOCAL
                rec.vni_key = vnisrc.local_key(la, env)
                rec.vni_release = la["key"] is None
                rec.local_allocator = {"path": la["path"], "ranges": [list(r) for r in la["ranges"]],
                                       "quarantine": la["quarantine"]}
                store.index(rec)
                store.save(rec)
            try:
                if choice is None:
                    choice = vnisrc.resolve(conf, env, log)
                rec.vnis = list(choice.vnis)
                rec.vni_source = choice.source
                reclaim_stale(store, inode, cid, conf, devs, log)
                if not choice.vnis:
                    log.info(f"{cid}/{ifname}: no VNI requested: no CXI service")
                    rec.phase = st.PHASE_READY
                    store.index(rec)
                    store.save(rec)
                    return _result(conf)
                from pycxi.cni import nic
                names = nic.select_devices(conf.devices)
                if not names:
                    raise CniError(ERR_NO_DEVICE, "no CXI device present",
                                   f"the pod asked for VNIs {choice.vnis}")
                rec.services = [st.ServiceEntry(n) for n in names]
                rec.pin = True
                store.index(rec)
                store.save(rec)                   # intent first: no pin, nothing on a NIC yet
                try:
                    nsmod.pin(fd, store.pin_path(rec), inode)
                except OSError as exc:
                    raise CniError(ERR_IO, "cannot pin the pod's network namespace",
                                   f"bind mount onto {store.pin_path(rec)}: {exc}") from None
                last = rec.services[-1]
                for entry in rec.services:
                    dev = devs.get(entry.device)
                    sid = nic.alloc_svc(dev, inode, vnis=list(choice.vnis), tcs=conf.tcs,
                                        limits=nic.clamp_limits(dev, conf.limits),
                                        method=conf.netns_method)
                    entry.svc = int(sid)
                    entry.state = "enabled"
                    if entry is last:
                        rec.phase = st.PHASE_READY
                    store.save(rec)               # then the ID, as soon as it exists
                log.info(f"ADD {cid}/{ifname} netns={inode} vnis={choice.vnis} "
                         f"services={[(e.device, e.svc) for e in rec.services]}")
                return _result(conf)
            except BaseException as exc:
                signal.alarm(0)                   # the rollback must not be interrupted
                log.warning(f"ADD {cid}/{ifname} failed ({type(exc).__name__}: {exc}); rolling back")
                if os.path.exists(rec.path):
                    done, errors = teardown(store, rec, conf, devs, log)
                    if not done:
                        log.error("rollback incomplete, left for DEL/GC: "
                                  f"{'; '.join(errors + kept_services(rec))}")
                raise
    finally:
        devs.close()


def _has_state(store):
    """Whether this network may have records (fast DEL path: no lock, no import)."""
    return os.path.isdir(store.dir) or os.path.isdir(os.path.join(store.data_dir, store.network))


def cmd_del(conf, env, log):
    cid, ifname = env["CNI_CONTAINERID"], env["CNI_IFNAME"]
    store = st.StateStore(conf.data_dir, conf.name, log)
    if not _has_state(store):     # (the second: a version-1 directory, migrated under the lock)
        return None
    devs = Devices()
    try:
        with store.lock():
            rec = store.load(cid, ifname)
            if rec is None:
                store.unindex_key(cid, ifname)
                return None
            adopt_sim_root(rec)
            done, errors = teardown(store, rec, conf, devs, log)
            kept = kept_services(rec) if isinstance(rec, st.Record) and not done else []
            if not done and (errors or any(e.state != "disabled" for e in rec.services)):
                # kept as "deleting": a retried DEL or GC finishes it.  A service that is still
                # enabled is never reported as deleted.
                raise CniError(ERR_TRY_AGAIN_LATER,
                               f"DEL {cid}/{ifname}: CXI service(s) not destroyed",
                               "; ".join(errors + kept))
            for e in errors:
                log.warning(f"DEL {cid}/{ifname}: {e}")
            if kept:
                log.warning(f"DEL {cid}/{ifname}: {'; '.join(kept)}; GC will remove them")
            else:
                log.info(f"DEL {cid}/{ifname} done")
            return None
    finally:
        devs.close()


def cmd_check(conf, env, log):
    from pycxi.cni import nic
    cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
    fd, inode = open_netns(netns)
    os.close(fd)
    store = st.StateStore(conf.data_dir, conf.name, log)
    rec = store.load(cid, ifname)
    if not isinstance(rec, st.Record):
        raise CniError(ERR_UNKNOWN_CONTAINER, f"no cxi record for {cid}/{ifname}",
                       f"unreadable: {rec.why}" if rec is not None else "")
    nic.require_real_or_chosen()     # cni-config: CHECK, like ADD, only on a chosen device
    adopt_sim_root(rec)
    problems = []
    if rec.phase != st.PHASE_READY:
        problems.append(f"record is in phase {rec.phase!r}")
    if rec.netns_inode != inode:
        problems.append(f"netns inode {inode} differs from the recorded {rec.netns_inode}")
    want_vnis = sorted(rec.vnis)
    if conf.vnis is not None and sorted(conf.vnis) != want_vnis:
        problems.append(f"configured VNIs {conf.vnis} differ from the recorded {want_vnis}")
    if want_vnis and not rec.services:
        problems.append("no service recorded")
    if rec.services and rec.pin and nsmod.pinned_inode(store.pin_path(rec)) != rec.netns_inode:
        problems.append("the netns pin is missing")
    devs = Devices()
    try:
        for entry in rec.services:
            name, sid = entry.device, entry.svc
            if sid is None:
                problems.append(f"{name}: no service ID recorded")
                continue
            try:
                dev = devs.get(name)
                desc = nic.get_svc(dev, sid)
            except Exception as exc:
                problems.append(f"{name}: {from_exception(exc)}")
                continue
            if desc is None:
                problems.append(f"{name}: service {sid} does not exist")
                continue
            if not desc.enable:
                problems.append(f"{name}: service {sid} is disabled")
            got = nic.svc_netns(dev, sid, desc)
            if got != inode:
                problems.append(f"{name}: service {sid} is bound to netns {got}, not {inode}")
            if sorted(desc.vnis or ()) != want_vnis:
                problems.append(f"{name}: service {sid} has VNIs {sorted(desc.vnis or ())}, "
                                f"recorded {want_vnis}")
    finally:
        devs.close()
    if problems:
        raise CniError(ERR_CHECK, f"CHECK {cid}/{ifname} failed", "; ".join(problems))
    return None


REASON_NOT_VALID = "not_valid"
REASON_DELETING = "busy_at_del"
REASON_NETNS_GONE = "netns_gone"
REASON_UNREADABLE = "unreadable"


class SweepResult:
    """What :func:`sweep` did: ``removed`` {reason: records released}, ``problems`` (what is
    left, truthfully), ``unverifiable`` (records whose pod cannot be judged from here)."""
    __slots__ = ("removed", "problems", "unverifiable")

    def __init__(self):
        self.removed, self.problems, self.unverifiable = {}, [], 0


def pod_gone(store, rec):
    """True when the pod of ``rec`` is gone -- nothing but the plugin's own pins refers to its
    network namespace any more and the runtime's netns file is gone or names another namespace
    -- False when alive, None when that cannot be told from here
    (:func:`pycxi.cni.netns.pod_state`)."""
    return nsmod.pod_state(rec.netns, rec.netns_inode, store.data_dir)


def sweep(data_dir, log, network=None, valid=None, conf=None, devs=None):
    """Release the attachments that are dead: GC's body, and the entry point of a node's
    periodic sweep.  Returns a :class:`SweepResult`.

    Under the node lock, for ``network`` (every network when None): every record not in
    ``valid`` (a set of (containerID, ifname); None: no list), every record in phase
    ``deleting``, and every record whose pod is gone (:func:`pod_gone`) is released --
    services first, then the netns pin, then the record.  ``conf`` (optional) gives the destroy
    retries and a local allocator for records that lack one; ``devs`` a :class:`Devices` to
    reuse (closed by the caller).  Must run where the runtime's netns files are visible."""
    res = SweepResult()
    store = st.StateStore(data_dir, network if network is not None else "_", log)
    if network is not None and not _has_state(store):
        return res
    if network is None and not os.path.isdir(data_dir):
        return res
    own = devs is None
    devs = Devices() if own else devs
    try:
        with store.lock():
            store.clean_index()
            all_records = store.all_records()
            for rec in all_records:
                adopt_sim_root(rec)
            for s in [store] if network is not None else store.network_stores():
                s.clean_tmp()
                for rec in s.records():
                    _sweep_one(s, rec, conf, devs, log, valid, all_records, res)
    finally:
        if own:
            devs.close()
    return res


def _sweep_one(store, rec, conf, devs, log, valid, all_records, res):
    if isinstance(rec, st.Unreadable):
        done, errs = teardown(store, rec, conf, devs, log, all_records)
        res.problems.extend(errs)
        if done:
            res.removed[REASON_UNREADABLE] = res.removed.get(REASON_UNREADABLE, 0) + 1
        return
    who = f"{rec.network}/{rec.container_id}/{rec.ifname}"
    if valid is not None and rec.key not in valid:
        why = REASON_NOT_VALID
    elif rec.phase == st.PHASE_DELETING:
        why = REASON_DELETING
    else:
        gone = pod_gone(store, rec)
        if gone is None:
            res.unverifiable += 1
            return
        if not gone:
            return
        why = REASON_NETNS_GONE
    log.info(f"sweep: releasing {who} ({why})")
    try:
        done, errs = teardown(store, rec, conf, devs, log, all_records)
    except Exception as exc:
        res.problems.append(f"{who}: {from_exception(exc)}")
        return
    res.problems.extend(f"{who}: {e}" for e in errs)
    if done:
        res.removed[why] = res.removed.get(why, 0) + 1
        # its service IDs no longer count as taken
        all_records[:] = [r for r in all_records if getattr(r, "path", None) != rec.path]
    else:
        res.problems.extend(f"{who}: {k}" for k in kept_services(rec))


def cmd_gc(conf, env, log):
    problems = sweep(conf.data_dir, log, network=conf.name, valid=conf.valid_attachments or set(),
                     conf=conf).problems
    try:       # cni-config: local-allocator holders the runtime no longer knows
        vnisrc.gc_holders(conf, log)
    except Exception as exc:
        problems.append(f"local VNI holders: {from_exception(exc)}")
    if problems:
        raise CniError(ERR_GC, f"GC left {len(problems)} problem(s)", "; ".join(problems))
    return None


def cmd_status(conf, env, log):
    try:
        from pycxi.cni import nic
        names = nic.select_devices(conf.devices)
    except CniError as exc:
        if exc.code == ERR_NOT_AVAILABLE:    # already says why (e.g. the software device)
            raise
        raise CniError(ERR_NOT_AVAILABLE, "CXI devices not available", str(exc)) from None
    except Exception as exc:
        raise CniError(ERR_NOT_AVAILABLE, "CXI devices not available",
                       f"{type(exc).__name__}: {exc}") from None
    if not names:
        raise CniError(ERR_NOT_AVAILABLE, "no CXI device present")
    devs = Devices()
    try:
        for n in names:
            try:
                devs.get(n).svc_list()
            except Exception as exc:
                raise CniError(ERR_NOT_AVAILABLE, f"CXI device {n} is not usable",
                               str(from_exception(exc))) from None
    finally:
        devs.close()
    try:
        st.StateStore(conf.data_dir, conf.name).ensure_dirs()
        if not os.access(conf.data_dir, os.W_OK):
            raise PermissionError(conf.data_dir)
    except OSError as exc:
        raise CniError(ERR_NOT_AVAILABLE, f"state directory {conf.data_dir} is not writable",
                       f"{type(exc).__name__}: {exc}") from None
    return None

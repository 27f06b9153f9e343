"""ADD, DEL, CHECK, GC and STATUS of the ``cxi`` plugin.

Each ``cmd_*`` takes the parsed :class:`~pycxi.cni.config.NetConf`, the environment dict and a
logger, and returns the result dict to print (ADD) or None.  Errors are raised as
:class:`~pycxi.cni.errors.CniError` (or any exception, translated by the dispatcher).

Invariant (design.md #3): every service this plugin creates is recorded under its
(containerID, ifname) -- as an ID, or as an *intent* from which it can be found again -- or is
destroyed before ADD returns; DEL and GC leave no service and no record behind.
"""
import os
try:
    import _signal as signal     # the C module: same calls, without signal.py's enum set-up
except ImportError:             # pragma: no cover
    import signal
import time

from pycxi.cni import state as st
from pycxi.cni import vni as vnisrc
from pycxi.cni.errors import (CniError, ERR_CHECK, ERR_GC, ERR_INVALID_CONFIG, ERR_INVALID_ENV,
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


def netns_inode(path):
    try:
        return os.stat(path).st_ino
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
    root = rec.get("simRoot")
    if isinstance(root, str) and root and not os.environ.get("PYCXI_SIM_ROOT"):
        os.environ["PYCXI_SIM_ROOT"] = root


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
    still busy after the retries is disabled if the driver allows it (it refuses while LNIs
    exist) and kept in the record (state "disabled" or "busy") for GC to finish.
    """
    from pycxi.cni import nic
    retries = conf.destroy_retries if conf is not None else 5
    delay = conf.destroy_retry_delay if conf is not None else 0.1
    inode = rec.get("netnsInode")
    errors = []
    done = True
    keep = []
    for entry in reversed(rec.get("services") or []):
        name = entry.get("device")
        try:
            try:
                dev = devs.get(name)
            except Exception as exc:
                if _device_absent(exc):
                    log.warning(f"{name}: device gone; its services went with it")
                    continue
                raise
            sid = entry.get("svc")
            ids = []
            if isinstance(sid, int):
                if (name, sid) in taken:
                    log.warning(f"{name}: service {sid} now belongs to another record; not touched")
                    continue
                desc = nic.get_svc(dev, sid)
                if desc is None:
                    continue
                if not looks_ours(dev, sid, desc, inode, rec.get("vnis")):
                    log.warning(f"{name}: service {sid} is no longer ours (other VNIs or "
                                "members: its ID was reused); not touched")
                    continue
                ids.append(sid)
            else:
                ids.extend(find_orphans(dev, name, rec.get("vnis"), inode, taken))
                if ids:
                    log.info(f"{name}: found unrecorded service(s) {ids} of an interrupted ADD")
            busy = []
            for sid in ids:
                log.debug(f"{name}: destroying service {sid}")
                outcome = nic.destroy(dev, sid, retries, delay, log)
                if outcome == "busy":
                    busy.append((sid, nic.disable(dev, sid, log)))
            for sid, disabled in busy:
                keep.append({"device": name, "svc": sid, "state": "disabled" if disabled else "busy"})
                done = False
        except Exception as exc:
            err = from_exception(exc)
            errors.append(f"{name}: {err}")
            keep.append(entry)
            done = False
    keep.reverse()
    rec["services"] = keep
    return done, errors


def teardown(store, rec, conf, devs, log, all_records=None):
    """Release a record completely if possible (services, local VNI, record file)."""
    if "corrupt" in rec:
        log.warning(f"removing unreadable record {rec['corrupt']}")
        try:
            os.unlink(rec["corrupt"])
        except FileNotFoundError:
            pass
        return True, []
    if all_records is None:
        # only records on the same netns can legitimately hold a service bound to it
        all_records = store.same_netns(rec.get("netnsInode"))
    path = rec.get("_path") or store.path(rec["containerID"], rec["ifname"])
    taken = st.recorded_ids(all_records, exclude=os.path.normpath(path))
    rec.pop("_path", None)
    done, errors = release_services(rec, conf, devs, log, taken)
    if done:
        try:
            vnisrc.release_local(rec, conf, log)
        except Exception as exc:
            errors.append(f"releasing VNI key {rec.get('vniKey')!r}: {type(exc).__name__}: {exc}")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        store.unindex(rec)
    else:
        rec["phase"] = st.PHASE_DELETING
        _save_at(store, rec, path)
    return done, errors


def _save_at(store, rec, path):
    d = os.path.dirname(path)
    if d == store.dir:
        store.save(rec)
    else:
        st.StateStore(store.data_dir, os.path.basename(d)).save(rec)


def reclaim_stale(store, inode, container_id, conf, devs, log):
    """Records of another container with the same netns inode whose own netns is gone: the kernel
    reused the inode, so their services would admit the new pod.  Destroy them now."""
    records = store.same_netns(inode)
    for rec in records:
        if rec.get("containerID") == container_id:
            continue
        path = rec.get("netns")
        try:
            if path and os.stat(path).st_ino == inode:
                continue   # really the same live netns (shared): leave it
        except OSError:
            pass
        log.warning(f"netns inode {inode} reused: releasing stale record of container "
                    f"{rec.get('containerID')} ({rec.get('_path')})")
        done, errors = teardown(store, rec, conf, devs, log, records)
        if not done:
            raise CniError(ERR_TRY_AGAIN_LATER, "a stale CXI service bound to this netns inode "
                           "cannot be removed yet", "; ".join(errors) or "service busy")


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
    inode = netns_inode(netns)
    store = st.StateStore(conf.data_dir, conf.name)

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
                                   "attachment cannot be removed yet", "; ".join(errors))
            rec = {"containerID": cid, "ifname": ifname, "network": conf.name, "netns": netns,
                   "netnsInode": inode, "vnis": [], "phase": st.PHASE_ADDING, "services": [],
                   "pid": os.getpid(), "time": int(time.time())}
            if os.environ.get("PYCXI_SIM_ROOT"):
                rec["simRoot"] = os.environ["PYCXI_SIM_ROOT"]
            if choice is None and conf.vnis is None and conf.local_allocator is not None:
                # record the key before the allocator hands out a VNI: a DEL/GC releases it
                la = conf.local_allocator
                rec.update(vniSource=vnisrc.SOURCE_LOCAL, vniKey=vnisrc.local_key(la, env),
                           vniRelease=la["key"] is None,
                           localAllocator={"path": la["path"], "ranges": [list(r) for r in la["ranges"]],
                                           "quarantine": la["quarantine"]})
                store.index(rec)
                store.save(rec)
            try:
                if choice is None:
                    choice = vnisrc.resolve(conf, env, log)
                rec["vnis"] = choice.vnis
                rec["vniSource"] = choice.source
                reclaim_stale(store, inode, cid, conf, devs, log)
                if not choice.vnis:
                    log.info(f"{cid}/{ifname}: no VNI requested: no CXI service")
                    rec["phase"] = st.PHASE_READY
                    store.index(rec)
                    store.save(rec)
                    return _result(conf)
                from pycxi.cni import nic
                names = nic.select_devices(conf.devices)
                if not names:
                    raise CniError(ERR_NO_DEVICE, "no CXI device present",
                                   f"the pod asked for VNIs {choice.vnis}")
                rec["services"] = [{"device": n, "svc": None, "state": "intent"} for n in names]
                store.index(rec)
                store.save(rec)                   # intent first: nothing exists on a NIC yet
                last = rec["services"][-1]
                for entry in rec["services"]:
                    dev = devs.get(entry["device"])
                    sid = nic.alloc_svc(dev, inode, vnis=list(choice.vnis), tcs=conf.tcs,
                                        limits=nic.clamp_limits(dev, conf.limits),
                                        method=conf.netns_method)
                    entry["svc"] = int(sid)
                    entry["state"] = "enabled"
                    if entry is last:
                        rec["phase"] = st.PHASE_READY
                    store.save(rec)               # then the ID, as soon as it exists
                log.info(f"ADD {cid}/{ifname} netns={inode} vnis={choice.vnis} "
                         f"services={[(e['device'], e['svc']) for e in rec['services']]}")
                return _result(conf)
            except BaseException as exc:
                signal.alarm(0)                   # the rollback must not be interrupted
                log.warning(f"ADD {cid}/{ifname} failed ({type(exc).__name__}: {exc}); rolling back")
                rec["_path"] = store.path(cid, ifname)
                if os.path.exists(rec["_path"]):
                    done, errors = teardown(store, rec, conf, devs, log)
                    if not done:
                        log.error(f"rollback incomplete, left for DEL/GC: {'; '.join(errors)}")
                raise
    finally:
        devs.close()


def cmd_del(conf, env, log):
    cid, ifname = env["CNI_CONTAINERID"], env["CNI_IFNAME"]
    store = st.StateStore(conf.data_dir, conf.name)
    if not os.path.isdir(store.dir):
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
            if errors and not done:
                # kept as "deleting": a retried DEL or GC finishes it
                raise CniError(ERR_TRY_AGAIN_LATER,
                               f"DEL {cid}/{ifname}: some CXI services could not be removed",
                               "; ".join(errors))
            for e in errors:
                log.warning(f"DEL {cid}/{ifname}: {e}")
            if not done:
                log.warning(f"DEL {cid}/{ifname}: service(s) still in use were kept; "
                            "GC will remove them")
            else:
                log.info(f"DEL {cid}/{ifname} done")
            return None
    finally:
        devs.close()


def cmd_check(conf, env, log):
    from pycxi.cni import nic
    cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
    store = st.StateStore(conf.data_dir, conf.name)
    rec = store.load(cid, ifname)
    if rec is None or "corrupt" in rec:
        raise CniError(ERR_UNKNOWN_CONTAINER, f"no cxi record for {cid}/{ifname}")
    nic.require_real_or_chosen()     # cni-config: CHECK, like ADD, only on a chosen device
    adopt_sim_root(rec)
    inode = netns_inode(netns)
    problems = []
    if rec.get("phase") != st.PHASE_READY:
        problems.append(f"record is in phase {rec.get('phase')!r}")
    if rec.get("netnsInode") != inode:
        problems.append(f"netns inode {inode} differs from the recorded {rec.get('netnsInode')}")
    want_vnis = sorted(rec.get("vnis") or ())
    if conf.vnis is not None and sorted(conf.vnis) != want_vnis:
        problems.append(f"configured VNIs {conf.vnis} differ from the recorded {want_vnis}")
    if want_vnis and not rec.get("services"):
        problems.append("no service recorded")
    devs = Devices()
    try:
        for entry in rec.get("services") or ():
            name, sid = entry.get("device"), entry.get("svc")
            if not isinstance(sid, int):
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


def cmd_gc(conf, env, log):
    store = st.StateStore(conf.data_dir, conf.name)
    if not os.path.isdir(store.dir):
        vnisrc.gc_holders(conf, log)     # cni-config: e.g. records lost with /run, DB kept
        return None
    valid = conf.valid_attachments or set()
    errors = []
    devs = Devices()
    try:
        with store.lock():
            store.clean_tmp()
            store.clean_index()
            all_records = store.all_records()
            for rec in all_records:
                adopt_sim_root(rec)
            for rec in store.records():
                if "corrupt" in rec:
                    teardown(store, rec, conf, devs, log, all_records)
                    continue
                key = (rec.get("containerID"), rec.get("ifname"))
                why = None
                if key not in valid:
                    why = "not a valid attachment"
                elif rec.get("phase") == st.PHASE_DELETING:
                    why = "deleted, services were busy"
                elif rec.get("services") and not st.netns_alive(rec.get("netns"), rec.get("netnsInode")):
                    why = "netns gone"
                if why is None:
                    continue
                log.info(f"GC {key[0]}/{key[1]}: {why}")
                try:
                    done, errs = teardown(store, rec, conf, devs, log, all_records)
                    errors.extend(f"{key[0]}/{key[1]}: {e}" for e in errs)
                    if not done and not errs:
                        errors.append(f"{key[0]}/{key[1]}: service still busy (disabled)")
                except Exception as exc:
                    errors.append(f"{key[0]}/{key[1]}: {from_exception(exc)}")
            try:       # cni-config: local-allocator holders the runtime no longer knows
                vnisrc.gc_holders(conf, log)
            except Exception as exc:
                errors.append(f"local VNI holders: {from_exception(exc)}")
    finally:
        devs.close()
    if errors:
        raise CniError(ERR_GC, f"GC left {len(errors)} problem(s)", "; ".join(errors))
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

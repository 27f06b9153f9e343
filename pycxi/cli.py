"""``pycxi``: CXI services from the shell, after HPE's ``cxi_service`` tool.

    pycxi svc list [--json] [-v] | show ID [--json] | rsrc [ID] [--json]
    pycxi svc create (-y FILE | --vni N ... | --vni-range LO-HI) [--uid N] [--gid N]
                     [--netns PATH|INODE] [--tc NAME] [--limit TYPE=MAX:RES] [--exclusive-cp]
                     [-l N] [-D|--dry-run]
    pycxi svc delete ID | enable ID | disable ID | set-netns ID NETNS
    pycxi svc update ID [-y FILE] [--vni N ...] [--tc NAME ...] [--enable|--disable]
                        [-l N] [-D|--dry-run]
    pycxi access-check --svc ID [--vni N] [--tc NAME]
    pycxi sim status [--json] [--check] | sim reset [--devices N] [--strict-vni-overlap]
                                                 [--stock-root-profile]
    pycxi node sweep ...                  (the node component: docs/cli.md)
    pycxi vni alloc KEY | release KEY | list [--json] | manifests | controller [ARGS...]

cxi_service's usage is accepted as well: ``pycxi list [-s ID] [-v]``, ``pycxi create -y FILE``,
``pycxi delete|enable|disable -s ID``; ``-s ID`` may replace a service ID argument anywhere, and
``-d DEV`` (``cxiN`` or ``N``), ``-v`` and ``-V`` may be given anywhere; ``-l N`` and
``--dry-run`` as docs/cli.md describes (pycxi applies both on create, where HPE 13.1/14.0 ignore them).

Errors are one line on stderr naming the errno; the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pycxi.errors import CxiError, CxiLibError, CxiUserError, errno_name

PROG = "pycxi"


# -- argument helpers -------------------------------------------------------
def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _svc_id(text: str) -> int:
    v = _int(text)
    if not 1 <= v <= 0x7FFFFFFF:
        raise argparse.ArgumentTypeError(f"service ID {v} out of range 1..2147483647")
    return v


def _device(text: str) -> int:
    """cxiN or N, as cxi_service's -d (which wants cxiN) and the device number."""
    num = text[3:] if text.startswith("cxi") else text
    if not num.isdigit() or int(num) > 0x7FFFFFFF:
        raise argparse.ArgumentTypeError(f"invalid device {text!r}: expected cxiN or N")
    return int(num)


def _vni_range(text: str):
    lo, sep, hi = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LO-HI, got {text!r}")
    return _int(lo), _int(hi)


def _limit(text: str):
    """TYPE=MAX:RES, e.g. TLE=0:0 or LEs=16:16."""
    name, sep, rest = text.partition("=")
    mx, sep2, res = rest.partition(":")
    if not sep or not sep2:
        raise argparse.ArgumentTypeError(f"expected TYPE=MAX:RES, got {text!r}")
    return name, (_int(mx), _int(res))


def netns_arg(text: str) -> int:
    """A netns given as an inode number or as a path (/run/netns/x, /proc/PID/ns/net)."""
    from pycxi.netns import netns_inode

    if text.isdigit():
        return int(text)
    try:
        return netns_inode(text)
    except OSError as e:
        raise CxiLibError(e.errno or 2, "stat", detail=f"netns {text}") from None


# -- the HPE YAML template --------------------------------------------------
def _pairs(node) -> List:
    """A YAML mapping as (key, value-node) pairs: the template repeats keys (vni: N)."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise CxiUserError("Unexpected event while processing yaml: expected a mapping")
    return [(k.value, v) for k, v in node.value]


def _scalar_int(node, key: str) -> int:
    import yaml

    if not isinstance(node, yaml.ScalarNode):
        raise CxiUserError(f"Invalid value for '{key}'")
    try:
        return int(node.value, 0)
    except ValueError:
        raise CxiUserError(f"Invalid value for '{key}': {node.value!r}") from None


def desc_from_yaml(text: str) -> Dict[str, Any]:
    """Parse ``cxi_service_template.yaml`` (with member type ``netns``).

    Returns the keyword arguments of :func:`build_service` plus the flags.
    """
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise CxiUserError(f"invalid YAML: {str(e).splitlines()[0]}") from None
    if root is None:
        raise CxiUserError("empty YAML file")
    out: Dict[str, Any] = {"vnis": None, "vni_range": None, "uids": [], "gids": [], "netns": None,
                           "tcs": None, "limits": None, "exclusive_cp": False,
                           "restricted_members": None, "restricted_vnis": None,
                           "restricted_tcs": None, "resource_limits": None}
    vni_min = vni_max = None
    tcs: List[str] = []

    def add_tc(v) -> None:
        # cxi_service's parser is flat: a `tc:` counts wherever it appears (its own
        # template, with `#tcs:` commented out, lists them inside the last member)
        if not isinstance(v, yaml.ScalarNode) or v.value == "ETH":
            raise CxiUserError(f"Invalid TC provided: {getattr(v, 'value', '?')}")
        name = "BULK_DATA" if v.value == "BULK DATA" else v.value
        if name not in DEFAULT_TCS:
            raise CxiUserError(f"Invalid TC provided: {v.value}")
        tcs.append(name)
        if len(tcs) > len(DEFAULT_TCS):
            raise CxiUserError("Too many TCs provided")

    def fields_of(item) -> Dict[str, Any]:
        out_fields = {}
        for k, v in _pairs(item):
            if k == "tc":
                add_tc(v)
            else:
                out_fields[k] = v
        return out_fields

    for key, node in _pairs(root):
        if key in ("resource_limits", "restricted_members", "restricted_vnis", "restricted_tcs",
                   "exclusive_cp"):
            v = _scalar_int(node, key)
            if v not in (0, 1):
                raise CxiUserError(f"Invalid value for '{key}'")
            out[key] = bool(v)
        elif key == "limits":
            if not isinstance(node, yaml.SequenceNode):
                raise CxiUserError("Unexpected event while processing yaml: limits")
            limits = {}
            for item in node.value:
                fields = fields_of(item)
                if "name" not in fields:
                    raise CxiUserError("limits entry without a name")
                limits[fields["name"].value] = (
                    _scalar_int(fields["max"], "max") if "max" in fields else 0,
                    _scalar_int(fields["res"], "res") if "res" in fields else 0)
            out["limits"] = limits
        elif key == "vnis":
            for k, v in _pairs(node):
                if k == "vni":
                    if vni_min is not None or vni_max is not None:
                        raise CxiUserError("vni list/range already specified")
                    out["vnis"] = (out["vnis"] or []) + [_scalar_int(v, "vni")]
                    if len(out["vnis"]) > 4:
                        raise CxiUserError("Too many VNIs provided")
                elif k in ("vni_min", "vni_max"):
                    if out["vnis"]:
                        raise CxiUserError("vni list/range already specified")
                    if k == "vni_min":
                        vni_min = _scalar_int(v, k)
                    else:
                        vni_max = _scalar_int(v, k)
                else:
                    raise CxiUserError(f"Unexpected event while processing yaml: vnis.{k}")
        elif key == "members":
            if not isinstance(node, yaml.SequenceNode):
                raise CxiUserError("Unexpected event while processing yaml: members")
            if len(node.value) > 2:
                raise CxiUserError("Too many Service 'Members' provided")
            for item in node.value:
                fields = fields_of(item)
                mtype = fields.get("type")
                if mtype is None or mtype.value not in ("uid", "gid", "netns"):
                    raise CxiUserError(f"Invalid input for Service Member 'type' "
                                       f"{getattr(mtype, 'value', None)}")
                if "id" not in fields:
                    raise CxiUserError("Service Member without an 'id'")
                ident = _scalar_int(fields["id"], "id")
                if mtype.value == "netns":
                    out["netns"] = ident
                else:
                    out[mtype.value + "s"].append(ident)
        elif key == "tcs":
            for k, v in _pairs(node):
                if k != "tc":
                    raise CxiUserError(f"Unexpected event while processing yaml: tcs.{k}")
                add_tc(v)
        elif key == "tc":
            add_tc(node)
        else:
            raise CxiUserError(f"Unexpected event while processing yaml: unknown key {key!r}")
    if vni_min is not None or vni_max is not None:
        if vni_min is None or vni_max is None:
            raise CxiUserError("a VNI range needs both vni_min and vni_max")
        out["vni_range"] = (vni_min, vni_max)
    elif out["exclusive_cp"]:
        # cxi_service applies exclusive_cp to a range only; its template sets it with a list
        out["exclusive_cp"] = False
    if tcs:
        out["tcs"] = tcs
    return out


# -- creating a service -----------------------------------------------------
#: The traffic classes a service with restricted TCs gets when none are named: the four
#: cxi_service's template lists (ETH is not a TC a service may restrict to).
DEFAULT_TCS = ("DEDICATED_ACCESS", "LOW_LATENCY", "BULK_DATA", "BEST_EFFORT")


def plan_service(*, vnis=None, vni_range=None, uids=(), gids=(), netns=None, tcs=None,
                 limits=None, exclusive_cp=False, restricted_members=None,
                 restricted_vnis=None, restricted_tcs=None, resource_limits=None,
                 lnis_per_rgid=None) -> Dict[str, Any]:
    """Validate a ``cxi_service create`` request without a device.

    Returns the service :func:`build_service` would create, in the ``--json`` form of
    ``svc show`` (less what only the device knows: ``svc_id``, ``in_use``, ...), plus
    ``desc`` (the :class:`~pycxi.svc.SvcDesc` to allocate; ``None`` for a netns service,
    which :meth:`Device.alloc_netns_svc` builds).  Raises :class:`CxiUserError`.
    """
    from pycxi.svc import SvcDesc, SvcMember

    if vnis and vni_range:
        raise CxiUserError("give either VNIs or a VNI range, not both")
    if not vnis and not vni_range and restricted_vnis is not False:
        raise CxiUserError("a service needs VNIs (--vni) or a VNI range (--vni-range)")
    if exclusive_cp and not vni_range:
        raise CxiUserError("exclusive_cp needs a VNI range")
    if vni_range:
        lo, hi = vni_range
        size = hi - lo + 1
        if not (1 <= lo <= hi <= 0xFFFF) or size & (size - 1) or lo % size:
            raise CxiUserError(f"VNI range {lo}-{hi}: size must be a power of two and "
                               f"the start a multiple of it")
    if lnis_per_rgid is not None and lnis_per_rgid < 1:
        raise CxiUserError(f"lnis_per_rgid must be at least 1, got {lnis_per_rgid}")
    if restricted_tcs is False:
        tcs = None
    elif restricted_tcs and not tcs:
        tcs = list(DEFAULT_TCS)  # as cxi_service's template; never a service with no TC
    if resource_limits is False:
        limits = None
    elif resource_limits and limits is None:
        limits = {}  # as cxi_service: a type not listed gets max = res = 0
    if netns is not None:
        if restricted_members is False:
            raise CxiUserError("restricted_members must be set to 1")
        if uids or gids:
            raise CxiUserError("netns based service with uid/gid not supported")
        members = [SvcMember.netns(netns)]
    else:
        members = [SvcMember.uid(u) for u in uids] + [SvcMember.gid(g) for g in gids]
        if len(members) > 2:
            raise CxiUserError("Too many Service 'Members' provided")
    desc = SvcDesc(vnis=vnis or None, members=members, tcs=tcs, limits=limits,
                   restricted_members=(bool(members) if restricted_members is None
                                       else restricted_members),
                   restricted_vnis=(bool(vnis) if restricted_vnis is None or netns is not None
                                    else restricted_vnis),
                   resource_limits=None if limits is None else True)
    plan = desc.to_dict()
    for k in ("svc_id", "cntr_pool_id"):
        del plan[k]
    if not plan["resource_limits"]:
        plan["limits"] = None  # the device fills in its totals
    plan.update(netns=[] if netns is None else [netns], vni_range=list(vni_range or []) or None,
                exclusive_cp=bool(exclusive_cp), lnis_per_rgid=lnis_per_rgid,
                desc=None if netns is not None else desc)
    return plan


def build_service(dev, *, netns_method: str = "auto", lnis_per_rgid=None, **spec) -> int:
    """Create a service the way ``cxi_service create`` means to, in a safe order.

    Everything is validated (:func:`plan_service`) before the service exists.  A netns
    service is made by :meth:`Device.alloc_netns_svc` (which binds the namespace after the
    range and destroys a half-made service); a range service is left enabled.  With
    ``lnis_per_rgid`` (``cxi_service -l N``) the new service gets that many LNIs per RGID;
    if the device refuses, the service is destroyed.
    """
    plan = plan_service(lnis_per_rgid=lnis_per_rgid, **spec)
    vni_range, exclusive_cp = spec.get("vni_range"), bool(spec.get("exclusive_cp"))
    if plan["desc"] is None:
        svc_id = dev.alloc_netns_svc(spec["netns"], spec.get("vnis") or None,
                                     tcs=plan["tcs"] if plan["restricted_tcs"] else None,
                                     limits=_limits_of(plan) if plan["limits"] else None,
                                     method=netns_method, vni_range=vni_range,
                                     exclusive_cp=exclusive_cp)
        steps = []
    else:
        svc_id = dev.alloc_svc(plan["desc"])
        steps = []
        if vni_range:
            steps += [lambda: dev.set_vni_range(svc_id, *vni_range)]
            if exclusive_cp:
                steps += [lambda: dev.set_exclusive_cp(svc_id, True)]
            steps += [lambda: dev.svc_enable(svc_id, True)]
    if lnis_per_rgid is not None:
        steps.append(lambda: dev.set_svc_lpr(svc_id, lnis_per_rgid))
    try:
        for step in steps:
            step()
    except BaseException:
        try:
            dev.destroy_svc(svc_id)
        except CxiError:
            pass
        raise
    return svc_id


def _limits_of(plan: Dict[str, Any]) -> Dict[str, Tuple[int, int]]:
    return {k: (v["max"], v["res"]) for k, v in plan["limits"].items()}


# -- output -----------------------------------------------------------------
def svc_info(dev, desc) -> Dict[str, Any]:
    """Everything known about a service, in the ``--json`` form."""
    d = desc.to_dict()
    svc_id = desc.svc_id
    try:
        d["netns"] = [dev.get_netns(svc_id)]
    except CxiLibError:
        d["netns"] = []
    d["vni_range"] = None
    if not desc.restricted_vnis:
        try:
            d["vni_range"] = list(dev.get_vni_range(svc_id))
        except CxiLibError:
            pass
    try:
        d["exclusive_cp"] = dev.get_exclusive_cp(svc_id)
    except CxiLibError:
        d["exclusive_cp"] = None
    d["lnis_per_rgid"] = dev.get_svc_lpr(svc_id)
    use = dev.svc_rsrc_use(svc_id)
    d["tle_pool_id"] = use.tle_pool_id
    d["in_use"] = use.in_use
    return d


def _print_svc(info: Dict[str, Any], verbose: bool) -> None:
    yn = lambda b: "Yes" if b else "No"  # noqa: E731
    print(" --------------------------")
    print(f" ID: {info['svc_id']}{' (DEFAULT)' if info['svc_id'] == 1 else ''}")
    print(f"   LNIs/RGID          : {info['lnis_per_rgid']}")
    print(f"   Enabled            : {yn(info['enabled'])}")
    print(f"   System Service     : {yn(info['is_system_svc'])}")
    print(f"   Restricted Members : {yn(info['restricted_members'])}")
    if verbose:
        if not info["restricted_members"]:
            members = " All uids/gids"
        else:
            members = "".join(f" {m['type']}={m['id']}" for m in info["members"])
            members += "".join(f" netns={n}" for n in info["netns"]
                               if {"type": "netns", "id": n} not in info["members"])
        print(f"   ---> Valid Members :{members}")
        if info["restricted_vnis"]:
            print(f"   VNIs               :{''.join(f' {v}' for v in info['vnis'])}")
        elif info["vni_range"]:
            print(f"   VNIs               : {info['vni_range'][0]}-{info['vni_range'][1]}")
            print(f"   Exclusive CP       : {yn(info['exclusive_cp'])}")
        else:
            print("   VNIs               :")
    print(f"   Restricted TCs     : {yn(info['restricted_tcs'])}")
    if verbose:
        tcs = " All" if not info["restricted_tcs"] else "".join(f" {t}" for t in info["tcs"])
        print(f"   ---> Valid TCs     :{tcs}")
    print(f"   Resource Limits    : {yn(info['resource_limits'])}")
    if verbose:
        print("   ---> Resource     Max  Reserved   In Use")
        for name in ("AC", "CT", "EQ", "LE", "PTE", "TGQ", "TXQ", "TLE"):
            lim = info["limits"][name]
            res = lim["res"] if info["resource_limits"] else "None"
            print(f"        {name + 's':<8} {lim['max']:>6} {res:>9} {info['in_use'][name]:>8}")


# -- commands ---------------------------------------------------------------
def _open(args):
    from pycxi.device import Device

    return Device(args.device)


_NEEDS_SVC_ID = ("show", "delete", "enable", "disable", "set-netns", "update")


def _svc_id_of(args) -> None:
    """The service ID as a positional argument or cxi_service's ``-s ID``, into args.svc_id."""
    pos, opt = getattr(args, "svc_id", None), getattr(args, "svc_id_opt", None)
    if pos is not None and opt is not None and pos != opt:
        raise CxiUserError(f"two service IDs given: {pos} and -s {opt}")
    args.svc_id = pos if pos is not None else opt
    if args.svc_id is None and args.svc_action in _NEEDS_SVC_ID:
        raise CxiUserError(f"{args.svc_action} needs a service ID (ID or -s ID)")
    if args.svc_id is not None and args.svc_action == "create":
        raise CxiUserError("create is incompatible with -s / --svc-id")


def _create_spec(args) -> Dict[str, Any]:
    """The keyword arguments of :func:`plan_service` from ``create``'s command line."""
    if args.yaml:
        if args.vni or args.vni_range:
            raise CxiUserError("--yaml and --vni/--vni-range exclude each other")
        return _read_yaml(args.yaml)
    return {"vnis": args.vni or None, "vni_range": args.vni_range,
            "uids": args.uid, "gids": args.gid,
            "netns": args.netns, "tcs": args.tc or None,
            "limits": dict(args.limit) if args.limit else None,
            "exclusive_cp": args.exclusive_cp}


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return desc_from_yaml(f.read())
    except OSError as e:
        raise CxiLibError(e.errno or 2, "open", detail=path) from None


def _update(dev, args) -> None:
    """``update -s ID``: ``-l N`` (cxi_service 12.0's lnis_per_rgid), ``-y FILE`` (its
    members, VNIs, TCs and restricted_* flags; the limits stay), ``--vni``/``--tc``,
    ``--enable``/``--disable``.  ``--dry-run`` prints the stored and the updated service
    (JSON: ``{"original": ..., "updated": ...}``) and changes nothing."""
    from pycxi.svc import SvcMember

    svc_id = args.svc_id
    desc = dev.get_svc(svc_id)
    new = desc.copy()
    if args.yaml:
        if args.vni or args.tc:
            raise CxiUserError("--yaml and --vni/--tc exclude each other")
        spec = _read_yaml(args.yaml)
        if spec["netns"] is not None or spec["vni_range"]:
            raise CxiUserError("update cannot bind a netns or set a VNI range "
                               "(use set-netns, or create a new service)")
        members = [SvcMember.uid(u) for u in spec["uids"]] + [SvcMember.gid(g) for g in spec["gids"]]
        new.members = members
        new.restricted_members = (bool(members) if spec["restricted_members"] is None
                                  else spec["restricted_members"])
        new.vnis = spec["vnis"] or []
        new.restricted_vnis = (bool(spec["vnis"]) if spec["restricted_vnis"] is None
                               else spec["restricted_vnis"])
        tcs = spec["tcs"] or (list(DEFAULT_TCS) if spec["restricted_tcs"] else [])
        new.tcs = tcs
        new.restricted_tcs = bool(tcs) and spec["restricted_tcs"] is not False
    if args.vni:
        new.vnis = args.vni
        new.restricted_vnis = True
    if args.tc:
        new.tcs = args.tc
        new.restricted_tcs = True
    if args.enable is not None:
        new.enable = args.enable
    changes_desc = new.to_dict() != desc.to_dict()
    if not changes_desc and args.lnis_per_rgid is None:
        raise CxiUserError("update needs something to change: -y FILE, -l N, --vni, --tc, "
                           "--enable or --disable")
    lpr_now = dev.get_svc_lpr(svc_id)
    if args.dry_run or args.verbose:
        show = {"original": dict(desc.to_dict(), lnis_per_rgid=lpr_now),
                "updated": dict(new.to_dict(), lnis_per_rgid=(lpr_now if args.lnis_per_rgid is None
                                                              else args.lnis_per_rgid))}
        print(json.dumps(show, indent=2))
        if args.dry_run:
            print(f"Dry run: service {svc_id} not changed", file=sys.stderr)
            return
    if changes_desc:
        dev.update_svc(new)
    if args.lnis_per_rgid is not None:
        dev.set_svc_lpr(svc_id, args.lnis_per_rgid)
    print(f"Successfully updated service: {svc_id}", file=sys.stderr)


def cmd_svc(args) -> int:
    _svc_id_of(args)
    with _open(args) as dev:
        a = args.svc_action
        if a == "list" and args.svc_id is not None:
            info = svc_info(dev, dev.get_svc(args.svc_id))
            if args.json:
                print(json.dumps([info], indent=2))
            else:
                _print_svc(info, args.verbose)
        elif a == "list":
            infos = [svc_info(dev, d) for d in dev.svc_list()]
            if args.json:
                print(json.dumps(infos, indent=2))
            else:
                i = dev.info
                print(f"{dev.name}\n----\n Total Device Resources\n ----------------------")
                for label, v in (("ACs", i.num_acs), ("CTs", i.num_cts), ("EQs", i.num_eqs),
                                 ("LEs", i.num_les), ("PTEs", i.num_ptes), ("TGQs", i.num_tgqs),
                                 ("TXQs", i.num_txqs), ("TLEs", i.num_tles)):
                    print(f" {label + ':':<5} {v}")
                for info in infos:
                    _print_svc(info, args.verbose)
        elif a == "show":
            info = svc_info(dev, dev.get_svc(args.svc_id))
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                _print_svc(info, True)
        elif a == "create":
            spec = _create_spec(args)
            if args.dry_run:
                plan = plan_service(lnis_per_rgid=args.lnis_per_rgid, **spec)
                del plan["desc"]
                print(json.dumps(plan, indent=2))
                print(f"Dry run: service valid, not created on {dev.name}", file=sys.stderr)
                return 0
            svc_id = build_service(dev, netns_method=args.netns_method,
                                   lnis_per_rgid=args.lnis_per_rgid, **spec)
            print(svc_id)
            if args.verbose:  # stdout is the ID alone: the listing goes to stderr
                with contextlib.redirect_stdout(sys.stderr):
                    _print_svc(svc_info(dev, dev.get_svc(svc_id)), True)
            print(f"Successfully created service: {svc_id}", file=sys.stderr)
        elif a == "delete":
            if args.svc_id == 1:
                raise CxiUserError("Default service cannot be deleted.")
            dev.destroy_svc(args.svc_id)
            print(f"Successfully deleted service: {args.svc_id}", file=sys.stderr)
        elif a in ("enable", "disable"):
            dev.svc_enable(args.svc_id, a == "enable")
            print(f"Successfully {a}d service: {args.svc_id}", file=sys.stderr)
        elif a == "update":
            _update(dev, args)
        elif a == "rsrc":
            uses = [dev.svc_rsrc_use(args.svc_id)] if args.svc_id else dev.svc_rsrc_list()
            if args.json:
                print(json.dumps([u.to_dict() for u in uses], indent=2))
            else:
                names = ("PTE", "TXQ", "TGQ", "EQ", "CT", "LE", "TLE", "AC")
                print("ID    TLE-pool " + " ".join(f"{n + 's':>6}" for n in names))
                for u in uses:
                    print(f"{u.svc_id:<5} {u.tle_pool_id:>8} "
                          + " ".join(f"{u.in_use[n]:>6}" for n in names))
        elif a == "set-netns":
            dev.set_netns(args.svc_id, args.netns)
        else:  # pragma: no cover - argparse guards this
            raise CxiUserError(f"unknown action {a!r}")
    return 0


def cmd_access_check(args) -> int:
    from pycxi.netns import netns_inode

    with _open(args) as dev:
        with dev.alloc_lni(args.svc) as lni:
            if args.vni is not None:
                lni.alloc_domain(args.vni).close()
                if args.tc:
                    lni.alloc_cp(args.vni, args.tc).close()
        what = f"svc {args.svc}" + (f" VNI {args.vni}" if args.vni is not None else "")
        print(f"allowed: {what} on {dev.name} (euid {os.geteuid()}, egid {os.getegid()}, "
              f"netns {netns_inode()})")
    return 0


def cmd_sim(args) -> int:
    from pycxi import device

    if device.BACKEND != "sim":
        raise CxiUserError(f"'sim' needs the software CXI device; this build uses {device.BACKEND}")
    if args.sim_action == "reset":
        if args.strict_vni_overlap:
            os.environ["PYCXI_SIM_STRICT_VNI_OVERLAP"] = "1"
        if args.stock_root_profile:
            os.environ["PYCXI_SIM_STOCK_ROOT_PROFILE"] = "1"
        device.sim_reset(args.devices)
        print(f"reset: {args.devices} software device(s) under {device.sim_root()}", file=sys.stderr)
        return 0
    out = {"root": device.sim_root(), "devices": {}}
    for info in device.devices():
        st = device.sim_status(info.dev_id)
        if args.check:
            device.sim_check(info.dev_id)
            st["consistent"] = True
        out["devices"][info.name] = st
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"software CXI devices under {out['root']}")
        for name, st in out["devices"].items():
            print(f"{name}: {st['services']} services ({st['enabled_services']} enabled), "
                  f"{st['lnis']} LNIs, TLE pools {st['tle_pools_used']}/4, "
                  f"LE pools {st['le_pools_used']}/16, RX profiles {st['rmu_used']}/256, "
                  f"RGIDs {st['rgids_used']}/255"
                  + (", consistent" if st.get("consistent") else ""))
    return 0


def _add_create_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("-y", "--yaml", "--yaml-file", "--yaml_file", dest="yaml",
                   help="cxi_service_template.yaml format (member type netns added)")
    a.add_argument("--vni", type=_int, action="append", default=[], help="a VNI (repeat, up to 4)")
    a.add_argument("--vni-range", type=_vni_range, help="LO-HI (power-of-two size, aligned)")
    a.add_argument("--uid", type=_int, action="append", default=[])
    a.add_argument("--gid", type=_int, action="append", default=[])
    a.add_argument("--netns", type=netns_arg, help="a netns path or inode number")
    a.add_argument("--netns-method", choices=("auto", "member", "set_netns"), default="auto",
                   help="how to bind the netns (default: what the platform offers)")
    a.add_argument("--tc", action="append", default=[],
                   help="a traffic class name (repeat; default: all)")
    a.add_argument("--limit", type=_limit, action="append", default=[],
                   help="TYPE=MAX:RES, e.g. TLE=0:0 (sets resource_limits)")
    a.add_argument("--exclusive-cp", action="store_true")
    _add_lpr_dry_run(a, "validate and print the service (JSON) without creating it")


def _lnis_per_rgid(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"lnis_per_rgid must be at least 1, got {v}")
    return v


def _add_lpr_dry_run(a: argparse.ArgumentParser, dry_help: str) -> None:
    a.add_argument("-l", "--lnis-per-rgid", "--lnis_per_rgid", dest="lnis_per_rgid",
                   type=_lnis_per_rgid, metavar="N",
                   help="LNIs per RGID for the service (cxil_set_svc_lpr; N >= 1)")
    a.add_argument("-D", "--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help=dry_help)


def _add_update_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("-y", "--yaml", "--yaml-file", "--yaml_file", dest="yaml",
                   help="cxi_service_template.yaml: members, VNIs, TCs (limits stay)")
    a.add_argument("--vni", type=_int, action="append", default=[])
    a.add_argument("--tc", action="append", default=[])
    _add_lpr_dry_run(a, "print the stored and the updated service without changing it")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--enable", dest="enable", action="store_true", default=None)
    g.add_argument("--disable", dest="enable", action="store_false")


def build_parser() -> argparse.ArgumentParser:
    # Options cxi_service takes anywhere on its command line; SUPPRESS so that a value
    # given before the command is not overwritten by the subcommand's default.
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("-d", "--device", type=_device, default=argparse.SUPPRESS,
                          help="device, cxiN or N (default cxi0)")
    anywhere.add_argument("-V", "--version", action="store_true", default=argparse.SUPPRESS,
                          help="print the version and backend")
    anywhere.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="list: every field; create/update: also print the service")
    with_id = argparse.ArgumentParser(add_help=False, parents=[anywhere])
    with_id.add_argument("-s", "--svc-id", "--svc_id", dest="svc_id_opt", type=_svc_id,
                         default=None, metavar="ID", help="the service (as cxi_service's -s)")

    p = argparse.ArgumentParser(prog=PROG, description="CXI services from the shell.",
                                epilog="cxi_service's commands are accepted too: list, create, "
                                       "delete, enable, disable, update (with -s ID, -y FILE).")
    p.add_argument("-d", "--device", type=_device, default=0, help="device, cxiN or N (default cxi0)")
    p.add_argument("-V", "--version", action="store_true", help="print the version and backend")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    svc = sub.add_parser("svc", parents=[anywhere], help="list, create, change and delete services")
    svc.set_defaults(func=cmd_svc)
    acts = svc.add_subparsers(dest="svc_action", metavar="ACTION")
    acts.required = True
    a = acts.add_parser("list", parents=[with_id], help="all services (or -s ID)")
    a.add_argument("--json", action="store_true")
    a = acts.add_parser("show", parents=[with_id], help="one service")
    a.add_argument("svc_id", type=_svc_id, nargs="?")
    a.add_argument("--json", action="store_true")
    a = acts.add_parser("create", parents=[with_id], help="create a service; prints its ID")
    _add_create_args(a)
    for name in ("delete", "enable", "disable", "set-netns"):
        a = acts.add_parser(name, parents=[with_id], help=f"{name} a service")
        a.add_argument("svc_id", type=_svc_id, nargs="?")
        if name == "set-netns":
            a.add_argument("netns", type=netns_arg, help="a netns path or inode number")
    a = acts.add_parser("update", parents=[with_id], help="change a service's stored descriptor")
    a.add_argument("svc_id", type=_svc_id, nargs="?")
    _add_update_args(a)
    a = acts.add_parser("rsrc", parents=[with_id], help="resource use")
    a.add_argument("svc_id", type=_svc_id, nargs="?")
    a.add_argument("--json", action="store_true")

    # cxi_service's command names at the top level: `pycxi list -v`, `pycxi create -y F`,
    # `pycxi delete -s 2`; the same actions as `pycxi svc ...`.
    hpe = {"list": "list services (cxi_service list)", "create": "create a service (-y FILE)",
           "delete": "delete the service -s ID", "enable": "enable the service -s ID",
           "disable": "disable the service -s ID", "update": "change the service -s ID"}
    for name, text in hpe.items():
        a = sub.add_parser(name, parents=[with_id], help=text)
        a.set_defaults(func=cmd_svc, svc_action=name)
        if name == "list":
            a.add_argument("--json", action="store_true")
        elif name == "create":
            _add_create_args(a)
        else:
            a.add_argument("svc_id", type=_svc_id, nargs="?")
            if name == "update":
                _add_update_args(a)

    ac = sub.add_parser("access-check", parents=[anywhere],
                        help="can this process use a service (and a VNI)?")
    ac.add_argument("--svc", type=_svc_id, required=True)
    ac.add_argument("--vni", type=_int)
    ac.add_argument("--tc", help="also allocate a CP with this traffic class")
    ac.set_defaults(func=cmd_access_check)

    sim = sub.add_parser("sim", help="the software CXI device")
    sim.set_defaults(func=cmd_sim)
    sacts = sim.add_subparsers(dest="sim_action", metavar="ACTION")
    sacts.required = True
    a = sacts.add_parser("status")
    a.add_argument("--json", action="store_true")
    a.add_argument("--check", action="store_true", help="verify internal invariants")
    a = sacts.add_parser("reset")
    a.add_argument("--devices", type=_int, default=1)
    a.add_argument("--strict-vni-overlap", action="store_true",
                   help="model an unpatched 13.1/14.0.0 driver: no two profiles may overlap")
    a.add_argument("--stock-root-profile", action="store_true",
                   help="model an unpatched driver: root in any netns gets an implicit profile "
                        "for a VNI that no profile matches")

    from pycxi.cni.node import register as register_node
    register_node(sub)

    try:
        from pycxi.vni.cli import register
    except ImportError:  # pragma: no cover - the vni package ships with pycxi
        pass
    else:
        register(sub)
    return p


def _split_passthrough(argv: List[str]) -> Tuple[List[str], Optional[List[str]]]:
    """``pycxi [-d DEV] vni controller ARGS...``: ARGS go to the controller untouched.

    argparse's REMAINDER does not take arguments that start with '-' in a subcommand,
    so the split is made here: everything after ``vni controller`` is the controller's.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in ("-d", "--device") else 1
    if argv[i:i + 2] == ["vni", "controller"]:
        return argv[:i + 2], argv[i + 2:]
    return argv, None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv, passthrough = _split_passthrough(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if passthrough is not None:
        args.controller_args = passthrough
    if args.version:
        from pycxi import __version__
        from pycxi.device import BACKEND, NETNS_METHODS, SOFTWARE_DEVICE

        print(f"pycxi {__version__} ({BACKEND}; netns: {', '.join(sorted(NETNS_METHODS)) or 'none'})")
        if SOFTWARE_DEVICE:
            from pycxi.device import sim_root

            print(f"SOFTWARE CXI device (state under {sim_root()}): not a NIC, isolates nothing; "
                  f"for tests and demos only")
        return 0
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except CxiLibError as e:
        print(f"{PROG}: {e.strerror}", file=sys.stderr)
        return 1
    except CxiError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2 if isinstance(e, CxiUserError) else 1
    except OSError as e:
        print(f"{PROG}: {e.strerror or e} ({errno_name(e.errno or 0)})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

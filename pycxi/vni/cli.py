"""``pycxi vni``: the local SQLite VNI store from the shell.

    pycxi vni alloc KEY [--owner OWNER]   print KEY's VNI, allocating one if needed
    pycxi vni release KEY                 release KEY's VNI into quarantine
    pycxi vni get KEY                     print KEY's VNI (exit 1 if it holds none)
    pycxi vni list [--json]               allocated and quarantined VNIs
    pycxi vni manifests [--servicemonitor] [--image IMG]   the Kubernetes manifests
    pycxi vni controller [ARGS...]        run the VNI controller (kopf)

Options (before or after the action): ``--db PATH`` (default ``$PYCXI_VNI_DB`` or
/var/lib/pycxi/vni.db), ``--range FIRST-LAST`` (repeatable or comma-separated; default
1024-65535), ``--quarantine SECONDS`` (default 90).

Exit status: 0 success, 1 error, 2 usage error, 3 no free VNI (try again later).
Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

from pycxi.vni.store import (
    DEFAULT_DB,
    DEFAULT_QUARANTINE,
    DEFAULT_RANGES,
    VniError,
    VniExhausted,
    VniRangeError,
    format_ranges,
    normalize_ranges,
    parse_ranges,
)

__all__ = ["DEFAULT_DB", "DB_ENV", "EXIT_EXHAUSTED", "main", "register", "run"]

log = logging.getLogger(__name__)

DB_ENV = "PYCXI_VNI_DB"
EXIT_ERROR = 1
EXIT_EXHAUSTED = 3


def _range_arg(text: str) -> tuple:
    try:
        return parse_ranges(text)
    except VniRangeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _quarantine_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid quarantine {text!r}: need seconds >= 0")
    return value


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: the options may be given before or after the action; a default here
    # would let the action's parser overwrite a value given before it.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH",
                   help=f"SQLite file (default: ${DB_ENV} or {DEFAULT_DB})")
    p.add_argument("--range", dest="ranges", action="append", type=_range_arg,
                   default=argparse.SUPPRESS, metavar="FIRST-LAST[,...]",
                   help=f"VNI range(s) to allocate from (default {format_ranges(DEFAULT_RANGES)})")
    p.add_argument("--quarantine", type=_quarantine_arg, default=argparse.SUPPRESS,
                   metavar="SECONDS",
                   help=f"seconds before a released VNI is reused (default {DEFAULT_QUARANTINE:g})")
    return p


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``vni`` command to a ``pycxi`` CLI; it dispatches via ``args.func``."""
    common = _common_options()
    vni = subparsers.add_parser(
        "vni", parents=[common], help="allocate VNIs from a local SQLite store",
        description="Allocate VNIs from a local SQLite store (single node, podman).",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 no free VNI.")
    vni.set_defaults(func=run, vni_action=None)
    actions = vni.add_subparsers(dest="vni_action", metavar="ACTION")

    p = actions.add_parser("alloc", parents=[common], help="print KEY's VNI, allocating one")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--owner", help="free-form note stored with the allocation")
    p = actions.add_parser("release", parents=[common],
                           help="release KEY's VNI into quarantine")
    p.add_argument("key", metavar="KEY")
    p = actions.add_parser("get", parents=[common],
                           help="print KEY's VNI; exit 1 if it holds none")
    p.add_argument("key", metavar="KEY")
    p = actions.add_parser("list", parents=[common], help="allocated and quarantined VNIs")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = actions.add_parser("manifests", help="print the Kubernetes manifests (CRDs, RBAC, controller)")
    p.add_argument("--servicemonitor", action="store_true", help="include the ServiceMonitor")
    p.add_argument("--image", help="controller image (default: the shipped placeholder)")
    p = actions.add_parser("controller", help="run the VNI controller (needs pycxi[controller])")
    p.add_argument("controller_args", nargs=argparse.REMAINDER,
                   help="arguments of python -m pycxi.vni.controller (see its --help)")
    return vni


def _err(msg: str) -> None:
    print(f"pycxi vni: {msg}", file=sys.stderr)


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``pycxi vni`` command; returns the exit status."""
    action = getattr(args, "vni_action", None)
    if action is None:
        _err("missing action: alloc, release, get, list, manifests or controller "
             "(see 'pycxi vni --help')")
        return 2
    if action == "manifests":
        from pycxi.vni.manifests import manifests

        sys.stdout.write(manifests(args.servicemonitor, image=args.image))
        return 0
    if action == "controller":
        try:
            from pycxi.vni.controller import main as controller_main
        except ImportError as e:
            _err(f"the controller needs kopf and prometheus-client: pip install 'pycxi[controller]' ({e})")
            return EXIT_ERROR
        return controller_main(args.controller_args)
    path = getattr(args, "db", None) or os.environ.get(DB_ENV) or DEFAULT_DB
    ranges = getattr(args, "ranges", None)
    quarantine = getattr(args, "quarantine", DEFAULT_QUARANTINE)
    # The SQLite module is imported here so that `pycxi --help` stays cheap.
    from pycxi.vni.sqlite import SqliteStore

    try:
        merged = normalize_ranges(r for rs in ranges for r in rs) if ranges else DEFAULT_RANGES
        with SqliteStore(path, ranges=merged, quarantine=quarantine) as store:
            if action == "alloc":
                print(store.acquire(args.key, owner=args.owner))
            elif action == "release":
                if not store.release(args.key):
                    holders = store.holders(args.key)
                    if holders:
                        # the invariant: never back to the pool while an attachment holds it
                        _err(f"{args.key!r} is still held by {len(holders)} attachment(s) "
                             f"({', '.join(holders[:5])}); not released")
                        return EXIT_ERROR
                    # Not an error: release is idempotent, like a CNI DEL.
                    _err(f"{args.key!r} held no VNI")
            elif action == "get":
                vni = store.get(args.key)
                if vni is None:
                    _err(f"{args.key!r} holds no VNI")
                    return EXIT_ERROR
                print(vni)
            elif action == "list":
                allocations = store.list()
                if args.json:
                    json.dump([a.to_dict() for a in allocations], sys.stdout, indent=1)
                    print()
                else:
                    print(f"{'VNI':>5}  {'STATE':<11}  {'SINCE':<20}  {'KEY':<24}  OWNER")
                    for a in allocations:
                        print(f"{a.vni:>5}  {a.state:<11}  {_when(a.since):<20}  "
                              f"{a.key:<24}  {a.owner or '-'}")
        sys.stdout.flush()
    except VniExhausted as e:
        _err(str(e))
        return EXIT_EXHAUSTED
    except VniError as e:
        _err(str(e))
        return EXIT_ERROR
    except BrokenPipeError:
        # `pycxi vni list | head`: stop quietly; point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        log.debug("pycxi vni failed", exc_info=True)
        _err(f"{type(e).__name__}: {e}")
        return EXIT_ERROR
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point (``python -m pycxi.vni.cli ...``) until ``pycxi``'s
    own CLI registers this module; arguments are those after ``pycxi vni``."""
    parser = argparse.ArgumentParser(prog="pycxi")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != "vni":
        args_list.insert(0, "vni")
    args = parser.parse_args(args_list)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

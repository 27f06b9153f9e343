"""``cxi``: the CNI plugin executable (console script and installed launcher both call main()).

The top level imports only modules the interpreter has loaded before running any code (``sys``,
``posix``, ``_signal``; ``os`` is not one of them under ``-S``): what only the full path needs
is imported there, so that a DEL with nothing to do (:func:`nothing_to_delete`) loads no more
than ``json`` and :mod:`pycxi.cni.layout`.
"""
import posix
try:
    import _signal as signal     # the C module: same calls, without signal.py's enum set-up
except ImportError:             # pragma: no cover
    import signal
import sys


def _make_log(conf):
    from pycxi.cni.errors import CniError, ERR_INVALID_CONFIG, PluginTimeout
    from pycxi.cni.log import Log, check_log_file
    log_file = conf.log_file
    if log_file is not None:
        from pycxi.cni import policy
        try:
            policy.check_log_file(log_file)       # where: the node's logDir only
            why = check_log_file(log_file)      # what: a regular file, not our stdout
            if why:
                raise CniError(ERR_INVALID_CONFIG, f"invalid value for 'logFile': {log_file!r}", why)
        except CniError as exc:
            if conf.command in ("ADD", "CHECK"):
                raise
            # DEL/GC/STATUS must not fail over where to log (a refused DEL leaks services,
            # and a runtime may run DEL with a scrubbed environment): stderr only
            log_file = None
            sys.stderr.write(f"cxi: warning: logFile ignored: {exc}\n")
    log = Log(conf.log_level, log_file)
    for w in conf.warnings or ():
        log.warning(w)
    # arm the self-timeout now that the configured value is known: a hung call still answers
    seconds = int(max(1, round(conf.timeout)))

    def on_alarm(signum, frame):
        raise PluginTimeout(seconds)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    return log


def _on_term(signum, frame):
    from pycxi.cni.errors import CniError, ERR_TRY_AGAIN_LATER
    raise CniError(ERR_TRY_AGAIN_LATER, f"the cxi plugin was interrupted by signal {signum}")


def handlers():
    from pycxi.cni import commands
    return {"ADD": commands.cmd_add, "DEL": commands.cmd_del, "CHECK": commands.cmd_check,
            "GC": commands.cmd_gc, "STATUS": commands.cmd_status}


class _LazyHandlers(dict):
    """Imports the commands only for verbs that need them (VERSION stays minimal)."""

    def __missing__(self, key):
        self.update(handlers())
        return dict.__getitem__(self, key)


_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")   # = config.SUPPORTED_VERSIONS (not imported: see below)
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _plain_name(s, maxlen=1024):
    return isinstance(s, str) and 0 < len(s) <= maxlen and s[0] not in "._-" \
        and all(c in _NAME_OK for c in s)


def nothing_to_delete(env, data):
    """Whether a DEL has provably nothing to do: no record and no index link of the attachment.

    containerd 1.6 sends DEL up to three times per pod (the later ones with an empty
    ``CNI_NETNS``), and every runtime repeats DELs it is unsure of, so a DEL that finds nothing
    must cost no more than starting the interpreter: this runs before the dispatcher, the
    config parser and the commands are imported.  Anything unusual (invalid JSON, a name or
    version the full path would refuse, a record or index link present) returns False and the
    full path runs (and reports errors as usual)."""
    import json
    try:
        conf = json.loads(data)
    except ValueError:
        return False
    if not isinstance(conf, dict) or conf.get("type") != "cxi" \
            or conf.get("cniVersion") not in _VERSIONS:
        return False
    from pycxi.cni import layout    # imports only posix (not state.py: os, fcntl, the records)
    net, cid, ifname = conf.get("name"), env.get("CNI_CONTAINERID"), env.get("CNI_IFNAME")
    data_dir = conf.get("dataDir", layout.DEFAULT_DATA_DIR)
    # a dataDir that is not normalized takes the full path (StateStore normalizes it)
    if not (_plain_name(net) and _plain_name(cid) and _plain_name(ifname, 15)
            and isinstance(data_dir, str) and "\0" not in data_dir and layout.is_normal(data_dir)):
        return False
    try:
        return layout.nothing_stored(data_dir, net, cid, ifname)     # = StateStore.nothing_for
    except OSError:
        return False


def _environ():
    """``dict(os.environ)``, without importing os (decoded as os.environ decodes it)."""
    enc, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(enc, errors): v.decode(enc, errors) for k, v in posix.environ.items()}


def main(argv=None):
    signal.signal(signal.SIGTERM, _on_term)
    cached = []

    def read_stdin():
        if not cached:
            try:
                cached.append(sys.stdin.buffer.read())
            except (OSError, ValueError, AttributeError):
                cached.append(b"")
        return cached[0]

    env = _environ()
    if env.get("CNI_COMMAND") == "DEL":
        try:
            if nothing_to_delete(env, read_stdin()):
                return 0
        except Exception:       # never worse than the full path: fall through to it
            pass
    from pycxi.cni.skel import dispatch
    rc, out = dispatch(env, read_stdin, _LazyHandlers(), _make_log)
    signal.alarm(0)
    try:
        if out:
            sys.stdout.write(out)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    return rc


if __name__ == "__main__":
    sys.exit(main())

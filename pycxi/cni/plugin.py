"""``cxi``: the CNI plugin executable (console script and installed launcher both call main())."""
import os
try:
    import _signal as signal     # the C module: same calls, without signal.py's enum set-up
except ImportError:             # pragma: no cover
    import signal
import sys

from pycxi.cni.errors import CniError, ERR_TRY_AGAIN_LATER


class PluginTimeout(CniError):
    def __init__(self, seconds):
        super().__init__(ERR_TRY_AGAIN_LATER, f"the cxi plugin timed out after {seconds} s")


def _make_log(conf):
    from pycxi.cni.log import Log, check_log_file
    log_file = conf.log_file
    if log_file is not None:
        from pycxi.cni import policy
        try:
            policy.check_log_file(log_file)       # where: the node's logDir only
            why = check_log_file(log_file)      # what: a regular file, not our stdout
            if why:
                from pycxi.cni.errors import ERR_INVALID_CONFIG
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


def main(argv=None):
    from pycxi.cni.skel import dispatch
    signal.signal(signal.SIGTERM, _on_term)

    def read_stdin():
        try:
            return sys.stdin.buffer.read()
        except (OSError, ValueError, AttributeError):
            return b""

    rc, out = dispatch(dict(os.environ), read_stdin, _LazyHandlers(), _make_log)
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

"""A tiny logger for the plugin: stderr and an optional file, never stdout.

(The ``logging`` package costs ~15 ms of import time on every CNI call; this does not.)
"""
import os
import stat
import sys
import time

_LEVELS = {"error": 40, "warning": 30, "info": 20, "debug": 10}


def _std_ids():
    ids = set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
            ids.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return ids


def bad_log_file(st):
    """Why a log file with this stat must not be written, or None.  Only a regular file that
    is not the plugin's own stdout/stderr: ``/dev/stdout``, a tty or a pipe there would mix
    log lines into the result the runtime parses (or block the plugin)."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a terminal, pipe or device)"
    if (st.st_dev, st.st_ino) in _std_ids():
        return "it is the plugin's own stdout/stderr"
    return None


def check_log_file(path):
    """The ``logFile`` check at start (follows symlinks, as the write will); a missing file is
    fine (created 0600).  Returns the reason to refuse, or None."""
    try:
        return bad_log_file(os.stat(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


class Log:
    def __init__(self, level="warning", path=None, prefix="cxi"):
        self.level = _LEVELS.get(level, 30)
        self.path = path
        self.prefix = prefix

    def _emit(self, lvl, name, msg):
        if lvl < self.level:
            return
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.prefix}[{os.getpid()}] {name}: {msg}\n"
        try:
            sys.stderr.write(line)
        except (OSError, ValueError):
            pass
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                             | os.O_NOCTTY | os.O_NONBLOCK, 0o600)
                try:
                    if bad_log_file(os.fstat(fd)) is None:   # swapped since the check: skip
                        os.write(fd, line.encode("utf-8", "replace"))
                finally:
                    os.close(fd)
            except OSError:
                pass

    def error(self, msg):
        self._emit(40, "error", msg)

    def warning(self, msg):
        self._emit(30, "warning", msg)

    def info(self, msg):
        self._emit(20, "info", msg)

    def debug(self, msg):
        self._emit(10, "debug", msg)

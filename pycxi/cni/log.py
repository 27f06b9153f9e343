"""A tiny logger for the plugin: stderr and an optional file, never stdout.

(The ``logging`` package costs ~15 ms of import time on every CNI call; this does not.)
"""
import os
import sys
import time

_LEVELS = {"error": 40, "warning": 30, "info": 20, "debug": 10}


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
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
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

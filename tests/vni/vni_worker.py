"""A child process for the VNI store tests: opens a store from a factory spec and runs
a script of operations, writing one JSON line per completed operation to stdout.

    python vni_worker.py '{"factory": "sqlite", "spec": {...}, "ops": [["acquire", "k"], ...],
                           "ranges": [[1024, 65535]], "quarantine": 3600,
                           "go": "/tmp/x/go", "forever": "prefix-"}'

``go``: touch ``<go>.ready.<pid>``, then wait until ``<go>`` exists (a start line, so
all workers contend at once).  ``forever``: after ``ops``, acquire ``<prefix>0``,
``<prefix>1``, ... until killed.  A line is written only after the operation returned,
i.e. after its transaction committed.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    cfg = json.loads(sys.argv[1])
    from vni_stores import STORE_FACTORIES

    from pycxi.vni.store import DEFAULT_QUARANTINE, DEFAULT_RANGES, VniError

    go = cfg.get("go")
    if go:
        open(f"{go}.ready.{os.getpid()}", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                print(json.dumps(["error", None, "no go signal"]), flush=True)
                return 1
            time.sleep(0.002)
    factory = STORE_FACTORIES[cfg["factory"]]
    store = factory.open_spec(cfg["spec"],
                              ranges=[tuple(r) for r in cfg.get("ranges", DEFAULT_RANGES)],
                              quarantine=cfg.get("quarantine", DEFAULT_QUARANTINE))
    out = sys.stdout

    def run(op: str, key: str) -> None:
        try:
            if op == "acquire":
                result = store.acquire(key, owner=f"pid{os.getpid()}")
            elif op == "release":
                result = store.release(key)
            elif op == "get":
                result = store.get(key)
            else:
                raise ValueError(op)
        except VniError as e:
            out.write(json.dumps(["error", key, f"{type(e).__name__}: {e}"]) + "\n")
        else:
            out.write(json.dumps([op, key, result]) + "\n")
        out.flush()

    for op, key in cfg.get("ops", []):
        run(op, key)
    prefix = cfg.get("forever")
    i = 0
    while prefix is not None:
        run("acquire", f"{prefix}{i}")
        i += 1
    store.close()
    out.write(json.dumps(["done", None, None]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

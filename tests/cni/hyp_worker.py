"""A long-lived worker for the generated-input test: runs the plugin's dispatcher in-process for
each request line ({"env": {...}, "stdin": "<latin-1 text>"} -> {"rc", "out", "err"}), and
answers {"count": true} with the number of non-default services on every device."""
import io
import json
import sys

from pycxi.cni import plugin
from pycxi.cni.skel import dispatch


def count():
    import pycxi
    n = 0
    for info in pycxi.devices():
        with pycxi.Device(info.name) as d:
            n += sum(1 for s in d.svc_list() if s.svc_id != 1)
    return n


def main():
    real_err = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("count"):
            resp = {"count": count()}
        else:
            data = req["stdin"].encode("latin-1")
            sys.stderr = buf = io.StringIO()
            try:
                rc, out = dispatch(req["env"], lambda: data, plugin._LazyHandlers(), plugin._make_log)
            finally:
                import signal
                signal.alarm(0)
                sys.stderr = real_err
            resp = {"rc": rc, "out": out, "err": buf.getvalue()}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

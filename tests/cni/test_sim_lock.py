"""A process that holds the software device's lock cannot hang the plugin: ADD answers code 11
(try again) within PYCXI_SIM_LOCK_TIMEOUT, and works again once the holder is gone.

The state file is world-writable (the software device models /dev/cxi0, which every user may
open), so any local user can do what the holder below does; tests/test_core_root.py runs it
as nobody.  The holder here is a real second process, SIGKILLed at the end."""
import os
import signal
import subprocess
import sys
import time

from cniutil import PREV, count_services, cxi_conf, plugin_call

HOLD = r"""
import ctypes, mmap, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096)
# struct sim_file: magic u64, version, dev_id, flags, recoveries (u32 each), then the mutex
addr = ctypes.addressof(ctypes.c_char.from_buffer(m, 24))
print(ctypes.CDLL(None).pthread_mutex_lock(ctypes.c_void_p(addr)), flush=True)
while True:
    signal.pause()
"""


def test_add_while_another_process_holds_the_device_lock(cni_env, netns):
    pod = netns.add()
    conf = dict(cxi_conf(cni_env, vnis=[2400], logLevel="warning"), cniVersion="1.1.0",
                name="locked", prevResult=PREV)
    holder = subprocess.Popen([sys.executable, "-c", HOLD,
                               os.path.join(os.environ["PYCXI_SIM_ROOT"], "cxi0")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        t = time.monotonic()
        rc, out, err = plugin_call(cni_env, "ADD", conf, cid="l1", netns_path=netns.path(pod),
                                   extra_env={"PYCXI_SIM_LOCK_TIMEOUT": "0.5"})
        took = time.monotonic() - t
        assert rc != 0 and out["code"] == 11, (out, err)
        assert "EAGAIN" in out.get("details", ""), out
        print(f"ADD gave up after {took:.2f} s")
        assert took < 20, took
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert plugin_call(cni_env, "DEL", conf, cid="l1")[0] == 0
    assert count_services() == 0
    rc, out, err = plugin_call(cni_env, "ADD", conf, cid="l2", netns_path=netns.path(pod))
    assert rc == 0, (out, err)
    assert plugin_call(cni_env, "DEL", conf, cid="l2")[0] == 0
    assert count_services() == 0

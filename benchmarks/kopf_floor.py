"""The floor under any kopf-based VNI controller, for ``bench_controller.py --controller
benchmarks.kopf_floor``: kopf with the same settings as pycxi's controller (async
``kopf.on.event`` handler into its work queue, no diff base, quiet object logger, GC
and loop settings) watching Jobs, and per Job the controller's API writes and nothing
else.  When a Job appears, a worker creates a key-record Lease and a ``Vni``-shaped
object named after the Job (``spec.allocatedAt`` = when the worker started, as the
controller stamps it); when it goes, the Lease is deleted and the object's
``status.releasedAt`` set.  No allocation logic, no uniqueness, no pods, no claims, no
logging: what is left is kopf's cost per event plus the two writes a correct allocator
needs (``--writes 1``: one).  The benchmark's percentiles against this module say how
much of the controller's latency kopf and the API server alone account for on the
machine at hand.

Accepts (and ignores) the rest of the controller's command line, so the benchmark can
start it the same way.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from typing import Any, Optional

import kopf

from pycxi.vni.controller import KeyQueue, connection_info, no_diff_base, run_operator
from pycxi.vni.kstore import format_time
from pycxi.vni.kube import GROUP, VERSION, VNI_PLURAL, KubeClient, KubeConfig, KubeError

PATH = KubeClient.path(GROUP, VERSION, VNI_PLURAL)
LEASES = KubeClient.path("coordination.k8s.io", "v1", "leases", "default")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig")
    ap.add_argument("--writes", type=int, default=2,
                    help="API writes per Job and phase: 2 as the controller (the key record, "
                         "then the Vni; on release the record's delete, then the Vni's "
                         "status), or 1")
    args, _ = ap.parse_known_args()
    writes = args.writes
    client = KubeClient(KubeConfig.load(args.kubeconfig), timeout=30,
                        user_agent="pycxi-vni-controller-floor")
    numbers = itertools.count(1)  # distinct, so that the benchmark's uniqueness check holds

    def handle(kind: str, name: str, uid: str) -> None:
        t = time.time()  # as the controller stamps allocatedAt: when a worker starts
        try:
            if kind == "add":
                if writes > 1:  # the controller's second write: the key record
                    client.create(LEASES, {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": f"floor-{uid}", "namespace": "default"},
                        "spec": {"holderIdentity": name}})
                client.create(PATH, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "Vni",
                    "metadata": {"name": f"floor-{uid}"},
                    "spec": {"vni": next(numbers), "holder": {"name": name, "uid": uid},
                             "allocatedAt": format_time(t)}})
            else:
                if writes > 1:
                    client.delete(f"{LEASES}/floor-{uid}")
                client.patch(f"{PATH}/floor-{uid}/status",
                             {"status": {"releasedAt": format_time(time.time())}})
        except KubeError as e:
            logging.getLogger("floor").warning("%s %s: %s", kind, name, e)

    work = KeyQueue()  # the controller's work queue and workers

    @kopf.on.event("batch", "v1", "jobs")
    async def job(type: Optional[str], body: Any, **_: Any) -> None:
        md = body.get("metadata") or {}
        uid = md.get("uid")
        if uid and type in (None, "ADDED", "DELETED"):  # None: seen in the initial LIST
            work.put(uid, handle, "del" if type == "DELETED" else "add", md.get("name"), uid)

    @kopf.on.startup()
    async def startup(settings: Any, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.persistence.diffbase_storage = no_diff_base()

    @kopf.on.login()
    def login(**_: Any) -> Any:
        return connection_info(client.config)

    kopf.configure(verbose=False, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    run_operator(kopf.operator(clusterwide=True, standalone=True))


if __name__ == "__main__":
    main()

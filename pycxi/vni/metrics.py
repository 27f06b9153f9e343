"""The VNI controller's Prometheus metrics (docs/vni-service.md lists them)."""
from __future__ import annotations


class Metrics:
    """prometheus-client metrics, on their own registry (no global state on import)."""

    def __init__(self) -> None:
        import prometheus_client as pc

        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.allocated = pc.Gauge("pycxi_vni_allocated", "VNIs held by workloads or claims", registry=r)
        self.quarantined = pc.Gauge("pycxi_vni_quarantined", "released VNIs in quarantine", registry=r)
        self.free = pc.Gauge("pycxi_vni_free", "VNIs in the configured ranges that can be handed out", registry=r)
        self.latency = pc.Histogram(
            "pycxi_vni_allocation_seconds", "time from first sight of a workload to its VNI",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.allocations = pc.Counter("pycxi_vni_allocations_total", "VNIs handed out", registry=r)
        self.releases = pc.Counter("pycxi_vni_releases_total", "VNIs released", ["cause"], registry=r)
        self.errors = pc.Counter("pycxi_vni_errors_total", "allocation errors", ["reason"], registry=r)
        self.leader = pc.Gauge("pycxi_vni_leader", "1 while this replica is the active one", registry=r)

    def serve(self, port: int) -> None:
        import prometheus_client as pc

        pc.start_http_server(port, registry=self.registry)

"""Store factories for the VNI store conformance suite.

Every entry of :data:`STORE_FACTORIES` runs the whole suite in ``tests/vni/``.  To add
a store (e.g. the Kubernetes one), subclass :class:`StoreFactory` and register it:

    STORE_FACTORIES["kubernetes"] = KubernetesFactory

A factory stands for one *backing state* (a file, a fake API server's contents):
every store it opens, in this process or in a child process (``vni_worker.py``), sees
the same allocations.  Child processes get :meth:`StoreFactory.spec` (JSON) and call
:meth:`StoreFactory.open_spec`; they use the real clock.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Type

from pycxi.vni.store import VniStore

__all__ = ["STORE_FACTORIES", "StoreFactory", "SqliteFactory"]


class StoreFactory:
    """Opens stores over one shared backing state, and cleans up after them."""

    #: the key in STORE_FACTORIES (set by the store_factory fixture)
    name = ""
    #: hypothesis examples for the model-based test (lower it for slow stores)
    model_examples = 60

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        self.tmp_path = tmp_path
        self.request = request  # a pytest FixtureRequest, for stores that need fixtures
        self._open: List[VniStore] = []

    def open(self, **kw: Any) -> VniStore:
        """A new store over this factory's state; ``kw``: ranges, quarantine, clock."""
        store = self.open_spec(self.spec(), **kw)
        self._open.append(store)
        return store

    def spec(self) -> Dict[str, Any]:
        """JSON-serializable description of the backing state, for child processes."""
        raise NotImplementedError

    @classmethod
    def open_spec(cls, spec: Dict[str, Any], **kw: Any) -> VniStore:
        raise NotImplementedError

    def close(self) -> None:
        for store in self._open:
            store.close()
        self._open.clear()


_TEMPLATE: Optional[str] = None


def _template() -> str:
    """A freshly created database, made once per test session: creating one inserts
    65k rows (~0.1 s), which the many small tests would otherwise pay every time.
    Child processes create theirs from scratch (the concurrency test races on it)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        from pycxi.vni.sqlite import SqliteStore

        d = tempfile.mkdtemp(prefix="pycxi-vni-template-")
        atexit.register(shutil.rmtree, d, True)
        path = os.path.join(d, "template.db")
        SqliteStore(path).close()  # last close checkpoints the WAL into the file
        _TEMPLATE = path
    return _TEMPLATE


class SqliteFactory(StoreFactory):
    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        super().__init__(tmp_path, request)
        self.path = tmp_path / "vni.db"

    def open(self, **kw: Any) -> VniStore:
        # Child processes (open_spec) that get there first create the file themselves.
        if not self.path.exists():
            shutil.copyfile(_template(), self.path)
        return super().open(**kw)

    def spec(self) -> Dict[str, Any]:
        return {"path": str(self.path)}

    @classmethod
    def open_spec(cls, spec: Dict[str, Any], **kw: Any) -> VniStore:
        from pycxi.vni.sqlite import SqliteStore

        return SqliteStore(spec["path"], **kw)


class KubernetesFactory(StoreFactory):
    """:class:`pycxi.vni.kstore.KubeStore` against a fake API server: no kube-apiserver
    can be installed where this suite runs, so kmock's emulator on 127.0.0.1 (extended
    with the API semantics the store relies on, tests/vni_k8s/fakeapi.py) stands in."""

    model_examples = 15
    # ~4 API requests per allocation through one in-process fake server (~500 req/s)
    process_timeout = 600

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        import pytest
        import sys

        pytest.importorskip("kmock")
        super().__init__(tmp_path, request)
        k8s_tests = str(Path(__file__).resolve().parents[1] / "vni_k8s")
        if k8s_tests not in sys.path:
            sys.path.insert(0, k8s_tests)
        from fakeapi import FakeApiServer, write_kubeconfig

        self.server = FakeApiServer()
        self.server.start()
        self.kubeconfig = write_kubeconfig(str(tmp_path / "kubeconfig.json"), self.server.url)

    def spec(self) -> Dict[str, Any]:
        return {"kubeconfig": self.kubeconfig}

    @classmethod
    def open_spec(cls, spec: Dict[str, Any], **kw: Any) -> VniStore:
        from pycxi.vni.kstore import KubeStore

        return KubeStore(kubeconfig=spec["kubeconfig"], **kw)

    def close(self) -> None:
        super().close()
        self.server.stop()


STORE_FACTORIES: Dict[str, Type[StoreFactory]] = {
    "sqlite": SqliteFactory,
    "kubernetes": KubernetesFactory,
}


class FakeClock:
    """An injectable clock: epoch seconds that move only when told to."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


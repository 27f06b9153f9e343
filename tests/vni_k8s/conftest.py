"""Fixtures for the Kubernetes half of the VNI service.

No kube-apiserver can be installed where these tests run (see fakeapi.py); every test
here talks to kmock's emulator on 127.0.0.1, extended in fakeapi.py with the API
semantics our code relies on.  tests/vni_k8s/e2e_kind.sh runs the same flows on a real
cluster (kind or k3s) in users' own CI.
"""
from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# run from a checkout: this directory's helpers and the checkout's pycxi come first
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fakeapi import FakeApiServer, write_kubeconfig  # noqa: E402

from pycxi.vni.kube import KubeClient, KubeConfig  # noqa: E402


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as srv:
        yield srv


@pytest.fixture
def kubeconfig(api: FakeApiServer, tmp_path) -> str:
    return write_kubeconfig(str(tmp_path / "kubeconfig.json"), api.url)


@pytest.fixture
def client(kubeconfig: str) -> Iterator[KubeClient]:
    c = KubeClient(KubeConfig.load(kubeconfig), timeout=5.0)
    yield c
    c.close()


from kcluster import Cluster  # noqa: E402


@pytest.fixture
def cluster(client: KubeClient, kubeconfig: str, tmp_path) -> Iterator[Cluster]:
    c = Cluster(client, kubeconfig, tmp_path)
    yield c
    c.close()

"""Fixtures for the VNI store conformance suite: every test taking ``store_factory``
runs once per entry of ``vni_stores.STORE_FACTORIES``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The suite runs from a checkout: make `pycxi` and the helpers here importable in this
# process and in the child processes it starts.
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from vni_stores import STORE_FACTORIES, FakeClock, StoreFactory  # noqa: E402


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    factory = STORE_FACTORIES[request.param](tmp_path, request)
    factory.name = request.param
    yield factory
    factory.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def child_env() -> dict:
    """Environment for child processes: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env

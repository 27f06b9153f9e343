"""Kubernetes manifests of the VNI service, shipped with the package so that pip users
can print and apply them::

    python -c "from pycxi.vni.manifests import manifests; print(manifests())" | kubectl apply -f -
"""
from __future__ import annotations

import re
from importlib import resources
from typing import List, Optional

__all__ = ["FILES", "OPTIONAL", "manifests", "read"]

#: Applied in this order: CRDs, then RBAC (and the namespace), then the controller, then the
#: admission guard that keeps pods which may run as global root off VNIs (docs/security.md).
FILES = ("crds.yaml", "rbac.yaml", "controller.yaml", "admission.yaml")
#: Needs the Prometheus Operator's CRDs.
OPTIONAL = ("servicemonitor.yaml",)


def read(name: str) -> str:
    if name not in FILES + OPTIONAL:
        raise ValueError(f"no manifest {name!r}; have {', '.join(FILES + OPTIONAL)}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def manifests(servicemonitor: bool = False, *, image: Optional[str] = None,
              admission: bool = True) -> str:
    """All manifests as one multi-document YAML stream; ``image`` replaces the
    controller image.  ``admission=False`` leaves out the admission guard -- only for
    clusters whose every node runs a driver with the root-profile patch."""
    names: List[str] = [n for n in FILES if admission or n != "admission.yaml"]
    names += list(OPTIONAL) if servicemonitor else []
    docs = [read(n).strip() for n in names]
    out = "\n---\n".join(docs) + "\n"
    if image:
        out = re.sub(r"image: ghcr\.io/pycxi/pycxi:\S+", f"image: {image}", out)
    return out

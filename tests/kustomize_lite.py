"""A small kustomize renderer for the layout in deploy/ (kustomize itself is not installed in CI).

It implements only what the repository's kustomizations use, as kustomize does it:
``resources`` (files, and directories holding a kustomization.yaml), ``images`` (name ->
newName/newTag/digest on every container and initContainer image), and ``patches`` with
an inline or file strategic-merge patch and a kind/name target (lists of containers, env,
ports, volumes and volumeMounts merge by ``name``).  Anything else in a kustomization is an
error, so a new feature there cannot be silently ignored by the test that renders it.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List

import yaml

KNOWN = {"apiVersion", "kind", "resources", "images", "patches"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "ports": "containerPort",
              "volumes": "name", "volumeMounts": "mountPath"}


class KustomizeError(Exception):
    pass


def _load_docs(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge: maps merge, a null deletes, keyed lists merge by their key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        # as kustomize orders it: the patch's items (merged into their base item) first,
        # then the base items the patch does not name, in their order
        mk = MERGE_KEYS[key]
        named = {item.get(mk) for item in patch}
        out = []
        for item in patch:
            old = next((x for x in base if x.get(mk) == item.get(mk)), None)
            out.append(copy.deepcopy(item) if old is None else _merge(old, item, ""))
        return out + [copy.deepcopy(x) for x in base if x.get(mk) not in named]
    return copy.deepcopy(patch)


def _set_image(image: str, rules: List[Dict[str, str]]) -> str:
    name, tag = image, None
    if "@" in name:
        name = name.split("@", 1)[0]
    elif ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    for r in rules:
        if r["name"] == name:
            new = r.get("newName", name)
            if "digest" in r:
                return f"{new}@{r['digest']}"
            return f"{new}:{r['newTag']}" if "newTag" in r else (f"{new}:{tag}" if tag else new)
    return image


def _pod_specs(doc: Dict[str, Any]):
    spec = doc.get("spec") or {}
    if "template" in spec:
        yield spec["template"].get("spec") or {}
    if doc.get("kind") == "Pod":
        yield spec
    if doc.get("kind") == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]


def build(directory: str) -> List[Dict[str, Any]]:
    """The documents ``kustomize build directory`` outputs (order as listed, not kustomize's
    kind-sorted order: compare as sets)."""
    directory = os.path.abspath(directory)
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    [k] = _load_docs(path)
    unknown = set(k) - KNOWN
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if k.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind is {k.get('kind')!r}")
    docs: List[Dict[str, Any]] = []
    for res in k.get("resources") or []:
        full = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(full):
            docs += build(full)
        elif os.path.isfile(full):
            # kustomize's load restrictor: files only from this kustomization's own tree
            if not full.startswith(directory + os.sep):
                raise KustomizeError(f"{path}: file {res} is outside the kustomization root")
            docs += _load_docs(full)
        else:
            raise KustomizeError(f"{path}: resource {res} does not exist")
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise KustomizeError(f"{path}: resources defined twice: {sorted(map(str, dup))}")
    for p in k.get("patches") or []:
        if set(p) - {"target", "patch", "path"}:
            raise KustomizeError(f"{path}: patch fields not implemented: {sorted(set(p))}")
        if "path" in p:
            [patch] = _load_docs(os.path.join(directory, p["path"]))
        else:
            patch = yaml.safe_load(p["patch"])
        target = p.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        hits = [i for i, d in enumerate(docs)
                if all(d.get("kind") == v if f == "kind" else d["metadata"].get(f) == v
                       for f, v in target.items())]
        if not hits:
            raise KustomizeError(f"{path}: patch target {target} matches nothing")
        for i in hits:
            body = {f: v for f, v in patch.items() if f not in ("apiVersion", "kind", "metadata")}
            docs[i] = _merge(docs[i], body)
    rules = k.get("images") or []
    for d in docs:
        for pod in _pod_specs(d):
            for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                c["image"] = _set_image(c["image"], rules)
    return docs

"""The Python examples in README.md and docs/library.md run as written (against the
software device, with /run/netns/pod-a replaced by a namespace of the test's own)."""
import os
import re

import pytest

from coreutil import REPO


@pytest.mark.parametrize("doc", ["README.md", "docs/library.md"])
def test_python_examples_run(doc, dev, netns_factory):
    text = open(os.path.join(REPO, doc)).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{doc} has no Python example"
    ns = netns_factory()
    for block in blocks:
        code = block.replace("/run/netns/pod-a", f"/run/netns/{ns}")
        exec(compile(code, doc, "exec"), {})
    assert [d.svc_id for d in dev.svc_list()] == [1]   # the examples clean up after themselves


def test_relative_links_in_the_docs_resolve():
    import glob

    docs = ["README.md", "benchmarks/README.md", "cni/README.md", "patches/README.md",
            *glob.glob(os.path.join(REPO, "docs", "*.md"))]
    broken = []
    for doc in docs:
        path = os.path.join(REPO, doc)
        for target in re.findall(r"\]\(([^)#\s]+)", open(path).read()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.join(os.path.dirname(path), target)):
                broken.append(f"{os.path.relpath(path, REPO)} -> {target}")
    assert not broken, broken

"""The runtime's service tree is the one docs/architecture.md draws, and makeService does no I/O."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.application import service
from twisted.internet.testing import MemoryReactorClock

from oneos.config import load_config
from oneos.runtime.app import build_runtime

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def drawn_tree() -> list[tuple[int, str]]:
    """(depth, name) of each node in the first ``tree`` block of the architecture doc."""
    text = DOC.read_text()
    block = text.split("```tree\n", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        m = re.match(r"^((?:│   |    )*)(?:[├└]── )?([a-z][a-z-]*)\b", line)
        if m and line.strip():
            depth = len(m.group(1)) // 4 + (1 if "── " in line else 0)
            out.append((depth, m.group(2)))
    return out


def built_tree(top: service.IService, depth: int = 0) -> list[tuple[int, str]]:
    out = [(depth, top.name)]
    for child in getattr(top, "services", []):
        out.extend(built_tree(child, depth + 1))
    return out


def test_the_doc_draws_the_tree_build_runtime_returns(tmp_path):
    # the embedded default: no config file, broker on loopback, so the embedded broker is in the tree
    top = build_runtime(load_config(tmp_path), reactor=MemoryReactorClock())
    assert built_tree(top) == drawn_tree()
    runtime = top.getServiceNamed("runtime")
    for name in ("transfer", "pubsub", "membership", "agents", "rpc", "kernel", "fs", "election", "store", "shell"):
        assert runtime.getServiceNamed(name).name == name
    assert not any(s.running for s in runtime), "building the tree must not start anything"


def test_roles_have_no_children_until_taken(tmp_path):
    runtime = build_runtime(load_config(tmp_path), reactor=MemoryReactorClock()).getServiceNamed("runtime")
    assert list(runtime.getServiceNamed("kernel")) == [] and list(runtime.getServiceNamed("fs")) == []
    assert set(runtime.getServiceNamed("kernel").factories) == {"scheduler"}
    assert set(runtime.getServiceNamed("fs").factories) == {"fs"}

"""Fixtures of the cluster tier: real runtimes in one process, on the in-memory broker and one fake clock.

The harness itself is :mod:`oneos.testing.cluster` (usable without pytest, e.g. by benchmarks).
A cluster built through these fixtures is closed after the test, and the test fails if any
runtime's code raised where a real reactor would only have logged it, or a runtime gave up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oneos.testing.cluster import Cluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build clusters with options (``make_cluster(keepalive=2)``); each gets its own directory under tmp_path."""
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(made)}", **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    for cluster in made:
        assert not cluster.errors, "runtime code raised inside the simulation:\n" + "\n".join(
            f.getTraceback() for f in cluster.errors
        )
        assert not cluster.fatal, f"runtimes gave up: {cluster.fatal}"


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A cluster with the default settings (keepalive 2 s, status every 2 s) and no runtime yet."""
    return make_cluster()

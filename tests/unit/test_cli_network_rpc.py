"""The CLI's view of who serves what (oneos.cli.common.network_rpc), on a fake bus and a Clock.

A command started while kernel runtimes are alive but none leads yet (the
runtimes have just started, or a leader just died) waits for the election
to end instead of failing with "try again in a few seconds"; it gives up
after ELECTION_WAIT seconds and then fails with that reason, at once.  The
view follows the statuses that arrive after the snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from oneos.cli.common import ELECTION_WAIT, network_rpc
from oneos.errors import KernelUnavailable
from oneos.pubsub import topics
from oneos.pubsub.client import Message
from oneos.runtime.status import RuntimeStatus


class Bus:
    """Just enough of PubSubClient: subscriptions by exact topic or the status wildcard, a barrier."""

    identity = "cli"
    client_id = "cli-1"

    def __init__(self, retained: list[RuntimeStatus]) -> None:
        self.retained = retained
        self.handlers: list[tuple[str, Callable[[Message], Any]]] = []

    def subscribe(self, topic: str, handler: Callable[[Message], Any]) -> defer.Deferred:
        self.handlers.append((topic, handler))
        if topic == topics.ALL_STATUS:
            for status in self.retained:
                handler(Message(topics.status(status.id), status.encode(), retain=True))
        return defer.succeed(None)

    def barrier(self) -> defer.Deferred:
        return defer.succeed(None)

    def publish_status(self, status: RuntimeStatus) -> None:
        for topic, handler in self.handlers:
            if topic == topics.ALL_STATUS:
                handler(Message(topics.status(status.id), status.encode()))


def runtime(rid: str, **fields: Any) -> RuntimeStatus:
    """A fresh status (the CLI judges staleness by the wall clock), a kernel runtime unless told."""
    return RuntimeStatus(id=rid, instance=f"i-{rid}", **{"kernel": True, "updated_at": time.time(), **fields})


def test_a_network_with_a_leader_answers_at_once() -> None:
    clock = Clock()
    bus = Bus([runtime("rt-1", leader=True, epoch=1), runtime("rt-2")])
    got: list[Any] = []
    network_rpc(clock, bus).addCallback(got.append)
    assert len(got) == 1
    got[0].precheck("scheduler")  # no error: rt-1 leads


def test_an_election_under_way_is_waited_for() -> None:
    clock = Clock()
    bus = Bus([runtime("rt-1"), runtime("rt-2")])
    got: list[Any] = []
    network_rpc(clock, bus).addCallback(got.append)
    clock.advance(ELECTION_WAIT / 2)
    assert got == [], "no leader yet: the command waits"
    bus.publish_status(runtime("rt-2", leader=True, epoch=1))
    assert len(got) == 1, "the leader's claim ends the wait at once"
    got[0].precheck("scheduler")
    assert not clock.getDelayedCalls(), "the give-up timer is cancelled"


def test_an_election_that_does_not_end_fails_with_the_reason_after_the_wait() -> None:
    clock = Clock()
    bus = Bus([runtime("rt-1")])
    got: list[Any] = []
    network_rpc(clock, bus).addCallback(got.append)
    clock.advance(ELECTION_WAIT - 0.1)
    assert got == []
    clock.advance(0.1)
    assert len(got) == 1
    with pytest.raises(KernelUnavailable, match="an election is under way"):
        got[0].precheck("scheduler")
    bus.publish_status(runtime("rt-1", leader=True, epoch=1))
    got[0].precheck("scheduler")  # the view follows the statuses that arrive later


def test_no_kernel_runtime_at_all_is_said_at_once_without_waiting() -> None:
    clock = Clock()
    bus = Bus([runtime("rt-9", kernel=False)])
    got: list[Any] = []
    network_rpc(clock, bus).addCallback(got.append)
    assert len(got) == 1, "nobody can win an election: nothing to wait for"
    with pytest.raises(KernelUnavailable, match="no kernel runtime is alive"):
        got[0].precheck("scheduler")

"""Waiting for an agent to end, from anywhere in the network.

The agent's runtime keeps its status retained on ``oneos/v1/agents/RT/ID``;
whoever needs the exit status (``oneos run``, the shell) subscribes there
instead of polling or holding a long RPC open.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from oneos.agents.info import ENDED
from oneos.pubsub import messages, topics


def watch_agent(client: Any, runtime: str, agent_id: str) -> tuple[defer.Deferred, defer.Deferred]:
    """(fires with the final status once the agent ended, fires with the subscription to cancel)."""
    done: defer.Deferred = defer.Deferred()

    def on(message: Any) -> None:
        if not message.payload or done.called:
            return
        try:
            body = messages.decode(message.payload, "agent.status")
        except messages.MalformedMessage:
            return
        if body.get("state") in ENDED:
            done.callback(body)

    return done, client.subscribe(topics.agent(runtime, agent_id), on)

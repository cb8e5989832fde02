"""Builds a runtime's service tree from a configuration (used by the plugin)."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from oneos.config import Config
from oneos.errors import describe
from oneos.pubsub.client import parse_broker_url

log = Logger()


def _exit_on_fatal(reactor: Any) -> Any:
    """A fatal-error handler that stops the reactor and exits with status 1."""

    def fatal(error: BaseException) -> None:
        log.critical("oneosd: {error}", error=describe(error))
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()

    return fatal


def describe_config(config: Config) -> str:
    """A readable block saying what this runtime will do, logged at start."""
    lines = [
        "OneOS runtime " + config.id + (" (generated id)" if config.generated_id else ""),
        f"  home      {config.home}" + (
            ("  (no config.json: embedded default)" if config.wants_embedded_broker else "  (no config.json: defaults and flags)")
            if config.embedded
            else ""
        ),
        f"  pubsub    {config.pubsub}" + ("  (hosted here if none answers)" if config.wants_embedded_broker else ""),
        f"  store     {config.store or 'the network' + chr(39) + 's (or SQLite under home if the network has none yet)'}",
        f"  kernel    {'yes' if config.kernel else 'no'}",
        f"  memory    {config.memory_mb} MB",
        f"  tags      {', '.join(config.tags) or '-'}",
    ]
    return "\n".join(lines)


def build_runtime(config: Config, reactor: Any = None) -> service.MultiService:
    """The runtime tree: ``oneosd`` holding the optional embedded broker, then the runtime.

    docs/architecture.md draws the tree this returns (tests/test_service_tree.py checks it).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from oneos.runtime.embedded import EmbeddedBroker
    from oneos.runtime.service import RuntimeService

    top = service.MultiService()
    top.setName("oneosd")
    runtime = RuntimeService(config, reactor, on_fatal=_exit_on_fatal(reactor))
    if config.wants_embedded_broker:
        address = parse_broker_url(config.pubsub)
        embedded = EmbeddedBroker(address.host, address.port, reactor)
        embedded.setServiceParent(top)
        runtime.broker_ready = embedded.ready
    runtime.setServiceParent(top)
    reactor.callWhenRunning(lambda: log.info("{block}", block=describe_config(config)))
    return top

"""Builds a runtime's service tree from a configuration (used by the plugin)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from oneos.config import Config
from oneos.errors import describe
from oneos.pubsub.address import parse_broker_url
from oneos.security import credentials
from oneos.security.credentials import redact_url

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
        f"  home      {config.home}"
        + (
            (
                "  (no config.json: embedded default)"
                if config.wants_embedded_broker
                else "  (no config.json: defaults and flags)"
            )
            if config.embedded
            else ""
        ),
        f"  pubsub    {redact_url(config.pubsub)}"
        + ("  (hosted here if none answers)" if config.wants_embedded_broker else ""),
        f"  store     {config.store or 'the network' + chr(39) + 's (or SQLite under home if the network has none yet)'}",
        f"  kernel    {'yes' if config.kernel else 'no'}",
        f"  memory    {config.memory_mb} MB",
        f"  tags      {', '.join(config.tags) or '-'}",
    ]
    return "\n".join(lines)


def _use_credentials(runtime: Any, creds: Any) -> None:
    """Make the runtime's broker connection present *creds* (its URL named none)."""
    if creds is not None:
        runtime.client.address = dataclasses.replace(
            runtime.client.address, username=creds.username, password=creds.password
        )


def build_runtime(config: Config, reactor: Any = None) -> service.MultiService:
    """The runtime tree: ``oneosd`` holding the optional embedded broker, then the runtime.

    The runtime connects as the identity named like its id (docs/security.md):
    derived from the network secret on the machine that holds it, else the one
    ``oneos join`` installed, whose name becomes the id when none is configured.
    Only ``credentials.json`` is read here; the embedded broker creates it on a
    first start.

    docs/architecture.md draws the tree this returns (tests/unit/test_service_tree.py checks it).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from oneos.runtime.embedded import EmbeddedBroker
    from oneos.runtime.service import RuntimeService

    address = parse_broker_url(config.pubsub)
    found = credentials.load(config.home) if address.username is None else None
    if found is not None and not found.secret and config.generated_id:
        if credentials.role(found.username) != "runtime":
            raise credentials.CredentialsError(
                f"{credentials.path(config.home)} holds the client identity {found.username!r}, which cannot run a "
                "runtime: ask for a runtime invitation ('oneos invite' without --user)"
            )
        config = dataclasses.replace(config, id=found.username, generated_id=False)
    top = service.MultiService()
    top.setName("oneosd")
    runtime = RuntimeService(config, reactor, on_fatal=_exit_on_fatal(reactor))
    if config.wants_embedded_broker:
        embedded = EmbeddedBroker(address.host, address.port, reactor, home=config.home, name=config.id)
        embedded.setServiceParent(top)
        if address.username is None:
            # connect with the identity the embedded broker's credentials give (created on a first start)
            embedded.ready.addCallback(
                lambda _: _use_credentials(
                    runtime, embedded.credentials and credentials.identity(embedded.credentials, config.id)
                )
            )
        runtime.broker_ready = embedded.ready
    elif address.username is None:
        if found is None:
            log.warn(
                "no network credentials in {path}: connecting without; a broker that requires them refuses "
                "('oneos invite' on a machine of the network prints a token, 'oneos join TOKEN' here installs it)",
                path=str(credentials.path(config.home)),
            )
        else:
            _use_credentials(runtime, credentials.identity(found, config.id))
    runtime.setServiceParent(top)
    reactor.callWhenRunning(lambda: log.info("{block}", block=describe_config(config)))
    return top

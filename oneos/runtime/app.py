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
from oneos.security.credentials import Credentials, redact_url

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


def installed_credentials(config: Config) -> Credentials | None:
    """The credentials in the runtime's home (``credentials.json``), if its broker URL names none.

    Read once, by the plugin's Options, so that building the tree reads no file.
    """
    if parse_broker_url(config.pubsub).username is not None:
        return None
    return credentials.load(config.home)


def with_installed_identity(config: Config, found: Credentials | None) -> Config:
    """*config* with the id of the identity ``oneos join`` installed, when none was configured.

    A runtime's id is its identity's name (docs/security.md); a client
    identity (``USER@TAG``) cannot run a runtime.
    """
    if found is None or found.secret or not config.generated_id:
        return config
    if credentials.role(found.username) != "runtime":
        raise credentials.CredentialsError(
            f"{credentials.path(config.home)} holds the client identity {found.username!r}, which cannot run a "
            "runtime: ask for a runtime invitation ('oneos invite' without --user)"
        )
    return dataclasses.replace(config, id=found.username, generated_id=False)


def build_runtime(config: Config, reactor: Any = None, found: Credentials | None = None) -> service.MultiService:
    """The runtime tree: ``oneosd`` holding the optional embedded broker, then the runtime.

    The runtime connects as the identity named like its id (docs/security.md):
    derived from the network secret on the machine that holds it, else the one
    ``oneos join`` installed.  *found* is this home's credentials
    (:func:`installed_credentials`, with *config* from
    :func:`with_installed_identity`); the embedded broker creates them on a
    first start.  Nothing is read or opened here.

    docs/architecture.md draws the tree this returns (tests/unit/test_service_tree.py checks it).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from oneos.runtime.embedded import EmbeddedBroker
    from oneos.runtime.service import RuntimeService

    address = parse_broker_url(config.pubsub)
    if address.username is not None:
        found = None  # the URL's own credentials win
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

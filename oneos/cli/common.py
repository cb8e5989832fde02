"""Helpers shared by the ``oneos`` subcommands that talk to the network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oneos.config import load_config, oneos_home
from oneos.errors import OneOSError, PubSubUnavailable


def default_pubsub_url() -> str:
    """The broker named in ``$ONEOS_HOME/config.json``, else the embedded default."""
    try:
        return load_config(oneos_home()).pubsub
    except OneOSError:
        from oneos.config import DEFAULT_PUBSUB

        return DEFAULT_PUBSUB


def run_with_client(url: str, job: Callable[[Any, Any], Any], timeout: float = 5.0) -> Any:
    """Connect to the broker at *url*, run ``job(reactor, client)`` and return its result.

    Owns the reactor for a short-lived command: fails with a plain
    :class:`PubSubUnavailable` if the broker cannot be reached in *timeout*.
    """
    from oneos.reactor import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    from oneos.pubsub.client import PubSubClient

    client = PubSubClient(url, reactor, keepalive=10, max_delay=1.0)
    outcome: list[Any] = []

    @defer.inlineCallbacks
    def main() -> Any:
        client.startService()
        connected = client.whenConnected()
        timer = reactor.callLater(timeout, connected.cancel)
        try:
            yield connected
        except defer.CancelledError:
            raise PubSubUnavailable(
                f"cannot reach the broker at {client.address.url}: {client.last_error or 'no answer'} "
                "(is a OneOS runtime or broker running? see 'oneos grid' or 'twistd -n oneosd')"
            ) from None
        if timer.active():
            timer.cancel()
        result = yield job(reactor, client)
        return result

    def done(result: Any) -> None:
        outcome.append(result)
        d = client.stopService() if client.running else defer.succeed(None)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: main().addBoth(done))
    reactor.run()
    result = outcome[0] if outcome else None
    if isinstance(result, Failure):
        result.raiseException()
    return result


class OutputSink:
    """A transfer sink writing to a local binary stream (stdout/stderr).

    Flushes after every write so interleaved output from a remote program
    shows up as it is produced.
    """

    def __init__(self, out: Any) -> None:
        self.out = out

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        self.out.write(data)
        self.out.flush()
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        self.out.flush()
        return defer.succeed({})

    def abort(self) -> None:
        self.out.flush()

"""Helpers shared by the ``oneos`` subcommands that talk to the network.

Imports of the configuration, credentials and Twisted code are inside the
functions: a command imports this module at its start, and its ``--help``
should not wait for them (see oneos/cli/main.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from oneos.errors import OneOSError, PubSubUnavailable

if TYPE_CHECKING:
    from oneos.pubsub.address import BrokerAddress


def inline_callbacks(f: Callable[..., Any]) -> Callable[..., Any]:
    """Twisted's ``defer.inlineCallbacks``, applied when *f* is first called.

    A command module can decorate its generators with it without importing
    Twisted when the module is imported, so its ``--help`` stays fast.
    """
    import functools

    made: list[Callable[..., Any]] = []

    @functools.wraps(f)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not made:
            from twisted.internet import defer

            made.append(defer.inlineCallbacks(f))
        return made[0](*args, **kwargs)

    return call


def default_pubsub_url() -> str:
    """The broker this home's running runtime uses (flags included); else the one in config.json; else the default.

    The configuration code is imported only when no running runtime says
    (``oneos status`` pays for no more than it uses: see oneos/cli/statusreader.py).
    """
    from pathlib import Path

    from oneos.cli.quick import home
    from oneos.cli.shell import read_runtime_file

    running = read_runtime_file(Path(home())).get("pubsub")
    if running:
        return str(running)
    from oneos.config import DEFAULT_PUBSUB, load_config, oneos_home

    try:
        return load_config(oneos_home()).pubsub
    except OneOSError:
        return DEFAULT_PUBSUB


def credentials_path() -> Any:
    from oneos.config import oneos_home
    from oneos.security import credentials

    return credentials.path(oneos_home())


def cli_identity(home: Any) -> Any:
    """The identity ``oneos`` commands in *home* act as, or None (no credentials: anonymous).

    The machine's runtime identity when that is what ``credentials.json``
    holds (the machine's owner, trusted like the runtime); on the machine
    holding the network secret, its running runtime's identity (else
    ``oneos-admin``); a client identity (``alice@laptop``) as is.
    """
    from oneos.cli.shell import read_runtime_file
    from oneos.security import credentials
    from oneos.security.credentials import ADMIN_IDENTITY

    found = credentials.load(home)
    if found is None or not found.secret:
        return found
    running = str(read_runtime_file(home).get("id") or "")
    return credentials.identity(found, running if credentials.role(running) == "runtime" else ADMIN_IDENTITY)


def with_credentials(address: BrokerAddress) -> BrokerAddress:
    """*address* logging in as this home's identity (:func:`cli_identity`) when it names no user."""
    import dataclasses
    from pathlib import Path

    from oneos.cli.quick import home

    if address.username is not None:
        return address
    found = cli_identity(Path(home()))
    if found is None:
        return address
    return dataclasses.replace(address, username=found.username, password=found.password)


def broker_address(url: str) -> BrokerAddress:
    """Where the broker at *url* is and whom a command logs in as (as the Twisted client presents it)."""
    from oneos.pubsub.address import parse_broker_url

    return with_credentials(parse_broker_url(url))


def present_credentials(client: Any) -> None:
    """Have *client* log in as this home's identity (:func:`cli_identity`) when its URL names no user."""
    client.address = with_credentials(client.address)


def unreachable(address: BrokerAddress, why: str) -> PubSubUnavailable:
    """The error a command gives when the broker at *address* could not be reached (*why*: the last reason).

    One wording for both ways of reaching it (:func:`run_with_client` and
    oneos/cli/statusreader.py), with a hint at what to do.
    """
    if why in ("bad user name or password", "not authorised"):
        hint = (
            "this machine has no valid credentials for that network: run 'oneos invite' on one of its "
            "machines and 'oneos join TOKEN' here"
            if address.username is None
            else f"the credentials in {credentials_path()} are not this network's: 'oneos join TOKEN' "
            "installs the right ones"
        )
    elif "certificate" in why or "mqtts" in why or "TLS" in why:
        hint = (
            "the network's CA is in $ONEOS_HOME/tls/ca.pem after 'oneos join' of a TLS network's "
            "token; docs/security.md, 'Encryption'"
        )
    else:
        hint = "is a OneOS runtime or broker running? see 'oneos grid' or 'twistd -n oneosd'"
    return PubSubUnavailable(f"cannot reach the broker at {address.url}: {why} ({hint})")


def run_with_client(url: str, job: Callable[[Any, Any], Any], timeout: float = 5.0) -> Any:
    """Connect to the broker at *url*, run ``job(reactor, client)`` and return its result.

    Owns the reactor for a short-lived command: fails with a plain
    :class:`PubSubUnavailable` if the broker cannot be reached in *timeout*,
    and raises KeyboardInterrupt when a signal stopped the reactor first.
    """
    from oneos.reactor import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    from oneos.pubsub.client import PubSubClient

    client = PubSubClient(url, reactor, keepalive=10, max_delay=1.0)
    present_credentials(client)
    outcome: list[Any] = []

    @defer.inlineCallbacks
    def main() -> Any:
        client.startService()
        connected = client.whenConnected()
        timer = reactor.callLater(timeout, connected.cancel)
        try:
            yield connected
        except defer.CancelledError:
            raise unreachable(client.address, client.last_error or "no answer") from None
        if timer.active():
            timer.cancel()
        result = yield job(reactor, client)
        return result

    def done(result: Any) -> None:
        outcome.append(result)
        d = client.stopService() if client.running else defer.succeed(None)
        d.addBoth(lambda _: stop())

    def stop() -> None:
        from twisted.internet.error import ReactorNotRunning

        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a signal is stopping it already (the job ended while its shutdown ran)

    reactor.callWhenRunning(lambda: main().addBoth(done))
    reactor.run()
    if not outcome:
        # The reactor stopped before the job ended: a signal (Ctrl-C, SIGTERM) did it.  Not a result:
        # 'oneos status' interrupted while connecting must not print "no runtimes" and exit 0.
        raise KeyboardInterrupt
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


#: seconds a command waits for an election under way to end before it calls the kernel
ELECTION_WAIT = 5.0


def network_rpc(reactor: Any, client: Any, default_timeout: float = 5.0) -> Any:
    """An RPC client that knows, from the network's statuses, who serves what.

    Costs one broker round trip (the retained statuses and store record);
    afterwards a call to the file system or the scheduler fails at once with
    the reason when nobody serves it ("store host rt-a is down") instead of
    after a timeout.  The statuses stay subscribed, so the view follows the
    network.  When kernel runtimes are alive but none leads yet (runtimes
    that have just started, a leader that just died), it first waits up to
    :data:`ELECTION_WAIT` seconds for the election to end: what a user
    would otherwise be told to do ("try again in a few seconds").  Fires
    with the RPCClient.
    """
    import time

    from twisted.internet import defer

    from oneos.cli.status import judged_state
    from oneos.pubsub import topics
    from oneos.pubsub.messages import MalformedMessage
    from oneos.pubsub.rpc import RPCClient
    from oneos.runtime.netstore import StoreRecord, route_check
    from oneos.runtime.status import RuntimeStatus

    statuses: dict[str, RuntimeStatus] = {}
    record: list[StoreRecord] = []
    #: the view as judged when a status last arrived (recomputed then, not on every call)
    judged: list[list[RuntimeStatus]] = []
    #: fired when an election under way has ended
    electing: list[defer.Deferred] = []

    def view() -> list[RuntimeStatus]:
        if not judged:
            now = time.time()
            judged.append([s.with_(state=judged_state(s, now)) for s in statuses.values()])
        return judged[0]

    def election_under_way() -> bool:
        live = [s for s in view() if s.alive]
        return any(s.kernel for s in live) and not any(s.leader for s in live)

    def on_status(message: Any) -> None:
        rid = topics.runtime_from_status_topic(message.topic)
        if rid is None or not message.payload:
            return
        try:
            statuses[rid] = RuntimeStatus.decode(message.payload)
        except MalformedMessage:
            return
        judged.clear()
        if electing and not election_under_way():
            electing.pop().callback(None)

    def on_store(message: Any) -> None:
        try:
            record[:] = [StoreRecord.decode(message.payload)]
        except MalformedMessage:
            pass

    def settled(_: Any) -> Any:
        if not election_under_way():
            return None
        ended: defer.Deferred = defer.Deferred()
        electing.append(ended)

        def give_up() -> None:  # the calls then fail with the reason, as before the wait
            if electing:
                electing.pop().callback(None)

        timer = reactor.callLater(ELECTION_WAIT, give_up)
        return ended.addBoth(lambda _: timer.cancel() if timer.active() else None)

    def ready(_: Any) -> Any:
        return RPCClient(
            client,
            reactor,
            default_timeout=default_timeout,
            precheck=lambda target: route_check(target, view(), record[0] if record else None),
        )

    d = client.subscribe(topics.ALL_STATUS, on_status)
    d.addCallback(lambda _: client.subscribe(topics.NETWORK_STORE, on_store))
    d.addCallback(lambda _: client.barrier())
    d.addCallback(settled)
    return d.addCallback(ready)


class OutputSink:
    """A transfer sink writing to a local binary stream (stdout/stderr).

    Flushes after every write so interleaved output from a remote program
    shows up as it is produced.
    """

    def __init__(self, out: Any) -> None:
        self.out = out

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:
            # Our reader stopped early (`| head`): like a UNIX writer getting SIGPIPE, stop quietly.
            quiet_stdout()
            return defer.fail(ReaderGone("the local reader closed the pipe"))
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        try:
            self.out.flush()
        except BrokenPipeError:
            quiet_stdout()
        return defer.succeed({})

    def abort(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            quiet_stdout()


class ReaderGone(OneOSError):
    """Whoever reads our standard output stopped (a pipe into `head`)."""

    code = "EPIPE"


#: the exit status of a command whose reader went away (128 + SIGPIPE), as a UNIX writer's, said quietly
SIGPIPE_STATUS = 141


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so Python's exit-time flush does not complain about the closed pipe."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass

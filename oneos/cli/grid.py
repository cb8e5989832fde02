"""``oneos grid``: a broker and N runtimes on this machine, as separate processes.

The original OneOS shipped a docker-compose grid for trying a network on one
machine; this does the same without Docker.  Each runtime gets its own
``ONEOS_HOME`` under ``--dir``; every process's log lines are prefixed with its
name; Ctrl-C or SIGTERM stops them all (SIGTERM, then SIGKILL after a grace
period, each by its pid) and the command exits when they are gone.  So does
a closed standard output (``oneos grid | head -1``): with nobody reading
the logs the grid stops instead of running on unseen.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from oneos.config import oneos_home
from oneos.security import credentials
from oneos.security.credentials import ADMIN_IDENTITY
from oneos.twistd import twistd_command

SUMMARY = "start a broker and N runtimes on this machine (a local test grid); Ctrl-C stops all"


class Child(protocol.ProcessProtocol):
    """One process of the grid, its output prefixed with its name.

    *write* takes text for the grid's output and never raises (see
    :meth:`Grid.write`): a child's end must always be counted, or stopping
    the grid would wait for it forever.
    """

    def __init__(self, name: str, write: Callable[[str], None], width: int) -> None:
        self.name = name
        self.write = write
        self.prefix = f"{name:>{width}} | "
        self.buffer = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if lines:
            self.write("".join(self.prefix + line.decode("utf-8", "replace") + "\n" for line in lines))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        try:
            if self.buffer:
                self.outReceived(b"\n")
            self.exit_code = getattr(reason.value, "exitCode", None)
            signal_no = getattr(reason.value, "signal", None)
            how = f"signal {signal_no}" if signal_no else f"status {self.exit_code}"
            self.write(f"{'grid':>{len(self.prefix) - 3}} | {self.name} exited ({how})\n")
        finally:
            self.ended.callback(self.name)


@defer.inlineCallbacks
def wait_for_port(reactor: Any, port: int, deadline: float) -> Any:
    """Poll until something accepts TCP connections on 127.0.0.1:*port*."""
    from twisted.internet.task import deferLater

    while True:
        try:
            proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1).connect(
                protocol.Factory.forProtocol(protocol.Protocol)
            )
            proto.transport.loseConnection()
            return True
        except Exception:
            if reactor.seconds() > deadline:
                return False
            yield deferLater(reactor, 0.1, lambda: None)


class Grid:
    """Starts and stops the grid's processes."""

    def __init__(
        self,
        reactor: Any,
        directory: Path,
        runtimes: int,
        kernels: int,
        port: int,
        out: Any,
        store: str | None = None,
        ssh_port: int = 2222,
        desktop_port: int = 3000,
        on_output_closed: Callable[[], Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.directory = directory
        self.runtimes = runtimes
        self.kernels = kernels
        self.port = port
        self.out = out
        #: one tree for the whole grid: every runtime opens the same store, so it survives a leader's death
        self.store = store or f"sqlite:///{directory / 'fs.sqlite3'}"
        self.ssh_port = ssh_port
        self.desktop_port = desktop_port
        self.children: dict[str, tuple[Child, Any]] = {}
        self.width = max(4, len(f"rt-{runtimes}"))
        self.stopping = False
        #: our standard output was closed (its reader left): nothing more is written
        self.output_closed = False
        #: called once when that happens (the command stops the grid)
        self.on_output_closed = on_output_closed

    def write(self, text: str) -> None:
        """Write *text* to the grid's output; a closed output (``| head``) stops the grid, never raises."""
        if self.output_closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            from oneos.cli.common import quiet_stdout

            self.output_closed = True
            if self.out is sys.stdout:
                quiet_stdout()  # so the exit-time flush does not complain about the closed pipe either
            if self.on_output_closed is not None:
                self.on_output_closed()

    def spawn(self, name: str, argv: list[str], home: Path | None = None) -> Child:
        if self.stopping:
            raise GridStopped()
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            env["ONEOS_HOME"] = str(home)
        child = Child(name, self.write, self.width)
        transport = self.reactor.spawnProcess(child, argv[0], argv, env=env, path=str(self.directory))
        self.children[name] = (child, transport)
        return child

    @defer.inlineCallbacks
    def start(self) -> Any:
        self.directory.mkdir(parents=True, exist_ok=True)
        url = f"mqtt://127.0.0.1:{self.port}"
        self.note(f"starting a broker on {url} and {self.runtimes} runtime(s) under {self.directory}")
        # The broker (ONEOS_HOME = this home) checks identities with this home's network secret, created
        # on a first start; each runtime gets its own identity, named like it (docs/security.md).
        network, _ = credentials.create(oneos_home(), ADMIN_IDENTITY)
        for i in range(1, self.runtimes + 1):
            credentials.save(self.directory / f"rt-{i}", credentials.issue(network, f"rt-{i}", url))
        broker = self.spawn("psd", twistd_command("oneospsd", "--port", str(self.port), "--interface", "127.0.0.1"))
        up = yield wait_for_port(self.reactor, self.port, self.reactor.seconds() + 30)
        if self.stopping:
            return  # stopped (a signal) while the broker started: start no runtime
        if not up or broker.ended.called:
            raise SystemExit(f"oneos grid: the broker did not start on port {self.port} (in use? try --port)")
        for i in range(1, self.runtimes + 1):
            name = f"rt-{i}"
            kernel = "--kernel" if i <= self.kernels else "--no-kernel"
            ssh = f"tcp:{self.ssh_port + i - 1}:interface=127.0.0.1" if self.ssh_port else ""
            desktop = f"tcp:{self.desktop_port + i - 1}:interface=127.0.0.1" if self.desktop_port else ""
            self.spawn(
                name,
                twistd_command(
                    "oneosd",
                    "--id",
                    name,
                    "--pubsub",
                    url,
                    "--broker",
                    "external",
                    kernel,
                    "--store",
                    self.store,
                    "--ssh",
                    ssh,
                    "--desktop",
                    desktop,
                ),
                home=self.directory / name,
            )
        self.note(f"file tree: {self.store} (shared by every runtime)")
        if self.ssh_port:
            self.note(
                "shells: "
                + ", ".join(f"rt-{i} on port {self.ssh_port + i - 1}" for i in range(1, self.runtimes + 1))
                + f" (oneos user add NAME --pubsub {url}, then oneos shell --host 127.0.0.1 --port PORT -u NAME)"
            )
        if self.desktop_port:
            self.note(
                f"desktops: http://127.0.0.1:{self.desktop_port}/ (rt-1) to port {self.desktop_port + self.runtimes - 1} "
                "(log in as a user of 'oneos user add')"
            )
        self.note(f"grid running; try 'oneos status --pubsub {url}'; Ctrl-C stops it")

    def note(self, text: str) -> None:
        self.write(f"{'grid':>{self.width}} | {text}\n")

    def stop(self, grace: float = 10.0) -> defer.Deferred:
        """SIGTERM every process, SIGKILL those still there after *grace* seconds."""
        self.stopping = True
        waits = []
        for _name, (child, transport) in self.children.items():
            if child.ended.called:
                continue
            waits.append(child.ended)
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass

        def kill_rest() -> None:
            for child, transport in self.children.values():
                if not child.ended.called:
                    try:
                        transport.signalProcess("KILL")
                    except Exception:
                        pass

        timer = self.reactor.callLater(grace, kill_rest)
        d = defer.DeferredList(waits)
        d.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return d


class GridStopped(Exception):
    """The grid is stopping: it starts nothing more."""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos grid", description=SUMMARY)
    parser.add_argument("--runtimes", type=int, default=3, help="how many runtimes (default 3)")
    parser.add_argument("--kernels", type=int, default=None, help="how many of them may host the kernel (default all)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where each runtime's ONEOS_HOME goes (default $ONEOS_HOME/grid)"
    )
    parser.add_argument("--port", type=int, default=1883, help="broker port on 127.0.0.1 (default 1883)")
    parser.add_argument(
        "--store", help="the grid's file store URL (default: one SQLite file under --dir, shared by every runtime)"
    )
    parser.add_argument(
        "--ssh-port",
        type=int,
        default=2222,
        metavar="BASE",
        help="rt-N's SSH shell listens on BASE+N-1 on 127.0.0.1 (default 2222; 0 = no shells)",
    )
    parser.add_argument(
        "--desktop-port",
        type=int,
        default=3000,
        metavar="BASE",
        help="rt-N's web desktop listens on BASE+N-1 on 127.0.0.1 (default 3000; 0 = no desktops)",
    )
    args = parser.parse_intermixed_args(argv)
    if not 1 <= args.runtimes <= 500:
        parser.error("--runtimes must be between 1 and 500")
    kernels = args.runtimes if args.kernels is None else args.kernels
    if not 0 <= kernels <= args.runtimes:
        parser.error("--kernels must be between 0 and --runtimes")
    from oneos.reactor import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import reactor

    directory = (args.dir or oneos_home() / "grid").resolve()
    if args.store:
        from oneos.config import validate_store

        validate_store(args.store)
    stopping = {"asked": False}

    def stop_reactor() -> None:
        # once: a second stop (a closed output while a signal stops us) would be an error of its own
        if not stopping["asked"] and reactor.running:
            stopping["asked"] = True
            reactor.stop()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: stopping.update(asked=True))
    grid = Grid(
        reactor,
        directory,
        args.runtimes,
        kernels,
        args.port,
        sys.stdout,
        store=args.store,
        ssh_port=args.ssh_port,
        desktop_port=args.desktop_port,
        on_output_closed=stop_reactor,
    )
    status = {"code": 0}

    def failed(f: Any) -> None:
        if f.check(GridStopped):
            return  # a signal or a closed output stopped the grid while it started: not a failure
        if f.check(SystemExit):
            print(str(f.value), file=sys.stderr)
        else:
            print(f"oneos grid: {f.getErrorMessage()}", file=sys.stderr)
        status["code"] = 1
        stop_reactor()

    reactor.callWhenRunning(lambda: grid.start().addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", grid.stop)
    reactor.run()  # with signal handlers (the default): Ctrl-C and SIGTERM stop it
    return status["code"]

"""The runtime service: one per machine, the root of a runtime's tree.

Its children are declared in one place, :meth:`RuntimeService.__init__`,
grouped by where they run:

* on every runtime: ``transfer`` (streams), ``pubsub``, ``membership``,
  ``agents``, ``devices`` (this machine's I/O devices), ``gateway``
  (programs open devices by name through it), ``rpc`` (this
  runtime's own RPC target, on the bus and a direct channel), ``election``,
  ``store`` (agrees on the network's store) and the front doors ``shell``
  and ``desktop``;
* only on the kernel leader: the children of ``kernel`` (``scheduler``);
* only on the runtime that serves the network's store: the children of
  ``fs`` (the file-system service).

Each child's constructor names what it uses; nothing is found through a
registry or a runtime object passed around.  ``makeService`` only builds
the tree; :meth:`startService` starts the children in the order their
dependencies need (listen, reach the broker, agree on the store, serve
this runtime's own target, join, then the roles and the front doors) and
:meth:`stopService` stops them one by one in reverse.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from typing import Any, Never

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos import __version__, transfer
from oneos.agents.client import CLIENT_METHODS as AGENT_CLIENT_METHODS
from oneos.agents.host import AgentHost
from oneos.agents.manager import AgentManager, agent_account
from oneos.config import Config, resolve_listen
from oneos.desktop.context import DesktopContext
from oneos.desktop.service import DesktopService
from oneos.desktop.sessions import SessionStore
from oneos.devices.client import CLIENT_METHODS as DEVICE_CLIENT_METHODS
from oneos.devices.gateway import DeviceGateway
from oneos.devices.service import DeviceService
from oneos.errors import OneOSError, StaleEpoch, describe
from oneos.fs.client import FSClient
from oneos.fs.service import FileSystemService
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.direct import DirectServer
from oneos.pubsub.rpc import RPCClient, RPCServer, Unanswered
from oneos.runtime.election import Election
from oneos.runtime.host import HostSample, HostStats, find_interpreters, guess_address
from oneos.runtime.kernel import KernelHost, RoleHost
from oneos.runtime.membership import Membership
from oneos.runtime.netstore import machine_id, recall_epoch, remember_epoch, route_check
from oneos.runtime.status import DeviceStatus, RuntimeStatus
from oneos.runtime.storehost import StoreHost
from oneos.scheduler.restarts import RestartPolicy
from oneos.scheduler.service import SchedulerService
from oneos.security import tls
from oneos.security.credentials import strip_userinfo
from oneos.shell.service import ShellService
from oneos.shell.session import Grid
from oneos.transfer import TransferServer

log = Logger()

#: Where a runtime tells the ``oneos`` command on its machine how to reach it (removed at a clean stop).
RUNTIME_FILE = "runtime.json"


def _default_fatal(error: BaseException) -> None:
    log.critical("runtime cannot go on: {error}", error=describe(error))


class RPCService(service.Service):
    """This runtime's own RPC target (ping, status, members, the agents' and devices' methods) as a named service.

    The target is served on the bus and, given the runtime's transfer
    server, on a direct TCP channel too (:mod:`oneos.pubsub.direct`),
    listening on the interface the runtime's streams listen on, with TLS
    when they use TLS, as the file-system service does.  Why: the
    scheduler's commands to other runtimes (a spawn: the request and its
    answer) then cross no broker.  *heard* says whether this runtime still
    hears the broker (the lease): while it does not, the channel answers
    nothing and the server cuts it (see :class:`ChannelTarget`).
    """

    name = "rpc"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        server: RPCServer,
        transfer: TransferServer | None = None,
        reactor: Any = None,
        heard: Callable[[], bool] | None = None,
    ) -> None:
        self.server = server
        self.transfer = transfer
        self.reactor = reactor
        self.heard = heard
        #: the target on a direct channel; made at start, once the transfer server listens (and knows its TLS)
        self.direct: DirectServer | None = None
        self.started: defer.Deferred = defer.succeed(None)

    def startService(self) -> None:
        super().startService()
        # fires once the bus's requests reach the server and the channel listens (or could not: then the
        # callers keep using the bus); a ticket asked for before the channel listens would send its caller
        # to the bus for minutes (oneos.pubsub.direct.NO_CHANNEL_RETRY)
        listening = self._listen_direct()  # never fails: a channel that cannot listen is only logged
        self.started = self.server.start().addCallback(lambda _: listening)

    def _listen_direct(self) -> defer.Deferred:
        """Serve the target on a direct channel too, beside the runtime's streams (DirectServer.listen_beside)."""
        if self.transfer is None or getattr(self.transfer, "port", None) is None or self.reactor is None:
            return defer.succeed(None)
        target = ChannelTarget(self.server, self.heard or (lambda: True))
        self.direct = DirectServer(self.reactor, target, tls=self.transfer.tls)
        return self.direct.listen_beside(self.transfer)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        stopped = self.server.stop()
        direct, self.direct = self.direct, None
        return stopped if direct is None else direct.stop_beside(stopped)


class ChannelTarget:
    """The runtime's RPC target as its direct channel serves it: the bus's checks, and silence off the broker.

    Every request runs through :meth:`RPCServer.handle`, as the bus's do
    (the caller's rights, the epoch fence, the deadline).  One more rule
    holds on the channel only: while this runtime has not heard the broker
    within the lease, it answers nothing there (``Unanswered``: the caller
    asks the bus), and the direct server's watch cuts the channels
    (:meth:`oneos.pubsub.direct.DirectServer._check`).  Why: over the bus,
    a runtime cut off hears nothing, and a command its caller gave up on
    is never delivered late; bytes on a TCP connection are, once the
    network heals, perhaps before this runtime hears of a newer leadership
    term that would refuse them.  The bus path keeps its own rules
    unchanged: a runtime whose ping answers are slow is not made deaf to
    the requests the broker does deliver.
    """

    def __init__(self, server: RPCServer, heard: Callable[[], bool]) -> None:
        self.server = server
        self.heard = heard
        self.target = server.target
        #: what the direct server's watch asks: the lease, then the server's own guard
        self.guard: Callable[[str, dict[str, Any]], None] | None = self._guard

    @property
    def direct(self) -> Any:
        return self.server.direct

    @direct.setter
    def direct(self, value: Any) -> None:
        self.server.direct = value  # the server answers ``rpc_ticket`` over the bus with it

    def _guard(self, method: str, meta: dict[str, Any]) -> None:
        """The server's guard, after the lease."""
        if not self.heard():
            raise Unanswered("no word from the broker within the lease")
        if self.server.guard is not None:
            self.server.guard(method, meta)

    def handle(self, caller: str, method: str, args: dict[str, Any], meta: dict[str, Any]) -> defer.Deferred:
        if not self.heard():
            log.info("not answering {method} on the direct channel: no word from the broker", method=method)
            return defer.succeed(None)
        return self.server.handle(caller, method, args, meta)


class RuntimeService(service.MultiService):
    """A OneOS runtime."""

    name = "runtime"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    #: made in __init__ after the kernel, whose scheduler guard calls it
    election: Election

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        on_fatal: Callable[[BaseException], Any] = _default_fatal,
        settle: float = 0.5,
        stats: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.on_fatal = on_fatal
        self.instance = uuid.uuid4().hex
        self.started_at = time.time()
        self.address = config.address
        self.machine = machine_id()
        #: where the CPU and memory figures come from (``sample()``): psutil's HostStats, made at start,
        #: unless given (the cluster harness gives figures that do not depend on the machine running it)
        self._stats: Any = stats
        self._interpreters: tuple[str, ...] = ()
        #: fires when the broker may be tried (the embedded one is up)
        self.broker_ready: defer.Deferred | None = None
        self.ready: defer.Deferred = defer.Deferred()
        rid = config.id

        # -- on every runtime ---------------------------------------------------------
        self.transfer = TransferServer(reactor, "")  # endpoint set at start, once the address is known
        # an mqtts:// broker is checked against this home's network CA (tls/ca.pem) when there is one
        self.client = PubSubClient(config.pubsub, reactor, keepalive=config.keepalive, ca=tls.ca_path(config.home))
        self.client.setName("pubsub")
        self.rpc = RPCClient(self.client, reactor, precheck=self._precheck)
        self.store: StoreHost | None = None
        self.shell: ShellService | None = None
        self.membership = Membership(self.client, self.rpc, reactor, self.describe, interval=config.stats_interval)
        fs = FSClient(self.rpc, reactor)
        # programs open devices by name through it (oneos_device); each agent gets a token from it
        self.gateway = DeviceGateway(reactor, rid, self.rpc, self.membership.live)
        self.agents = AgentHost(
            rid,
            reactor,
            self.client,
            self.transfer,
            lambda user: fs if user is None else FSClient(self.rpc, reactor, user=user),
            AgentManager(
                reactor,
                rid,
                memory_limit_mb=config.memory_mb,
                account=agent_account(config.run_as),
                program_env=self.gateway,
            ),
            home=config.home,
            interval=config.stats_interval,
        )
        # the I/O devices this machine exposes (config.devices); a device's state change is published at once
        self.devices = DeviceService(rid, reactor, self.transfer, config.devices, on_change=self._devices_changed)
        self.rpc_service = RPCService(
            RPCServer(
                self.client,
                rid,
                {
                    "ping": self._ping,
                    "status": self._status,
                    "members": self._members,
                    **self.agents.handlers(),
                    **self.devices.handlers(),
                },
                guard=self._guard,
                # a client identity may read its own programs' output and feed their input, and use the
                # devices (a user's machine reads a camera, sets a pin); nothing else here
                clients=("ping", "status", *AGENT_CLIENT_METHODS, *DEVICE_CLIENT_METHODS),
            ),
            # also on a direct channel beside the streams (the scheduler's commands skip the broker)
            self.transfer,
            reactor,
            heard=lambda: self.election.lease_valid(),
        )

        # -- only on the kernel leader ---------------------------------------------------
        self.kernel = KernelHost(
            self.client,
            self.membership,
            {
                "scheduler": lambda: SchedulerService(
                    self.client,
                    self.rpc,
                    self.membership,
                    reactor,
                    guard=self.election.guard,
                    policy=RestartPolicy(disconnect_grace=config.disconnect_grace),
                    transfer=self.transfer,
                ),
            },
            guard=lambda method, meta: self.election.guard(method, meta),
        )
        lease = float(config.keepalive)
        self.election = Election(
            self.membership,
            self.kernel,
            reactor,
            is_kernel=config.kernel,
            settle=settle,
            lease=lease,
            margin=max(0.5, lease / 4),
        )

        # -- only on the runtime that serves the network's store ------------------------------
        self.fs_role = RoleHost(
            "fs",
            {
                "fs": lambda: FileSystemService(
                    self._store_url(), self.client, self.transfer, reactor, guard=self._lease_guard
                ),
            },
        )
        self.store = StoreHost(
            self.client,
            self.membership,
            self.fs_role,
            reactor,
            me=rid,
            configured=config.store,
            local_store=config.local_store,
            kernel=config.kernel,
            machine=self.machine,
            home=config.home,
        )

        # -- front doors, on every runtime ----------------------------------------------------
        grid = Grid(fs, self.rpc, self.client, reactor)
        self.shell = ShellService(
            grid, FSClient(self.rpc, reactor, system=True), "", config.listen.get("telnet", ""), config.home, reactor
        )
        # the web desktop: the shell's users and checker, the same grid; its endpoint is set at start
        self.desktop = DesktopService(
            DesktopContext(
                reactor=reactor,
                runtime_id=rid,
                home=config.home,
                sessions=SessionStore(reactor.seconds),
                shell=self.shell,
                grid=grid,
                membership=self.membership,
                max_upload=config.desktop.max_upload,
            ),
            "",
        )

        self.membership.max_epoch = recall_epoch(config.home)
        self.membership.on_epoch(lambda epoch: remember_epoch(config.home, epoch))
        for child in (
            self.transfer,
            self.client,
            self.membership,
            self.agents,
            self.devices,
            self.gateway,
            self.rpc_service,
            self.kernel,
            self.fs_role,
            self.election,
            self.store,
            self.shell,
            self.desktop,
        ):
            child.setServiceParent(self)

    # -- what this runtime tells the others ------------------------------------------------
    @property
    def id(self) -> str:
        return self.config.id

    def describe(self) -> RuntimeStatus:
        """This runtime's status as of now (stats sampled on every call)."""
        # no sampler before startService: RuntimeStatus's defaults stand
        stats: HostSample | dict[str, Never] = self._stats.sample() if self._stats is not None else {}
        store = self.store.status_fields() if self.store is not None else {}
        return RuntimeStatus(
            id=self.config.id,
            instance=self.instance,
            address=self.address,
            kernel=self.config.kernel,
            memory_limit_mb=self.config.memory_mb,
            tags=self.config.tags,
            interpreters=self._interpreters,
            agents=self.agents.count if hasattr(self, "agents") else 0,
            agents_memory_mb=self.agents.agents_memory_mb() if hasattr(self, "agents") else 0.0,
            started_at=self.started_at,
            interval=self.config.stats_interval,
            services={"version": __version__},
            stream=self.transfer.stream_address,
            stream_tls=self.transfer.tls is not None,
            ssh=self.shell.ssh_address if self.shell is not None else "",
            desktop=self.desktop.url if hasattr(self, "desktop") else "",
            pid=os.getpid(),
            devices=tuple(DeviceStatus(**entry) for entry in self.devices.status()) if hasattr(self, "devices") else (),
            **store,
            **stats,
        )

    def _devices_changed(self) -> None:
        """A device failed or recovered: tell the network now rather than at the next interval."""
        if self.membership.joined and self.membership.running:
            self.membership.publish()

    def _store_url(self) -> str:
        assert self.store is not None and self.store.record is not None
        return self.store.record.url

    def _precheck(self, target: str) -> None:
        """Fail a call at once when the membership says nobody serves *target*."""
        if self.membership.joined and self.store is not None:
            route_check(target, self.membership.live(), self.store.record)

    def _guard(self, method: str, meta: dict[str, Any]) -> None:
        """The guard of this runtime's RPC target: silent until it has joined, then :meth:`_fence`.

        The target is served before the runtime announces itself (see
        :meth:`_boot`), but until the membership has checked that no live
        runtime uses our id, a request for that id is another runtime's:
        above all the check's own ``ping``, which only that other runtime
        may answer.
        """
        if not self.membership.joined:
            raise Unanswered("not a member of the network yet")
        self._fence(method, meta)

    def _fence(self, method: str, meta: dict[str, Any]) -> None:
        """Refuse a command sent by the scheduler of an older leadership term (a leader that lost its lease)."""
        epoch = meta.get("epoch")
        if not isinstance(epoch, int):
            return  # not a kernel command (a client attaching to output, a ping)
        if epoch < self.membership.max_epoch:
            raise StaleEpoch(
                f"{method} refused: it comes from leadership term {epoch}, but term "
                f"{self.membership.max_epoch} has begun"
            )
        self.membership.note_epoch(epoch)

    def _lease_guard(self, method: str, meta: dict[str, Any]) -> None:
        """A role's services answer only while this runtime hears the broker (see Election.lease_valid)."""
        if not self.election.lease_valid():
            raise Unanswered("no word from the broker within the lease")

    def _ping(self) -> dict[str, Any]:
        return {"id": self.id, "instance": self.instance}

    def _members(self) -> list[str]:
        """The runtimes this one sees alive (benchmarks ask every runtime)."""
        return [s.id for s in self.membership.live()]

    def _status(self) -> dict[str, Any]:
        return {"status": self.describe().encode().decode(), "leading": self.election.leading}

    # -- start and stop -------------------------------------------------------------------
    def startService(self) -> None:
        # Not MultiService.startService: the children start in _boot, each once what it needs is there.
        service.Service.startService(self)
        if self.agents.manager.account is not None:
            # Programs run as another account: the runtime's home (its keys, its config) is not theirs to read.
            try:
                self.config.home.mkdir(parents=True, exist_ok=True)
                st = self.config.home.stat()
                if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH) or st.st_uid != os.geteuid():
                    # a shared directory (ONEOS_HOME=/tmp) or someone else's: making it 0700 would lock
                    # everybody else out of it
                    log.warn(
                        "ONEOS_HOME {home} is a shared directory or not this account's: left as it is; "
                        "programs may read what the runtime keeps there (give the runtime its own home)",
                        home=str(self.config.home),
                    )
                else:
                    os.chmod(self.config.home, 0o700)
            except OSError as e:
                log.warn("cannot make {home} private: {error}", home=str(self.config.home), error=e)
        if self._stats is None:
            self._stats = HostStats()
        self._interpreters = find_interpreters()
        if not self.address:
            self.address = guess_address(self.client.address.host)
        listen = resolve_listen(self.config.listen, self.config.pubsub, self.address)
        self.transfer.endpoint = listen["pipe"] or "tcp:0:interface=127.0.0.1"
        self.transfer.advertise = self.address
        assert self.shell is not None
        self.shell.ssh_endpoint = listen.get("ssh", "")
        self.desktop.endpoint = listen.get("desktop", "")
        self.desktop.advertise = self.address
        self._boot().addErrback(self._fatal)

    @defer.inlineCallbacks
    def _boot(self) -> Any:
        self._use_tls()
        self.transfer.startService()
        try:
            yield self.transfer.listen()
        except Exception as e:
            raise OneOSError(f"cannot listen for streams on {self.transfer.endpoint}: {describe(e)}") from None
        if self.broker_ready is not None:
            yield self.broker_ready
        self.client.startService()
        yield self.client.whenConnected()
        assert self.store is not None and self.shell is not None
        yield self.store.join()
        self.agents.startService()
        self.devices.startService()
        self.gateway.startService()
        try:
            yield self.gateway.listen()
        except Exception as e:
            raise OneOSError(f"cannot listen for programs' device requests: {describe(e)}") from None
        # Our RPC target is served (on the bus and its direct channel) before the membership announces us:
        # the others call us as soon as they see us alive (the scheduler places a spawn here), and a request
        # sent before our subscription was granted would be lost (its caller waits out its timeout).  Until
        # the membership has joined, the target answers nothing (_guard): the duplicate-id check's ping, sent
        # meanwhile, is for another runtime with our id.
        self.rpc_service.startService()
        yield self.rpc_service.started
        yield self.membership.join()
        self.membership.on_conflict(self._fatal)
        self.kernel.startService()
        self.fs_role.startService()
        self.election.startService()
        self.store.startService()
        self.shell.startService()
        self.desktop.startService()
        log.info(
            "runtime {id} joined the network at {url} ({n} live runtime(s)); streams at {stream}",
            id=self.id,
            url=self.client.address.url,
            n=len(self.membership.live()),
            stream=self.transfer.stream_address,
        )
        self.ready.callback(self)
        defer.gatherResults([self.shell.opened, self.desktop.opened]).addCallback(lambda _: self._opened())

    def _use_tls(self) -> None:
        """A home with a machine certificate (tls/cert.pem) is a member of a TLS network: streams use TLS."""
        home = self.config.home
        if tls.ca_path(home).exists():
            transfer.use_client_trust(tls.load_trust(home))  # streams this runtime opens check peers with it
        if tls.has_certificate(home):
            self.transfer.tls = tls.MachineTLS.load(home)
            log.info(
                "streams use TLS with {cert} (network CA {ca})",
                cert=str(tls.cert_path(home)),
                ca=str(tls.ca_path(home)),
            )

    def _opened(self) -> None:
        """The front doors listen: tell the network, and the ``oneos`` command on this machine."""
        if self.membership.joined:
            self.membership.publish()
        # never a password from the URL: commands log in with credentials.json
        info = {
            "id": self.id,
            "pid": os.getpid(),
            "pubsub": strip_userinfo(self.config.pubsub),
            "stream": self.transfer.stream_address,
            "ssh": self.shell.ssh_address if self.shell is not None else "",
            # the desktop's URL ('' when off): 'oneos desktop' prints a one-time login on it
            "desktop": self.desktop.url,
        }
        path = self.config.home / RUNTIME_FILE
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(info) + "\n")
            tmp.replace(path)
        except OSError as e:
            log.warn("cannot write {path}: {error}", path=str(path), error=e)

    def _fatal(self, error: Any) -> None:
        value = error.value if isinstance(error, Failure) else error
        if isinstance(error, Failure) and not isinstance(value, OneOSError):
            log.failure("runtime failed", error)
        self.on_fatal(value)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop the children one by one, last started first, so membership says 'left' while still connected."""
        service.Service.stopService(self)
        self.rpc.cancel_all()
        for child in reversed(list(self)):
            if child is self.client:
                continue  # last of all, after everything that publishes on the way out
            if child.running:
                try:
                    yield defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {name} failed", name=child.name)
        if self.client.running:
            yield self.client.stopService()
        try:
            (self.config.home / RUNTIME_FILE).unlink()
        except OSError:
            pass

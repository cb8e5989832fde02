"""The shell's front door: the ``shell`` service of every runtime, serving SSH and telnet.

:class:`ShellService` opens the listeners (``listen.ssh``, and
``listen.telnet`` when set) once the tree can be read, and gives each login
a session: its interpreter (:meth:`ShellService.new_interpreter`), whose file
operations are the user's, and its home (:meth:`ShellService.prepare`).  One
cred ``Portal`` serves both protocols, so a user is the same user however
they connect; :class:`ShellRealm` gives an SSH login an avatar
(:mod:`oneos.shell.ssh`) and a telnet login its shell (:mod:`oneos.shell.telnet`).
Checkers (:mod:`oneos.shell.users`): SSH public keys from
``/etc/oneos/authorized_keys`` and scrypt password hashes from
``/etc/oneos/users.json`` in the OneOS tree; there is no anonymous access.

Every runtime runs this front door (a session only needs RPC to the kernel
services); the host key is the network's, kept in the tree
(``/etc/oneos/ssh_host_key``, ed25519), so clients pin one key whichever
runtime they reach.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.cred import portal as cred_portal
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from oneos.errors import describe
from oneos.fs import paths
from oneos.fs.permissions import ADMIN
from oneos.fs.store import DEFAULT_OWNER, DIR_PERM
from oneos.lazyfactory import LazyFactory
from oneos.shell.hostkey import network_host_key
from oneos.shell.session import Grid, Session
from oneos.shell.throttle import LOGIN_GRACE, LoginThrottle
from oneos.shell.users import FailureDelay, PasswordChecker, PublicKeyChecker, TreeUsers, migrate_home

if TYPE_CHECKING:
    from twisted.conch.ssh import factory, keys

    from oneos.shell.interpreter import Interpreter

# The sessions' code (conch's SSH transport, telnet, the interpreter) is imported when a first
# connection comes (oneos.lazyfactory): a runtime nobody logs in to never loads it.

log = Logger()

#: A user's home (/home/USER) is the user's and private.
HOME_PERM = 0o700
#: How long a front door waits between tries when the tree cannot be reached at start (doubling up to the max).
RETRY_DELAY, RETRY_MAX = 0.2, 5.0


@implementer(cred_portal.IRealm)
class ShellRealm:
    """Gives each login an SSH avatar or a telnet protocol, both bound to the same shell."""

    def __init__(self, shell: ShellService) -> None:
        self.shell = shell

    def requestAvatar(
        self, avatar_id: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> tuple[type[Interface], object, Callable[[], None]]:
        from twisted.conch.interfaces import IConchUser
        from twisted.conch.telnet import ITelnetProtocol

        from oneos.shell.ssh import ShellAvatar
        from oneos.shell.telnet import TelnetShell

        user = avatar_id.decode("utf-8") if isinstance(avatar_id, bytes) else str(avatar_id)
        if IConchUser in interfaces:
            a = ShellAvatar(user, self.shell)
            return IConchUser, a, lambda: None
        if ITelnetProtocol in interfaces:
            return ITelnetProtocol, TelnetShell(user, self.shell), lambda: None
        raise NotImplementedError("the OneOS shell offers SSH and telnet only")


class ShellService(service.Service):
    """A front door: SSH (and telnet when configured) on this runtime, the shell for each session.

    Every runtime runs one (a session only needs RPC to the kernel services),
    so a user connects to the nearest runtime and a leader change never moves
    or drops the door.  Users, keys and the host key come from the tree
    (:mod:`oneos.shell.users`), so every door knows the same people and shows
    the same host key; until the tree can be reached the door waits, saying
    why in the log, and opens as soon as it can.
    """

    name = "shell"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        grid: Grid,
        system_fs: Any,
        ssh: str,
        telnet: str,
        home: Path,
        reactor: Any,
        login_grace: float | None = LOGIN_GRACE,
    ) -> None:
        self.grid = grid
        #: seconds a connection has to log in before it is closed (None: no limit)
        self.login_grace = login_grace
        #: a file-system client that may reach the kernel's area (users, keys, host key)
        self.system_fs = system_fs
        self.ssh_endpoint = ssh
        self.telnet_endpoint = telnet
        self.home = Path(home)
        self.reactor = reactor
        self.ports: list[Any] = []
        self.interpreters: set[Interpreter] = set()
        self.delay = FailureDelay(reactor)
        self.throttle = LoginThrottle(reactor)
        users = TreeUsers(system_fs)
        self.portal = cred_portal.Portal(
            ShellRealm(self), [PublicKeyChecker(users, self.home, self.delay), PasswordChecker(users, self.delay)]
        )
        #: fires once the doors listen (or failed to)
        self.opened: defer.Deferred = defer.Deferred()
        self._retry: Any = None
        self._delay = RETRY_DELAY
        #: host:port of the SSH door once it listens
        self.ssh_address = ""

    # -- sessions -------------------------------------------------------------------------------
    def new_interpreter(self, user: str, out: Any, err: Any) -> Interpreter:
        """A session's interpreter: its file operations are the user's, checked against owners and modes."""
        from oneos.shell.interpreter import Interpreter

        interp = Interpreter(Session(user, home=paths.join("/home", user)), self.grid.for_user(user), out, err)
        self.interpreters.add(interp)
        return interp

    def forget(self, interp: Interpreter) -> None:
        self.interpreters.discard(interp)

    def prepare(self, interp: Interpreter) -> defer.Deferred:
        """Make the user's home (/home/USER, the user's, mode 0700) on first login; fall back to / if the store is down.

        The kernel's client makes it (a user may not write /home).  A home an
        older OneOS made (root's, 0755) is handed to its user the same way.
        """
        session = interp.session
        user = session.user

        @defer.inlineCallbacks
        def make() -> Any:
            st = yield self.grid.fs.mkdir(session.home, parents=True, exist_ok=True, owner=user, perm=HOME_PERM)
            if user != ADMIN and (st.owner, st.mode) == (DEFAULT_OWNER, DIR_PERM):
                yield self.grid.fs.chown(session.home, user)
                yield self.grid.fs.chmod(session.home, HOME_PERM)
                log.info("home {home} handed to {user} (mode 0700)", home=session.home, user=user)

        def failed(f: Failure) -> None:
            log.warn("cannot make home {home}: {e}", home=session.home, e=f.getErrorMessage())
            session.home = "/"
            session.env["HOME"] = "/"
            session.set_cwd("/")

        return make().addCallbacks(lambda _: None, failed)

    # -- the listeners ----------------------------------------------------------------------------
    def ssh_factory(self, key: keys.Key) -> factory.SSHFactory:
        from oneos.shell.ssh import ssh_factory

        return ssh_factory(self.portal, key, self.login_grace, self.reactor, self.throttle)

    def telnet_factory(self) -> protocol.ServerFactory:
        from oneos.shell.telnet import telnet_factory

        return telnet_factory(self.portal, self.login_grace, self.reactor)

    def startService(self) -> None:
        super().startService()
        if not self.ssh_endpoint and not self.telnet_endpoint:
            self.opened.callback(None)
            return
        self._open()

    def _open(self) -> None:
        self._retry = None
        d = defer.Deferred.fromCoroutine(self._prepare_and_listen())

        def failed(f: Failure) -> None:
            if not self.running:
                return
            if self._delay >= 1.0:  # the first short waits are the normal start-up race; no need to alarm
                log.warn(
                    "shell not serving yet: {error}; trying again in {delay:.0f}s",
                    error=describe(f.value),
                    delay=self._delay,
                )
            self._retry = self.reactor.callLater(self._delay, self._open)
            self._delay = min(RETRY_MAX, self._delay * 2)

        d.addErrback(failed)

    async def _prepare_and_listen(self) -> None:
        for line in await migrate_home(self.system_fs, self.home):
            log.info("moved shell users into the tree: {what}", what=line)
        key: keys.Key | None = await network_host_key(self.system_fs, self.home) if self.ssh_endpoint else None
        if not self.running:
            return

        def ssh() -> protocol.Factory:
            assert key is not None  # read above: there is an SSH endpoint
            return self.ssh_factory(key)

        for name, endpoint, make in (
            ("ssh", self.ssh_endpoint, ssh),
            ("telnet", self.telnet_endpoint, self.telnet_factory),
        ):
            if not endpoint:
                continue
            try:
                port = await serverFromString(self.reactor, endpoint).listen(
                    LazyFactory(make, f"the shell's {name} door")
                )
            except Exception as e:
                # Another program holds the port: say so plainly; the runtime keeps going without this door.
                log.error("shell cannot serve {name} on {ep}: {e}", name=name, ep=endpoint, e=describe(e))
                continue
            self.ports.append(port)
            host = port.getHost()
            if name == "ssh":
                self.ssh_address = f"{host.host}:{host.port}"
            log.info("shell serving {name} on {host}:{port}", name=name, host=host.host, port=host.port)
        if not self.opened.called:
            self.opened.callback(None)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for interp in list(self.interpreters):
            interp.hangup()
        ports, self.ports = self.ports, []
        for port in ports:
            yield defer.maybeDeferred(port.stopListening)

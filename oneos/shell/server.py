"""The shell kernel service: SSH (and optionally telnet) in front of the interpreter.

One cred ``Portal`` serves both protocols, so a user is the same user
however they connect.  Checkers (:mod:`oneos.shell.users`): SSH public keys
from ``$ONEOS_HOME/authorized_keys`` and scrypt password hashes from
``$ONEOS_HOME/users.json``; there is no anonymous access.

Every SSH session channel gets its own :class:`Session` (cwd, variables,
history, jobs) and :class:`Interpreter`:

* ``exec`` requests (``ssh host 'ls /'``, ``oneos -c LINE``) run one line;
  stdout goes to the channel, stderr to its extended-data stream, and the
  line's status comes back as the SSH ``exit-status``;
* ``shell`` requests with a pty get an interactive terminal (twisted.conch
  insults/recvline: line editing, history with the arrow keys, tab
  completion of built-ins and paths, Ctrl-C stops the foreground agents,
  Ctrl-D on an empty line logs out);
* ``shell`` requests without a pty (``echo ls | ssh host``) read lines and run
  them in order, like ``sh`` reading a script.

When a client vanishes the channel closes and every agent its session
started is stopped.  The host key is made on first start
(``$ONEOS_HOME/ssh_host_key``, ed25519) and kept, so clients can pin it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.conch import avatar, recvline
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import connection, factory, keys, session, userauth
from twisted.conch.telnet import AuthenticatingTelnetProtocol, ITelnetProtocol, TelnetProtocol, TelnetTransport
from twisted.cred import portal as cred_portal
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python import components
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos.errors import describe
from oneos.fs import paths
from oneos.runtime.kernel import register_kernel_service
from oneos.shell.interpreter import Grid, Interpreter, Session
from oneos.shell.parser import MAX_LINE
from oneos.shell.users import FailureDelay, PasswordChecker, PublicKeyChecker

log = Logger()

HOST_KEY_FILE = "ssh_host_key"
BANNER = "OneOS shell. Type 'help' for the built-ins; anything else runs on the grid.\n"


# -- host key -------------------------------------------------------------------------


def load_or_create_host_key(home: Path) -> keys.Key:
    """The runtime's SSH host key: made once (ed25519, mode 0600) and kept."""
    path = Path(home) / HOST_KEY_FILE
    if path.exists():
        return keys.Key.fromFile(str(path))
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.toString("OPENSSH"))
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_bytes(key.public().toString("OPENSSH") + b"\n")
    log.info("made a new SSH host key {path} ({fp})", path=str(path), fp=key.fingerprint())
    return key


# -- shared plumbing ------------------------------------------------------------------------


class _Glue:
    """A minimal transport made of callables (as twisted.conch.manhole_ssh does)."""

    def __init__(self, write: Any, lose: Any) -> None:
        self._write = write
        self._lose = lose
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self._write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self._write(b"".join(seq))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._lose()

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


class _SafeWriter:
    """Writes to a channel that may already be gone (the client vanished)."""

    def __init__(self, write: Any, crlf: bool = False) -> None:
        self._write = write
        self.crlf = crlf
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if self.crlf:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        try:
            self._write(data)
        except Exception:
            self.closed = True


def _end_status(status: int) -> Failure:
    """What SSHSessionProcessProtocol.processEnded needs to send exit-status."""
    return Failure(ProcessDone(0)) if status == 0 else Failure(ProcessTerminated(exitCode=status & 0xFF))


# -- SSH ------------------------------------------------------------------------------------


class ShellAvatar(avatar.ConchUser):
    """A logged-in user: may open session channels, nothing else (no forwarding)."""

    def __init__(self, user: str, shell: "ShellService") -> None:
        super().__init__()
        self.user = user
        self.shell = shell
        self.channelLookup[b"session"] = session.SSHSession


@implementer(ISession)
class ShellSession:
    """One SSH session channel: one interpreter, exec or interactive."""

    def __init__(self, avatar: ShellAvatar) -> None:
        self.avatar = avatar
        self.shell = avatar.shell
        self.pty: tuple[bytes, tuple[int, ...]] | None = None
        self.interp: Interpreter | None = None
        self.writers: list[_SafeWriter] = []
        self.plain: _PlainLines | None = None
        self.terminal: ShellTerminal | None = None

    def _interpreter(self, out: _SafeWriter, err: _SafeWriter) -> Interpreter:
        self.writers = [out, err]
        self.interp = self.shell.new_interpreter(self.avatar.user, out, err)
        return self.interp

    # ISession
    def getPty(self, term: bytes, windowSize: tuple[int, ...], modes: Any) -> None:
        self.pty = (term, windowSize)

    def windowChanged(self, size: tuple[int, ...]) -> None:
        if self.terminal is not None:
            self.terminal.terminalSize(size[1], size[0])

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        channel = proto.session
        out = _SafeWriter(channel.write)
        err = _SafeWriter(lambda d: channel.writeExtended(connection.EXTENDED_DATA_STDERR, d))
        interp = self._interpreter(out, err)
        proto.makeConnection(_Glue(lambda data: None, lambda: None))  # input is not read in exec mode
        try:
            line = cmd.decode("utf-8")
        except UnicodeDecodeError:
            err.write(b"oneos: the command is not valid UTF-8\n")
            proto.processEnded(_end_status(2))
            return
        d = self.shell.prepare(interp).addCallback(lambda _: interp.execute(line, record=False))

        def done(status: int) -> None:
            if interp.exit_status is not None:
                status = interp.exit_status
            if not out.closed:
                proto.processEnded(_end_status(status))

        d.addCallback(done).addErrback(lambda f: log.failure("exec failed", f))

    def openShell(self, proto: Any) -> None:
        if self.pty is None:
            out = _SafeWriter(proto.session.write)
            err = _SafeWriter(lambda d: proto.session.writeExtended(connection.EXTENDED_DATA_STDERR, d))
            self.plain = _PlainLines(self._interpreter(out, err), self.shell, lambda status: proto.processEnded(_end_status(status)))
            proto.makeConnection(_Glue(self.plain.dataReceived, lambda: None))
            return
        width, height = self.pty[1][1], self.pty[1][0]
        server = insults.ServerProtocol(ShellTerminal, self)
        proto.makeConnection(_Glue(server.dataReceived, lambda: proto.session.conn.sendClose(proto.session)))
        server.makeConnection(_Glue(proto.write, proto.loseConnection))
        self._end = lambda status: proto.processEnded(_end_status(status))
        server.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self.plain is not None:
            self.plain.eof()

    def closed(self) -> None:
        for w in self.writers:
            w.closed = True
        if self.interp is not None:
            self.interp.hangup()
            self.shell.forget(self.interp)


class _PlainLines:
    """A shell without a terminal: runs each complete line, in order, until EOF."""

    def __init__(self, interp: Interpreter, shell: "ShellService", end: Any) -> None:
        self.interp = interp
        self.end = end
        self.buffer = b""
        self.queue: list[str] = []
        self.busy = True
        self.at_eof = False
        self.skipping = False
        shell.prepare(interp).addBoth(lambda _: self._next())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if self.skipping:
                self.skipping = False
                continue
            self.queue.append(line.decode("utf-8", "replace"))
        if len(self.buffer) > MAX_LINE:
            self.interp.error(f"oneos: line too long (the limit is {MAX_LINE} characters); skipped")
            self.buffer, self.skipping = b"", True
        self._next()

    def eof(self) -> None:
        self.at_eof = True
        if self.buffer and not self.skipping:
            self.queue.append(self.buffer.decode("utf-8", "replace"))
        self.buffer = b""
        self._next()

    def _next(self, _: Any = None) -> None:
        if self.busy and _ is None and self.queue is not None and getattr(self, "_running", False):
            return
        if self.interp.exit_status is not None or (self.at_eof and not self.queue and not getattr(self, "_running", False)):
            if not getattr(self, "_ended", False):
                self._ended = True
                self.end(self.interp.exit_status if self.interp.exit_status is not None else self.interp.session.status)
            return
        if not self.queue or getattr(self, "_running", False):
            return
        self._running = True
        line = self.queue.pop(0)

        def finished(_: Any) -> None:
            self._running = False
            self._next()

        self.interp.execute(line).addBoth(finished)


class ShellTerminal(recvline.HistoricRecvLine):
    """The interactive terminal: prompt, line editing, history, Ctrl-C, completion."""

    def __init__(self, channel: ShellSession) -> None:
        super().__init__()
        self.channel = channel
        self.busy = True
        self.interp: Interpreter | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.channel.terminal = self
        out = _SafeWriter(self.terminal.write)  # insults turns \n into \r\n itself
        self.interp = self.channel._interpreter(out, out)
        self.terminal.write(BANNER.encode())
        self.channel.shell.prepare(self.interp).addBoth(lambda _: self._ready())

    def _prompt(self) -> bytes:
        assert self.interp is not None
        return self.interp.session.prompt().encode("utf-8", "replace")

    def _ready(self) -> None:
        self.busy = False
        self.ps = (self._prompt(), b"> ")
        self.pn = 0
        self.lineBuffer = []
        self.lineBufferIndex = 0
        self.terminal.write(self.ps[0])

    def terminalSize(self, width: int, height: int) -> None:
        """Remember the size; unlike RecvLine, do not wipe the screen (it would erase output)."""
        self.width, self.height = width, height

    def initializeScreen(self) -> None:
        self.terminal.reset()
        self.setInsertMode()
        self.ps = (b"", b"> ")  # the prompt comes once the session is ready

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        if keyID == b"\x03":  # Ctrl-C
            if self.busy:
                self.terminal.write(b"^C\n")
                assert self.interp is not None
                self.interp.interrupt()
            else:
                self.terminal.write(b"^C\r\n")
                self._ready()
            return
        if self.busy:
            return  # typing while a command runs is ignored (no type-ahead)
        if keyID == b"\x04" and not self.lineBuffer:  # Ctrl-D
            self.terminal.write(b"logout\n")
            self._logout(self.interp.session.status if self.interp else 0)
            return
        if keyID == b"\t":
            self._complete()
            return
        if keyID == b"\x0c":  # Ctrl-L
            self.terminal.eraseDisplay()
            self.terminal.cursorHome()
            self.drawInputLine()
            return
        if isinstance(keyID, bytes) and len(self.lineBuffer) >= MAX_LINE:
            return  # refuse to grow past the parser's limit
        super().keystrokeReceived(keyID, modifier)

    def lineReceived(self, line: bytes) -> None:
        assert self.interp is not None
        self.busy = True
        text = line.decode("utf-8", "replace")
        self.interp.execute(text).addBoth(self._done)

    def _done(self, status: Any) -> None:
        assert self.interp is not None
        if self.interp.exit_status is not None:
            self._logout(self.interp.exit_status)
            return
        self._ready()

    def _logout(self, status: int) -> None:
        self.busy = True
        end = getattr(self.channel, "_end", None)
        if end is not None:
            end(status)
        else:
            self.terminal.loseConnection()

    def _complete(self) -> None:
        """Tab: complete the last word from the built-ins (first word) or OneOS paths."""
        assert self.interp is not None
        text = b"".join(self.lineBuffer[: self.lineBufferIndex]).decode("utf-8", "replace")
        word = text.split(" ")[-1]
        first = " " not in text.strip() and "/" not in word
        if first:
            names = sorted(n for n in self.interp.builtins if n.startswith(word))
            self._insert_completion(word, names)
            return
        directory, _, prefix = word.rpartition("/")
        base = paths.normalise(directory or ("/" if word.startswith("/") else "."), self.interp.session.cwd) if directory or word.startswith("/") else self.interp.session.cwd

        def listed(entries: list[Any]) -> None:
            names = sorted(e.name + ("/" if e.is_dir else "") for e in entries if e.name.startswith(prefix) and (prefix.startswith(".") or not e.name.startswith(".")))
            self._insert_completion(prefix, names)

        self.interp.grid.fs.listdir(base).addCallbacks(listed, lambda f: None)

    def _insert_completion(self, prefix: str, names: list[str]) -> None:
        if not names:
            return
        common = os.path.commonprefix(names)
        extra = common[len(prefix):]
        if len(names) == 1 and not extra.endswith("/"):
            extra += " "
        if extra:
            for ch in extra.encode():
                recvline.HistoricRecvLine.characterReceived(self, bytes([ch]), False)
        elif len(names) > 1:
            self.terminal.write(b"\r\n" + "  ".join(names).encode() + b"\r\n")
            self.drawInputLine()

    def connectionLost(self, reason: Any = None) -> None:
        if self.interp is not None:
            self.interp.hangup()


# conch adapts the avatar once per channel (SSHSession._session is cached),
# so each channel gets its own ShellSession and interpreter.
components.registerAdapter(ShellSession, ShellAvatar, ISession)


# -- telnet ---------------------------------------------------------------------------------


class TelnetShell(TelnetProtocol):
    """A logged-in telnet user: lines in, output out (the telnet client edits the line)."""

    def __init__(self, user: str, shell: "ShellService") -> None:
        self.user = user
        self.shell = shell
        self.buffer = b""
        self.running = True

    def connectionMade(self) -> None:
        out = _SafeWriter(self.transport.write, crlf=True)
        self.interp = self.shell.new_interpreter(self.user, out, out)
        out.write(BANNER.encode())
        self.shell.prepare(self.interp).addBoth(lambda _: self._prompt())

    def _prompt(self) -> None:
        self.running = False
        self.transport.write(self.interp.session.prompt().encode("utf-8", "replace"))
        self._drain()

    def dataReceived(self, data: bytes) -> None:
        if b"\x03" in data and self.running:
            self.interp.interrupt()
        self.buffer += data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\n").replace(b"\r", b"\n")
        if len(self.buffer) > MAX_LINE and b"\n" not in self.buffer:
            self.buffer = b""
            self.interp.error(f"oneos: line too long (the limit is {MAX_LINE} characters)")
        self._drain()

    def _drain(self) -> None:
        if self.running or b"\n" not in self.buffer:
            return
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.running = True
        self.interp.execute(line.decode("utf-8", "replace")).addBoth(self._done)

    def _done(self, _: Any) -> None:
        if self.interp.exit_status is not None:
            self.transport.loseConnection()
            return
        self._prompt()

    def connectionLost(self, reason: Any = None) -> None:
        self.interp.hangup()
        self.shell.forget(self.interp)


# -- the realm and the service ----------------------------------------------------------------


@implementer(cred_portal.IRealm)
class ShellRealm:
    """Gives each login an SSH avatar or a telnet protocol, both bound to the same shell."""

    def __init__(self, shell: "ShellService") -> None:
        self.shell = shell

    def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        user = avatar_id.decode("utf-8") if isinstance(avatar_id, bytes) else str(avatar_id)
        if IConchUser in interfaces:
            a = ShellAvatar(user, self.shell)
            return IConchUser, a, lambda: None
        if ITelnetProtocol in interfaces:
            return ITelnetProtocol, TelnetShell(user, self.shell), lambda: None
        raise NotImplementedError("the OneOS shell offers SSH and telnet only")


class _QuietUserAuth(userauth.SSHUserAuthServer):
    """Public keys and passwords only; a wrong password waits (conch adds its own delay too)."""


class ShellService(service.Service):
    """Listens for SSH (and telnet when configured) and runs the shell for each session."""

    name = "shell"

    def __init__(self, runtime: Any, ssh: str, telnet: str, home: Path, reactor: Any) -> None:
        self.runtime = runtime
        self.ssh_endpoint = ssh
        self.telnet_endpoint = telnet
        self.home = Path(home)
        self.reactor = reactor
        self.ports: list[Any] = []
        self.interpreters: set[Interpreter] = set()
        self.delay = FailureDelay(reactor)
        self.portal = cred_portal.Portal(ShellRealm(self), [PublicKeyChecker(self.home, self.delay), PasswordChecker(self.home, self.delay)])
        self._grid: Grid | None = None

    @property
    def grid(self) -> Grid:
        if self._grid is None:
            self._grid = Grid.of_runtime(self.runtime)
        return self._grid

    def new_interpreter(self, user: str, out: Any, err: Any) -> Interpreter:
        interp = Interpreter(Session(user, home=paths.join("/home", user)), self.grid, out, err)
        self.interpreters.add(interp)
        return interp

    def forget(self, interp: Interpreter) -> None:
        self.interpreters.discard(interp)

    def prepare(self, interp: Interpreter) -> defer.Deferred:
        """Make the user's home (/home/USER) on first login; fall back to / if the store is down."""
        session = interp.session

        def failed(f: Failure) -> None:
            log.warn("cannot make home {home}: {e}", home=session.home, e=f.getErrorMessage())
            session.home = "/"
            session.env["HOME"] = "/"
            session.set_cwd("/")

        return self.grid.fs.mkdir(session.home, parents=True, exist_ok=True).addCallbacks(lambda _: None, failed)

    def ssh_factory(self) -> factory.SSHFactory:
        key = load_or_create_host_key(self.home)
        f = factory.SSHFactory()
        f.portal = self.portal
        f.publicKeys = {key.sshType(): key.public()}
        f.privateKeys = {key.sshType(): key}
        f.services = {**f.services, b"ssh-userauth": _QuietUserAuth}
        return f

    def telnet_factory(self) -> protocol.ServerFactory:
        f = protocol.ServerFactory()
        f.protocol = lambda: TelnetTransport(AuthenticatingTelnetProtocol, self.portal)  # type: ignore[assignment]
        return f

    def startService(self) -> None:
        super().startService()
        for name, endpoint, make in (("ssh", self.ssh_endpoint, self.ssh_factory), ("telnet", self.telnet_endpoint, self.telnet_factory)):
            if not endpoint:
                continue
            try:
                d = serverFromString(self.reactor, endpoint).listen(make())
            except Exception as e:
                log.error("shell cannot serve {name} on {ep}: {e}", name=name, ep=endpoint, e=describe(e))
                continue

            def listening(port: Any, name: str = name, endpoint: str = endpoint) -> None:
                self.ports.append(port)
                log.info("shell serving {name} on {ep}", name=name, ep=endpoint)

            def failed(f: Failure, name: str = name, endpoint: str = endpoint) -> None:
                log.error("shell cannot serve {name} on {ep}: {e}", name=name, ep=endpoint, e=f.getErrorMessage())

            d.addCallbacks(listening, failed)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for interp in list(self.interpreters):
            interp.hangup()
        ports, self.ports = self.ports, []
        for port in ports:
            yield defer.maybeDeferred(port.stopListening)


def make_shell_service(runtime: Any) -> ShellService:
    """Kernel factory: the leader's shell (SSH on listen.ssh, telnet on listen.telnet)."""
    listen = runtime.config.listen
    return ShellService(runtime, listen.get("ssh", ""), listen.get("telnet", ""), runtime.config.home, runtime.reactor)


register_kernel_service("shell", make_shell_service)

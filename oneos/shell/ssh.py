"""The shell's SSH front end: every SSH session channel gets its own session and interpreter.

* ``exec`` requests (``ssh host 'ls /'``, ``oneos -c LINE``) run one line;
  stdout goes to the channel, stderr to its extended-data stream, and the
  line's status comes back as the SSH ``exit-status``; what the client sends
  is the line's standard input (``echo hi | ssh host 'wc -l'``), its EOF is
  final as on a pipe.  With a pty (``ssh -t host LINE``) the client's
  terminal is raw, and its keys are cooked here (:class:`~oneos.shell.lines.CookedLine`);
* ``shell`` requests with a pty get an interactive terminal
  (:class:`~oneos.shell.terminal.ShellTerminal`, on twisted.conch insults:
  line editing, history kept in ``~/.oneos_history``, completion,
  Ctrl-C stops the foreground command, Ctrl-D on an empty line logs out);
  while a command runs, typed lines go to it (echoed and edited here, as a
  tty in cooked mode would) and Ctrl-D ends its input;
* ``shell`` requests without a pty (``echo ls | ssh host``) read lines and run
  them in order, like ``sh`` reading a script (:class:`~oneos.shell.lines.ScriptLines`);
  the input is the script, so programs get none.

The ``sftp`` subsystem serves the OneOS tree as the logged-in user
(:mod:`oneos.shell.sftp`: ``sftp``, and ``scp``, which speaks SFTP since
OpenSSH 9).  An ``exec`` of ``scp -t``/``scp -f`` (legacy ``scp -O``),
``rsync --server`` or an SFTP server program is refused with a plain message
(:func:`host_subsystem`): run, it would be the runtime machine's own program
on its own disk.  The transport disconnects a connection that has
not logged in within the login grace time and, with the service's
:class:`~oneos.shell.throttle.LoginThrottle`, refuses too many connections
logging in from one address and answers failed logins ever later.  The host
key is the network's, kept in the tree (:func:`oneos.shell.hostkey.network_host_key`).  When a
client vanishes the channel closes and every agent its session started is
stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.conch import avatar
from twisted.conch.insults import insults
from twisted.conch.interfaces import ISession
from twisted.conch.ssh import connection, factory, keys, session, transport, userauth
from twisted.cred import error
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python import components
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos.shell.frontend import LoginGrace, SafeWriter, cut_later, peer_address, to_program
from oneos.shell.interpreter import Interpreter
from oneos.shell.lines import TOO_LONG, CookedLine, Echo, Event, Interrupt, ScriptLines
from oneos.shell.parser import MAX_LINE, is_incomplete
from oneos.shell.session import SessionInput
from oneos.shell.sftp import SFTPSubsystem
from oneos.shell.terminal import ShellTerminal
from oneos.shell.throttle import LOGIN_GRACE, LoginThrottle

if TYPE_CHECKING:
    from oneos.shell.service import ShellService

log = Logger()

# -- the log: one line per login ----------------------------------------------------------------


@implementer(ILogObserver)
def _conch_warnings(event: dict[str, Any]) -> None:
    """Pass on conch's warnings and errors only.

    Conch narrates every connection (key exchange, each auth attempt, each
    channel, the exit code, the close: some twenty lines per login) at info
    and debug; the runtime's log gets one line per login from us instead.
    """
    level = event.get("log_level")
    if level is not None and level >= LogLevel.warn:
        globalLogPublisher(event)


#: the logger of the conch classes a front door uses (set as their ``_log``)
_conch_log = Logger(observer=_conch_warnings)
# twisted.conch.ssh.session logs through a module-level logger ("Executing command ...", "exitCode: 0")
session.log = Logger(namespace=session.log.namespace, observer=_conch_warnings)


# -- the connection: transport, authentication ------------------------------------------------


def _tcp(proto: Protocol) -> ITCPTransport:
    """*proto*'s transport, there from ``makeConnection`` on.

    Twisted types ``Protocol.transport`` as ``ITransport | None``; an SSH
    connection's is TCP, which provides ITCPTransport (``setTcpNoDelay``,
    ``abortConnection``).
    """
    assert proto.transport is not None, "not connected yet"
    return cast(ITCPTransport, proto.transport)  # Twisted's typing: ITransport, too general here


class SSHTransport(transport.SSHServerTransport):
    """SSH transport with TCP_NODELAY: each command's short reply goes out at once.

    Without it Nagle's algorithm meets the client's delayed ACKs and logins
    and replies stall ~40 ms (conch's own unix server sets it too).

    It also enforces the login grace time: a connection that has not
    authenticated within the factory's ``login_grace`` seconds (one that
    never finishes the key exchange, sends nothing at all, or keeps trying
    passwords) is disconnected, as OpenSSH's LoginGraceTime does; conch's own
    limit is ten hours and starts only after the key exchange.  And it
    refuses a connection at once when too many from its address (or overall)
    are still logging in (the factory's ``throttle``, as OpenSSH's MaxStartups).
    """

    grace: LoginGrace | None = None
    _log = _conch_log

    def connectionMade(self) -> None:
        _tcp(self).setTcpNoDelay(True)
        clock = getattr(self.factory, "clock", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self.grace = LoginGrace(clock, getattr(self.factory, "login_grace", LOGIN_GRACE), self._grace_expired)
        throttle: LoginThrottle | None = getattr(self.factory, "throttle", None)
        self.source = getattr(_tcp(self).getPeer(), "host", "?")
        self.pending = throttle is not None and throttle.opened(self.source)
        if throttle is not None and not self.pending:
            # Too many connections from here (or overall) are still logging in: like OpenSSH's MaxStartups.
            log.info("ssh: refusing a connection from {peer}: too many unauthenticated connections", peer=self.source)
            _tcp(self).abortConnection()
            return
        super().connectionMade()

    def settle(self) -> None:
        """This connection no longer counts as one still logging in."""
        if self.pending:
            self.pending = False
            # ssh_factory sets the throttle on the factory; conch's SSHFactory does not declare it
            self.factory.throttle.settled(self.source)  # type: ignore[attr-defined]

    def _grace_expired(self) -> None:
        assert self.grace is not None
        log.info(
            "ssh: closing the connection from {peer}: not logged in within {t:g}s",
            peer=peer_address(self.transport),
            t=self.grace.seconds,
        )
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"login grace time exceeded")
        cut_later(self.grace.clock, self.transport)

    def setService(self, service: Any) -> None:
        super().setService(service)
        if getattr(self, "avatar", None) is not None and self.grace is not None:
            self.grace.stop()  # authenticated: the connection service now runs
            self.settle()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # the client's goodbye: a normal logout (ssh's 'disconnected by user', code 11) is not an error
        if reasonCode != transport.DISCONNECT_BY_APPLICATION:
            why = description.decode("utf-8", "replace") if isinstance(description, bytes) else str(description)
            log.info(
                "ssh: the client at {peer} disconnected: {why} (code {code})",
                peer=self.source,
                why=why,
                code=reasonCode,
            )

    def connectionLost(self, reason: Any = None) -> None:
        if self.grace is not None:
            self.grace.stop()
        self.settle()
        if not hasattr(self, "currentEncryptions"):
            return  # refused at once (too many logging in): conch never started
        super().connectionLost(reason)


class ThrottledUserAuth(userauth.SSHUserAuthServer):
    """Failed logins from one address are answered later and later (the factory's LoginThrottle)."""

    _log = _conch_log

    def _ssh(self) -> transport.SSHTransportBase:
        """The SSH transport, set by conch before the service starts (Twisted types it as Optional)."""
        assert self.transport is not None, "not started yet"
        return self.transport

    def _ebBadAuth(self, reason: Any) -> Any:
        throttle: LoginThrottle | None = getattr(self._ssh().factory, "throttle", None)
        if throttle is None or not reason.check(error.UnauthorizedLogin) or self.method == b"none":
            return super()._ebBadAuth(reason)
        if self.method == b"publickey" and not getattr(self, "_signed", False):
            return super()._ebBadAuth(reason)  # "would this key do?" is not a guess
        delay = throttle.failed(getattr(self.transport, "source", "?"))
        d: defer.Deferred = defer.Deferred()
        self._ssh().factory.clock.callLater(delay, d.callback, None)
        return d.addCallback(lambda _: super(ThrottledUserAuth, self)._ebBadAuth(reason))

    def auth_publickey(self, packet: bytes) -> Any:
        self._signed = bool(packet[:1] and packet[0])  # the client sent a signature, not just a question
        return super().auth_publickey(packet)

    def _cbFinishedAuth(self, result: Any) -> None:
        log.info(
            "ssh: {user} logged in from {peer} ({method})",
            user=self.user.decode("utf-8", "replace"),
            peer=getattr(self.transport, "source", "?"),
            method=self.method.decode("ascii", "replace"),
        )
        throttle: LoginThrottle | None = getattr(self._ssh().factory, "throttle", None)
        if throttle is not None:
            throttle.succeeded(getattr(self.transport, "source", "?"))
        super()._cbFinishedAuth(result)


class _Connection(connection.SSHConnection):
    """conch's connection service, its per-channel narration kept out of the log (see _conch_warnings)."""

    _log = _conch_log


def ssh_factory(
    portal: Any, key: keys.Key, login_grace: float | None, clock: Any, throttle: LoginThrottle
) -> factory.SSHFactory:
    """The SSH server factory of a front door: its portal, host key, login grace and throttle."""
    f = factory.SSHFactory()
    f.protocol = SSHTransport
    f.login_grace = login_grace  # type: ignore[attr-defined]
    f.clock = clock  # type: ignore[attr-defined]
    f.throttle = throttle  # type: ignore[attr-defined]
    f.services = {**f.services, b"ssh-userauth": ThrottledUserAuth, b"ssh-connection": _Connection}
    f._log = Logger(namespace="twisted.conch.ssh.factory.SSHFactory", observer=_conch_warnings)  # type: ignore[misc]
    f.portal = portal  # type: ignore[attr-defined]  # conch's SSHFactory reads it at runtime but does not declare it
    f.publicKeys = {key.sshType(): key.public()}
    f.privateKeys = {key.sshType(): key}
    return f


#: exec lines that ask the server machine's own file-transfer programs to serve the session: the
#: OpenSSH client sends these for ``scp -O`` and rsync, and a client told to use an SFTP server
#: program by path (``sftp -s /usr/lib/openssh/sftp-server``) execs it.  Run, they would read and write
#: the runtime machine's real disk in the runtime's name, not the OneOS tree as the user.  An empty
#: flag list: the program is refused however it is called.
_HOST_SUBSYSTEMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scp", ("-t", "-f")),
    ("rsync", ("--server",)),
    ("sftp-server", ()),
    ("internal-sftp", ()),
)


def host_subsystem(line: str) -> str | None:
    """Why an SSH exec *line* is refused (a host file-transfer subsystem), or None to run it as a shell line."""
    words = line.split()
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    for name, flags in _HOST_SUBSYSTEMS:
        if program == name and (
            not flags
            or any(
                w in flags
                or (w.startswith("-") and not w.startswith("--") and any(f[1] in w[1:] for f in flags if len(f) == 2))
                for w in words[1:]
            )
        ):
            return (
                f"oneos: '{name}' as an SSH subsystem is not served (it would run the host's {name} on the "
                "runtime's own disk); copy files with sftp, or scp without -O (both use the SFTP subsystem, "
                "which serves the OneOS tree), or 'oneos fs put/get'"
            )
    return None


# -- session channels -----------------------------------------------------------------------------


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


class _WindowHold:
    """Back-pressure on one SSH channel's input: stop granting window while the shell holds too much.

    conch re-opens a channel's receive window by itself as data arrives
    (SSHConnection.ssh_CHANNEL_DATA, once less than half is left).  Setting
    the channel's ``localWindowSize`` to 0 stops that, so the client stops
    sending once its window is used up; only this channel waits (rekeying,
    window adjusts for our output and the channel's close keep flowing,
    which pausing the TCP socket would stop).  :meth:`resume` restores the
    size and grants the missing window.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.size = channel.localWindowSize

    def pause(self) -> None:
        self.channel.localWindowSize = 0

    def resume(self) -> None:
        ch = self.channel
        ch.localWindowSize = self.size
        missing = self.size - ch.localWindowLeft
        if missing > 0 and ch.conn is not None and not ch.localClosed:
            ch.conn.adjustWindow(ch, missing)


def _end_status(status: int) -> Failure:
    """What SSHSessionProcessProtocol.processEnded needs to send exit-status."""
    return Failure(ProcessDone(0)) if status == 0 else Failure(ProcessTerminated(exitCode=status & 0xFF))


class SessionChannel(session.SSHSession):
    """A session channel; one that runs a subsystem (sftp) ends when the client sends EOF, with exit status 0.

    An SFTP server program exits at EOF and sshd reports its status; conch
    instead hands the EOF to the channel's ISession once one exists (it
    exists as soon as the client sends an ``env`` request, and OpenSSH sends
    ``LANG`` with Debian's default ``SendEnv``), where the ShellSession has
    nothing to end, so ``sftp`` and ``scp`` would wait forever; without one
    it closes the channel with no ``exit-status``, which ``ssh`` reports as
    255 and ``scp`` as a failed copy.
    """

    running_subsystem = False
    _log = _conch_log

    def request_subsystem(self, data: bytes) -> int:
        started = super().request_subsystem(data)
        self.running_subsystem = bool(started)
        return started

    def eofReceived(self) -> None:
        if self.running_subsystem and self.client is not None:
            self.client.processEnded(_end_status(0))  # exit-status 0, then close
            return
        super().eofReceived()


class ShellAvatar(avatar.ConchUser):
    """A logged-in user: may open session channels (a shell, exec, the sftp subsystem), nothing else (no forwarding)."""

    def __init__(self, user: str, shell: ShellService) -> None:
        super().__init__()
        self.user = user
        self.shell = shell
        self.channelLookup[b"session"] = SessionChannel
        self.subsystemLookup[b"sftp"] = SFTPSubsystem  # the OneOS tree as this user (oneos/shell/sftp.py)


@implementer(ISession)
class ShellSession:
    """One SSH session channel: one interpreter, exec or interactive."""

    def __init__(self, avatar: ShellAvatar) -> None:
        self.avatar = avatar
        self.shell = avatar.shell
        self.pty: tuple[bytes, tuple[int, ...]] | None = None
        self.interp: Interpreter | None = None
        self.writers: list[SafeWriter] = []
        self.script: _ScriptShell | None = None
        self.terminal: ShellTerminal | None = None

    def _interpreter(self, out: SafeWriter, err: SafeWriter) -> Interpreter:
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
        out = SafeWriter(channel.write, crlf=self.pty is not None)
        err = SafeWriter(lambda d: channel.writeExtended(connection.EXTENDED_DATA_STDERR, d), crlf=self.pty is not None)
        interp = self._interpreter(out, err)
        if self.pty is None:
            hold = _WindowHold(channel)
            interp.input = SessionInput(pause=hold.pause, resume=hold.resume)
            proto.makeConnection(_Glue(interp.input.feed, lambda: None))  # the client's data: the line's stdin
        else:  # ssh -t HOST LINE: raw keystrokes, cooked here
            interp.input = SessionInput()
            cooked = CookedLine()
            proto.makeConnection(_Glue(lambda data: self._typed(cooked.feed(data), out), lambda: None))
        try:
            line = cmd.decode("utf-8")
        except UnicodeDecodeError:
            err.write(b"oneos: the command is not valid UTF-8\n")
            proto.processEnded(_end_status(2))
            return
        refusal = host_subsystem(line)
        if refusal is not None:
            log.info("ssh: refused {line!r} from {user}: a host subsystem", line=line[:80], user=self.avatar.user)
            err.write(refusal.encode() + b"\n")
            proto.processEnded(_end_status(1))
            return
        d = self.shell.prepare(interp).addCallback(lambda _: interp.execute(line, record=False))

        def done(status: int) -> None:
            if interp.exit_status is not None:
                status = interp.exit_status
            if not out.closed:
                proto.processEnded(_end_status(status))

        d.addCallback(done).addErrback(lambda f: log.failure("exec failed", f))

    def _typed(self, events: list[Event], out: SafeWriter) -> None:
        """Keys of ``ssh -t HOST LINE``, cooked: echo them, and give the line's program what they mean."""
        assert self.interp is not None and self.interp.input is not None
        for event in events:
            if isinstance(event, Echo):
                out.write(event.data)
            elif isinstance(event, Interrupt):
                self.interp.interrupt()
            else:
                to_program(event, self.interp.input)

    def openShell(self, proto: Any) -> None:
        if self.pty is None:
            out = SafeWriter(proto.session.write)
            err = SafeWriter(lambda d: proto.session.writeExtended(connection.EXTENDED_DATA_STDERR, d))
            self.script = _ScriptShell(
                self._interpreter(out, err), self.shell, lambda status: proto.processEnded(_end_status(status))
            )
            proto.makeConnection(_Glue(self.script.dataReceived, lambda: None))
            return
        width, height = self.pty[1][1], self.pty[1][0]
        server = insults.ServerProtocol(ShellTerminal, self)
        proto.makeConnection(_Glue(server.dataReceived, lambda: proto.session.conn.sendClose(proto.session)))
        server.makeConnection(_Glue(proto.write, proto.loseConnection))
        self._end = lambda status: proto.processEnded(_end_status(status))
        # made and connected by server.makeConnection; Twisted declares ServerProtocol.terminalProtocol = None
        terminal = cast(ShellTerminal, server.terminalProtocol)
        terminal.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self.script is not None:
            self.script.eof()
        elif self.interp is not None and self.interp.input is not None and self.terminal is None:
            self.interp.input.close()  # exec: the piped input ended (final, as on a pipe)

    def closed(self) -> None:
        for w in self.writers:
            w.closed = True
        if self.interp is not None:
            self.interp.hangup()
            self.shell.forget(self.interp)


class _ScriptShell:
    """A shell without a terminal: runs each complete line, in order, until EOF (like ``sh < script``)."""

    def __init__(self, interp: Interpreter, shell: ShellService, end: Any) -> None:
        self.interp = interp
        self.end = end
        self.lines = ScriptLines()
        self.at_eof = False
        #: a line is running: the next waits for it
        self.running = False
        self.ended = False
        #: the first lines of a construct not complete yet (``for ...`` / ``do`` ...), newline-terminated
        self.pending = ""
        shell.prepare(interp).addBoth(lambda _: self._next())

    def dataReceived(self, data: bytes) -> None:
        if TOO_LONG in self.lines.feed(data):
            self.interp.error(f"oneos: line too long (the limit is {MAX_LINE} characters); skipped")
        self._next()

    def eof(self) -> None:
        self.at_eof = True
        self.lines.end()
        self._next()

    def _next(self) -> None:
        if self.running:
            return
        if self.interp.exit_status is not None or (self.at_eof and not self.lines.waiting and not self.pending):
            if not self.ended:
                self.ended = True
                self.end(self.interp.exit_status if self.interp.exit_status is not None else self.interp.session.status)
            return
        # A construct spread over lines (if ... fi) runs once it is complete; at EOF, as it is (its syntax error).
        while True:
            line = self.lines.next_line()
            if line is None:
                if not (self.at_eof and self.pending):
                    return
                text, self.pending = self.pending, ""
                break
            text = self.pending + line.decode("utf-8", "replace")
            self.pending = ""
            if not is_incomplete(text) or (self.at_eof and not self.lines.waiting):
                break
            self.pending = text + "\n"
        self.running = True

        def finished(_: Any) -> None:
            self.running = False
            self._next()

        self.interp.execute(text).addBoth(finished)


# conch adapts the avatar once per channel (SSHSession._session is cached),
# so each channel gets its own ShellSession and interpreter.
components.registerAdapter(ShellSession, ShellAvatar, ISession)

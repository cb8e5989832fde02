"""The shell front door: SSH (and optionally telnet) in front of the interpreter.

One cred ``Portal`` serves both protocols, so a user is the same user
however they connect.  Checkers (:mod:`oneos.shell.users`): SSH public keys
from ``/etc/oneos/authorized_keys`` and scrypt password hashes from
``/etc/oneos/users.json`` in the OneOS tree; there is no anonymous access.

Every SSH session channel gets its own :class:`Session` (cwd, variables,
history, jobs) and :class:`Interpreter`:

* ``exec`` requests (``ssh host 'ls /'``, ``oneos -c LINE``) run one line;
  stdout goes to the channel, stderr to its extended-data stream, and the
  line's status comes back as the SSH ``exit-status``; what the client sends
  is the line's standard input (``echo hi | ssh host 'wc -l'``), its EOF is
  final as on a pipe;
* ``shell`` requests with a pty get an interactive terminal (twisted.conch
  insults/recvline: line editing, history with the arrow keys, tab
  completion of built-ins and paths, Ctrl-C stops the foreground command,
  Ctrl-D on an empty line logs out); while a command runs, typed lines go
  to it (echoed and edited here, as a tty in cooked mode would) and Ctrl-D
  ends its input;
* ``shell`` requests without a pty (``echo ls | ssh host``) read lines and run
  them in order, like ``sh`` reading a script; the input is the script, so
  programs get none.

Telnet (``listen.telnet``) logs in through the same Portal with a user name
and password, then works line by line like the terminal above, the client
doing the line editing.

When a client vanishes the channel closes and every agent its session
started is stopped.  Every runtime runs this front door; the host key is
the network's, kept in the tree (``/etc/oneos/ssh_host_key``, ed25519), so
clients pin one key whichever runtime they reach.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.conch import avatar, recvline
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import connection, factory, keys, session, transport, userauth
from twisted.conch.telnet import (BRK, ECHO, IP, LINEMODE_EOF, AuthenticatingTelnetProtocol, ITelnetProtocol,
                                  OptionRefused, TelnetProtocol, TelnetTransport)
from twisted.cred import credentials, error, portal as cred_portal
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python import components
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos.errors import describe
from oneos.fs import paths
from oneos.fs.permissions import ADMIN
from oneos.fs.store import DEFAULT_OWNER, DIR_PERM
from oneos.shell.interpreter import Grid, Interpreter, Session, SessionInput
from oneos.shell.parser import MAX_LINE
from oneos.shell.throttle import LoginThrottle
from oneos.shell.users import HOST_KEY_PATH, FailureDelay, PasswordChecker, PublicKeyChecker, TreeUsers, migrate_home

log = Logger()

HOST_KEY_FILE = "ssh_host_key"
#: A user's home (/home/USER) is the user's and private.
HOME_PERM = 0o700
#: How long a front door waits between tries when the tree cannot be reached at start (doubling up to the max).
RETRY_DELAY, RETRY_MAX = 0.2, 5.0
#: Seconds a connection has to log in (SSH: key exchange and authentication; telnet: user and password).
LOGIN_GRACE = 60.0
#: Seconds a connection told to go may take to read the goodbye before it is cut.
_GOODBYE = 5.0
BANNER = "OneOS shell. Type 'help' for the built-ins; anything else runs on the grid.\n"


# -- host key -------------------------------------------------------------------------


def _new_host_key() -> keys.Key:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return keys.Key(ed25519.Ed25519PrivateKey.generate())


@defer.inlineCallbacks
def network_host_key(fs: Any, home: Path) -> Any:
    """The network's SSH host key, kept in the tree so every front door shows the same one.

    The first front door to start puts one there (the key an older runtime
    kept in ``$ONEOS_HOME/ssh_host_key`` if there is one, else a new ed25519
    key); the write is exclusive, so of two doors starting at once both end
    with the winner's key.  The public half is also written to
    ``$ONEOS_HOME/ssh_host_key.pub``, where ``oneos`` on this machine pins it.
    """
    from oneos.fs.errors import AlreadyExists, NotFound

    try:
        data = yield fs.read_small(HOST_KEY_PATH)
    except NotFound:
        local = Path(home) / HOST_KEY_FILE
        migrated = local.exists()
        key = keys.Key.fromFile(str(local)) if migrated else _new_host_key()
        yield fs.mkdir("/etc/oneos", parents=True, exist_ok=True)
        try:
            yield fs.write_small(HOST_KEY_PATH, key.toString("OPENSSH"), exclusive=True)
            log.info("the network's SSH host key is now {fp} ({how})", fp=key.fingerprint(),
                     how=f"moved from {local}" if migrated else "new")
        except AlreadyExists:
            pass  # another front door was first: use its key
        data = yield fs.read_small(HOST_KEY_PATH)
    key = keys.Key.fromString(data)
    pub = Path(home) / (HOST_KEY_FILE + ".pub")
    text = key.public().toString("OPENSSH") + b"\n"
    if not pub.exists() or pub.read_bytes() != text:
        pub.parent.mkdir(parents=True, exist_ok=True)
        pub.write_bytes(text)
    return key


# -- shared plumbing ------------------------------------------------------------------------


class _LoginGrace:
    """A connection's deadline to log in; on expiry, say why, close, and cut it if it will not close."""

    def __init__(self, clock: Any, seconds: float | None, expire: Any) -> None:
        self.clock = clock
        self.seconds = seconds
        self._expire = expire
        self._timer: Any = clock.callLater(seconds, self._fire) if seconds else None

    def _fire(self) -> None:
        self._timer = None
        self._expire()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _cut_later(clock: Any, tcp: Any) -> None:
    """Abort *tcp* if a polite close has not finished soon (a peer that reads nothing)."""
    def cut() -> None:
        if getattr(tcp, "connected", False) and hasattr(tcp, "abortConnection"):
            tcp.abortConnection()

    clock.callLater(_GOODBYE, cut)


def _peer(tcp: Any) -> str:
    peer = tcp.getPeer() if tcp is not None else None
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class _NoDelaySSHTransport(transport.SSHServerTransport):
    """SSH transport with TCP_NODELAY: each command's short reply goes out at once.

    Without it Nagle's algorithm meets the client's delayed ACKs and logins
    and replies stall ~40 ms (conch's own unix server sets it too).

    It also enforces the login grace time: a connection that has not
    authenticated within the factory's ``login_grace`` seconds (one that
    never finishes the key exchange, sends nothing at all, or keeps trying
    passwords) is disconnected, as OpenSSH's LoginGraceTime does; conch's own
    limit is ten hours and starts only after the key exchange.
    """

    grace: _LoginGrace | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        clock = getattr(self.factory, "clock", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self.grace = _LoginGrace(clock, getattr(self.factory, "login_grace", LOGIN_GRACE), self._grace_expired)
        throttle: LoginThrottle | None = getattr(self.factory, "throttle", None)
        self.source = getattr(self.transport.getPeer(), "host", "?")
        self.pending = throttle is not None and throttle.opened(self.source)
        if throttle is not None and not self.pending:
            # Too many connections from here (or overall) are still logging in: like OpenSSH's MaxStartups.
            log.info("ssh: refusing a connection from {peer}: too many unauthenticated connections", peer=self.source)
            self.transport.abortConnection()
            return
        super().connectionMade()

    def settle(self) -> None:
        """This connection no longer counts as one still logging in."""
        if self.pending:
            self.pending = False
            self.factory.throttle.settled(self.source)

    def _grace_expired(self) -> None:
        assert self.grace is not None
        log.info("ssh: closing the connection from {peer}: not logged in within {t:g}s", peer=_peer(self.transport),
                 t=self.grace.seconds)
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"login grace time exceeded")
        _cut_later(self.grace.clock, self.transport)

    def setService(self, service: Any) -> None:
        super().setService(service)
        if getattr(self, "avatar", None) is not None and self.grace is not None:
            self.grace.stop()  # authenticated: the connection service now runs
            self.settle()

    def connectionLost(self, reason: Any = None) -> None:
        if self.grace is not None:
            self.grace.stop()
        self.settle()
        if not hasattr(self, "currentEncryptions"):
            return  # refused at once (too many logging in): conch never started
        super().connectionLost(reason)


class _ThrottledUserAuth(userauth.SSHUserAuthServer):
    """Failed logins from one address are answered later and later (the factory's LoginThrottle)."""

    def _ebBadAuth(self, reason: Any) -> Any:
        throttle: LoginThrottle | None = getattr(self.transport.factory, "throttle", None)
        if throttle is None or not reason.check(error.UnauthorizedLogin) or self.method == b"none":
            return super()._ebBadAuth(reason)
        if self.method == b"publickey" and not getattr(self, "_signed", False):
            return super()._ebBadAuth(reason)  # "would this key do?" is not a guess
        delay = throttle.failed(getattr(self.transport, "source", "?"))
        d: defer.Deferred = defer.Deferred()
        self.transport.factory.clock.callLater(delay, d.callback, None)
        return d.addCallback(lambda _: super(_ThrottledUserAuth, self)._ebBadAuth(reason))

    def auth_publickey(self, packet: bytes) -> Any:
        self._signed = bool(packet[:1] and packet[0])  # the client sent a signature, not just a question
        return super().auth_publickey(packet)

    def _cbFinishedAuth(self, result: Any) -> None:
        throttle: LoginThrottle | None = getattr(self.transport.factory, "throttle", None)
        if throttle is not None:
            throttle.succeeded(getattr(self.transport, "source", "?"))
        super()._cbFinishedAuth(result)


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


#: exec lines that ask the server machine's own file-transfer programs to serve the session: the
#: OpenSSH client sends these for ``scp -O`` and rsync.  Run, they would read and write the runtime
#: machine's real disk in the runtime's name, not the OneOS tree as the user.
_HOST_SUBSYSTEMS = (("scp", ("-t", "-f")), ("rsync", ("--server",)))


def host_subsystem(line: str) -> str | None:
    """Why an SSH exec *line* is refused (a host file-transfer subsystem), or None to run it as a shell line."""
    words = line.split()
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    for name, flags in _HOST_SUBSYSTEMS:
        if program == name and any(w in flags or (w.startswith("-") and not w.startswith("--") and
                                                  any(f[1] in w[1:] for f in flags if len(f) == 2))
                                   for w in words[1:]):
            return (f"oneos: '{name}' as an SSH subsystem is not served (it would run the host's {name} on the "
                    "runtime's own disk); copy files with 'oneos fs put/get', or pipe: "
                    "ssh HOST 'cat > /path' < file")
    return None


class _SafeWriter:
    """Writes to a channel that may already be gone (the client vanished)."""

    def __init__(self, write: Any, crlf: bool = False) -> None:
        self._write = write
        self.crlf = crlf  # for a client terminal in raw mode (ssh -t HOST LINE), which will not add the CR
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


class _CookedKeys:
    """Keystrokes of ``ssh -t HOST LINE`` made into program input, as a tty in cooked mode.

    The client's terminal is raw, so the echo, Enter (CR), backspace,
    Ctrl-C (interrupt) and Ctrl-D (end of input) are done here.
    """

    def __init__(self, interp: Interpreter, out: _SafeWriter) -> None:
        self.interp = interp
        self.out = out
        self.line = bytearray()

    def keys(self, data: bytes) -> None:
        inp = self.interp.input
        assert inp is not None
        for byte in data:
            key = bytes([byte])
            if key == b"\x03":
                self.out.write(b"^C\r\n")
                self.line.clear()
                self.interp.interrupt()
            elif key == b"\x04":
                if self.line:
                    inp.feed(bytes(self.line))
                    self.line.clear()
                else:
                    inp.end_of_input()
            elif key in (b"\r", b"\n"):
                self.out.write(b"\r\n")
                inp.feed(bytes(self.line) + b"\n")
                self.line.clear()
            elif key in (b"\x7f", b"\x08"):
                while self.line and self.line[-1] & 0xC0 == 0x80:  # a UTF-8 character's continuation bytes
                    self.line.pop()
                if self.line:
                    self.line.pop()
                    self.out.write(b"\b \b")
            elif byte >= 0x20 and len(self.line) < MAX_LINE:
                self.line += key
                self.out.write(key)


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
        out = _SafeWriter(channel.write, crlf=self.pty is not None)
        err = _SafeWriter(lambda d: channel.writeExtended(connection.EXTENDED_DATA_STDERR, d), crlf=self.pty is not None)
        interp = self._interpreter(out, err)
        if self.pty is None:
            hold = _WindowHold(channel)
            interp.input = SessionInput(pause=hold.pause, resume=hold.resume)
            proto.makeConnection(_Glue(interp.input.feed, lambda: None))  # the client's data: the line's stdin
        else:  # ssh -t HOST LINE: raw keystrokes, cooked here
            interp.input = SessionInput()
            proto.makeConnection(_Glue(_CookedKeys(interp, out).keys, lambda: None))
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
        elif self.interp is not None and self.interp.input is not None and self.terminal is None:
            self.interp.input.close()  # exec: the piped input ended (final, as on a pipe)

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
        self.interp.input = SessionInput()  # typing: no pause (it would hold Ctrl-C back too), excess dropped
        self.terminal.write(BANNER.encode())
        self.channel.shell.prepare(self.interp).addBoth(lambda _: self._ready())

    def _prompt(self) -> bytes:
        assert self.interp is not None
        return self.interp.session.prompt().encode("utf-8", "replace")

    def _ready(self) -> None:
        self.busy = False
        assert self.interp is not None and self.interp.input is not None
        self.interp.input.discard()  # typed during the command but not read by it
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
                self.lineBuffer, self.lineBufferIndex = [], 0
                assert self.interp is not None
                self.interp.interrupt()
            else:
                self.terminal.write(b"^C\r\n")
                self._ready()
            return
        if self.busy:
            self._program_key(keyID, modifier)
            return
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

    def _program_key(self, keyID: Any, modifier: Any) -> None:
        """A key while a command runs: edit a line for the program, as a tty in cooked mode.

        Enter sends the line (see handle_RETURN); Ctrl-D sends what is typed
        without a newline, or, on an empty line, ends the program's input.
        History and completion are the shell's, not the program's: off.
        """
        assert self.interp is not None and self.interp.input is not None
        if keyID == b"\x04":
            if self.lineBuffer:
                self.interp.input.feed(b"".join(self.lineBuffer))
                self.lineBuffer, self.lineBufferIndex = [], 0
            else:
                self.interp.input.end_of_input()
            return
        if keyID in (self.terminal.UP_ARROW, self.terminal.DOWN_ARROW, b"\t"):
            return
        if isinstance(keyID, bytes) and len(self.lineBuffer) >= MAX_LINE:
            return
        super().keystrokeReceived(keyID, modifier)

    def handle_RETURN(self) -> None:
        if not self.busy:
            super().handle_RETURN()
            return
        # a line typed for the running program: not a command, so not in the history
        assert self.interp is not None and self.interp.input is not None
        line = b"".join(self.lineBuffer)
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.terminal.nextLine()
        if not self.interp.input.feed(line + b"\n"):
            self.terminal.write(b"\x07")  # nobody reads and the backlog is full

    def lineReceived(self, line: bytes) -> None:
        assert self.interp is not None
        self.busy = True
        self.ps = (b"", b"")  # a redraw while the command runs shows no prompt
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


class TelnetLogin(AuthenticatingTelnetProtocol):
    """conch's telnet login, made to work with any client.

    conch waits for the client's answer to ``WILL ECHO`` (sent to hide the
    password) before it answers ``WONT ECHO`` and logs in; a client that
    never answers option negotiation (``nc``, a raw socket) left the first
    negotiation pending, the second failed with AlreadyNegotiating and the
    login never happened.  A client refusing with DONT ECHO failed the same
    way (AlreadyDisabled).  Here echo is given back only if the client took
    it, negotiation failures are ignored, and the login goes ahead without
    waiting.  Lines typed before the login ends are kept for the shell.
    """

    def __init__(self, portal: Any, login_grace: float | None = LOGIN_GRACE, clock: Any = None) -> None:
        super().__init__(portal)
        self.early: list[bytes] = []
        self.login_grace = login_grace
        self.clock = clock
        self.grace: _LoginGrace | None = None

    def connectionMade(self) -> None:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        self.grace = _LoginGrace(clock, self.login_grace, self._grace_expired)
        super().connectionMade()

    def _grace_expired(self) -> None:
        tcp = getattr(self.transport, "transport", None)
        log.info("telnet: closing the connection from {peer}: not logged in within {t:g}s", peer=_peer(tcp),
                 t=self.login_grace)
        self.transport.write(b"\nLogin timed out\n")
        self.transport.loseConnection()
        if self.grace is not None:
            _cut_later(self.grace.clock, tcp)

    def connectionLost(self, reason: Any = None) -> None:
        if self.grace is not None:
            self.grace.stop()
        super().connectionLost(reason)

    def telnet_User(self, line: bytes) -> str:
        self.username = line.strip()
        self.transport.will(ECHO).addErrback(lambda f: None)
        self.transport.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> None:
        username, password = self.username, line.rstrip(b"\r")
        del self.username
        echo = self.transport.getOptionState(ECHO).us
        if echo.negotiating:  # the client never answered WILL ECHO: stop waiting, we do not echo
            pending, echo.onResult = echo.onResult, None
            echo.negotiating, echo.state = False, "no"
            if pending is not None:
                pending.errback(Failure(OptionRefused(ECHO)))
        elif echo.state == "yes":  # it let us echo (hiding the password): give echo back
            self.transport.wont(ECHO).addErrback(lambda f: None)
        self.transport.write(b"\n")
        self.state = "Discard"  # before logging in: a successful login (maybe at once) moves on to "Command"
        d = self.portal.login(credentials.UsernamePassword(username, password), None, ITelnetProtocol)
        d.addCallbacks(self._cbLogin, self._ebLogin)

    def telnet_Discard(self, line: bytes) -> None:
        self.early.append(line)

    def _cbLogin(self, ial: Any) -> None:
        if self.grace is not None:
            self.grace.stop()
        super()._cbLogin(ial)
        early, self.early = self.early, []
        rest = self.clearLineBuffer()
        if early or rest:
            self.protocol.dataReceived(b"".join(line + b"\n" for line in early) + rest)

    def _ebLogin(self, failure: Failure) -> None:
        self.early = []
        self.transport.write(b"\nLogin refused\n")
        self.transport.write(b"Username: ")
        self.state = "User"


class TelnetShell(TelnetProtocol):
    """A logged-in telnet user: lines in, output out (the telnet client edits the line).

    While a command runs, what the user types is the program's input (the
    session's SessionInput); Ctrl-D (a raw 0x04, or telnet's EOF command)
    ends it; Ctrl-C (0x03 or telnet's IP command) interrupts.  Between
    commands, complete lines are run in order.
    """

    def __init__(self, user: str, shell: "ShellService") -> None:
        self.user = user
        self.shell = shell
        self.buffer = b""
        #: a command runs: what arrives is its input
        self.running = False
        #: the first prompt was shown (lines typed before it wait in the buffer)
        self.started = False

    def connectionMade(self) -> None:
        out = _SafeWriter(self.transport.write)  # TelnetTransport turns \n into \r\n itself
        self.interp = self.shell.new_interpreter(self.user, out, out)
        self.interp.input = SessionInput()
        out.write(BANNER.encode())
        self.shell.prepare(self.interp).addBoth(lambda _: self._prompt())

    def _prompt(self) -> None:
        self.running, self.started = False, True
        self.interp.input.discard()
        self.transport.write(self.interp.session.prompt().encode("utf-8", "replace"))
        self._drain()

    def unhandledCommand(self, command: bytes, argument: Any) -> None:
        if command in (IP, BRK):
            # The client (which echoed ^C itself) follows IP with DO TIMING-MARK and drops our
            # output until the answer, written right after this: so answer on the next turn.
            self.shell.reactor.callLater(0, self._interrupt, b"\n")
        elif command == LINEMODE_EOF:  # IAC EOF (236)
            self.dataReceived(b"\x04")

    def _interrupt(self, echo: bytes) -> None:
        self.transport.write(echo)
        if self.running:
            self.interp.interrupt()
        else:  # at the prompt: drop the line being typed
            self.buffer = b""
            self.transport.write(self.interp.session.prompt().encode("utf-8", "replace"))

    def dataReceived(self, data: bytes) -> None:
        data = data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\n").replace(b"\r", b"\n")
        if self.running:
            for piece in re.split(b"([\x03\x04])", data):
                if piece == b"\x03":
                    self._interrupt(b"^C\n")
                elif piece == b"\x04":
                    self.interp.input.end_of_input()
                elif piece:
                    self.interp.input.feed(piece)
            return
        if b"\x03" in data:
            self._interrupt(b"^C\n")
            data = data.rpartition(b"\x03")[2]
        if data.startswith(b"\x04") and not self.buffer:  # Ctrl-D on an empty line logs out
            self.transport.loseConnection()
            return
        self.buffer += data.replace(b"\x04", b"")
        if len(self.buffer) > MAX_LINE and b"\n" not in self.buffer:
            self.buffer = b""
            self.interp.error(f"oneos: line too long (the limit is {MAX_LINE} characters)")
        self._drain()

    def _drain(self) -> None:
        if self.running or not self.started or b"\n" not in self.buffer:
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


class ShellService(service.Service):
    """A front door: SSH (and telnet when configured) on this runtime, the shell for each session.

    Every runtime runs one (a session only needs RPC to the kernel services),
    so a user connects to the nearest runtime and a leader change never moves
    or drops the door.  Users, keys and the host key come from the tree
    (:mod:`oneos.shell.users`), so every door knows the same people and shows
    the same host key; until the tree can be reached the door waits, saying
    why in the log, and opens as soon as it can.
    """

    name = "shell"

    def __init__(self, grid: Grid, system_fs: Any, ssh: str, telnet: str, home: Path, reactor: Any,
                 login_grace: float | None = LOGIN_GRACE) -> None:
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
        self.portal = cred_portal.Portal(ShellRealm(self), [PublicKeyChecker(users, self.home, self.delay),
                                                           PasswordChecker(users, self.delay)])
        #: fires once the doors listen (or failed to)
        self.opened: defer.Deferred = defer.Deferred()
        self._retry: Any = None
        self._delay = RETRY_DELAY
        #: host:port of the SSH door once it listens
        self.ssh_address = ""

    def new_interpreter(self, user: str, out: Any, err: Any) -> Interpreter:
        """A session's interpreter: its file operations are the user's, checked against owners and modes."""
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

    def ssh_factory(self, key: keys.Key) -> factory.SSHFactory:
        f = factory.SSHFactory()
        f.protocol = _NoDelaySSHTransport
        f.login_grace = self.login_grace  # type: ignore[attr-defined]
        f.clock = self.reactor  # type: ignore[attr-defined]
        f.throttle = self.throttle  # type: ignore[attr-defined]
        f.services = {**f.services, b"ssh-userauth": _ThrottledUserAuth}
        f.portal = self.portal
        f.publicKeys = {key.sshType(): key.public()}
        f.privateKeys = {key.sshType(): key}
        return f

    def telnet_factory(self) -> protocol.ServerFactory:
        f = protocol.ServerFactory()
        f.protocol = lambda: TelnetTransport(TelnetLogin, self.portal, self.login_grace, self.reactor)  # type: ignore[assignment]
        return f

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
                log.warn("shell not serving yet: {error}; trying again in {delay:.0f}s", error=describe(f.value),
                         delay=self._delay)
            self._retry = self.reactor.callLater(self._delay, self._open)
            self._delay = min(RETRY_MAX, self._delay * 2)

        d.addErrback(failed)

    async def _prepare_and_listen(self) -> None:
        for line in await migrate_home(self.system_fs, self.home):
            log.info("moved shell users into the tree: {what}", what=line)
        key = await network_host_key(self.system_fs, self.home) if self.ssh_endpoint else None
        if not self.running:
            return
        for name, endpoint, make in (("ssh", self.ssh_endpoint, lambda: self.ssh_factory(key)),
                                     ("telnet", self.telnet_endpoint, self.telnet_factory)):
            if not endpoint:
                continue
            try:
                port = await serverFromString(self.reactor, endpoint).listen(make())
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

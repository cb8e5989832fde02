"""The shell in the browser's terminal: the SSH terminal's session code over websocket binary frames.

A :class:`WebTerminal` is what an SSH ``shell`` request with a pty gets
(:class:`oneos.shell.ssh.ShellTerminal` on twisted.conch's insults: prompt,
line editing, history, completion, Ctrl-C), with the logged-in user's
interpreter from the shell service (``new_interpreter``/``prepare``/
``forget``).  What the shell writes goes into the terminal's scrollback, a
ring of its last 256 KiB (:class:`Scrollback`), and from there to the
websocket the terminal is attached to (its *peer*), as binary frames
``[N][bytes]``; what the browser types arrives the same way and is fed to
insults.

Nothing waits on the browser: while the peer is congested (it does not
read), output only goes into the ring, and :meth:`WebTerminal.catch_up`
sends what the peer missed once it reads again (with a marker if the ring
had to drop some).  A terminal whose websocket goes away stays alive for
:data:`REATTACH` seconds (:class:`TerminalRegistry`); ``term.open`` with its
key on a new websocket of the same login session reattaches it, and the
scrollback is sent first.  ``term.close``, ``exit``/Ctrl-D in the shell, the
end of the login session (logout, expiry) or the window passing end it: the
interpreter hangs up (its programs are stopped, as when an SSH client
vanishes) and is forgotten.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.conch.insults import insults
from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.desktop.protocol import DesktopError, term_frame
from oneos.shell.ssh import ShellTerminal

log = Logger()

#: Bytes of output a terminal keeps, to send again after a reattach (or to a peer that fell behind).
SCROLLBACK = 256 * 1024
#: Seconds a terminal whose websocket went away stays alive, waiting to be reattached.
REATTACH = 60.0
#: Terminals one websocket may have open.
MAX_PER_CONNECTION = 16
#: Terminals (attached or waiting) one login session may have.
MAX_PER_SESSION = 32
#: Terminals one runtime serves at most.
MAX_TERMINALS = 256
#: Largest binary frame sent to the browser.
FRAME = 64 * 1024
#: What a peer that fell too far behind sees where output was dropped.
DROPPED = b"\r\n\x1b[7m[oneos: output dropped while the browser was not reading]\x1b[0m\r\n"


class Scrollback:
    """The last *limit* bytes written, with absolute offsets (bytes ever written) to resume from."""

    def __init__(self, limit: int = SCROLLBACK) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        #: offset of the first byte still kept
        self.start = 0

    @property
    def end(self) -> int:
        """Offset just past the last byte written."""
        return self.start + self._size

    def append(self, data: bytes) -> None:
        if not data:
            return
        if len(data) > self.limit:
            self.start += self._size + len(data) - self.limit
            data = data[-self.limit :]
            self._chunks.clear()
            self._size = 0
        self._chunks.append(data)
        self._size += len(data)
        while self._size > self.limit:
            first = self._chunks[0]
            excess = self._size - self.limit
            if len(first) <= excess:
                self._chunks.popleft()
                self._size -= len(first)
                self.start += len(first)
            else:
                self._chunks[0] = first[excess:]
                self._size -= excess
                self.start += excess

    def since(self, offset: int) -> tuple[bytes, bool]:
        """What was written from *offset* on, and whether some of it is no longer kept."""
        lost = offset < self.start
        data = b"".join(self._chunks)
        return data[max(0, offset - self.start) :], lost


class TerminalPeer(Protocol):
    """What a terminal needs of the websocket it is attached to (:class:`oneos.desktop.ws.Connection`)."""

    @property
    def congested(self) -> bool:
        """The browser is behind: send nothing now, :meth:`WebTerminal.catch_up` will be called."""
        ...

    def send_binary(self, payload: bytes) -> None: ...

    def terminal_ended(self, number: int, status: int) -> None:
        """The terminal *number* ended (the shell exited, or it was closed); forget it."""
        ...

    def terminal_taken(self, number: int) -> None:
        """The terminal *number* was reattached to another websocket; forget it without ending it."""
        ...


class _Transport:
    """insults' transport: what the shell writes goes to the terminal's scrollback and peer."""

    disconnecting = False

    def __init__(self, terminal: WebTerminal) -> None:
        self._terminal = terminal

    def write(self, data: bytes) -> None:
        self._terminal._output(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._terminal._output(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._terminal.close()

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


class _Channel:
    """What :class:`ShellTerminal` asks of its SSH session channel: the shell, an interpreter, how to end."""

    def __init__(self, terminal: WebTerminal, shell: Any, user: str) -> None:
        self._web = terminal
        self.shell = shell
        self.user = user
        #: set by ShellTerminal.connectionMade
        self.terminal: ShellTerminal | None = None
        self.interp: Any = None
        self.writers: list[Any] = []

    def _interpreter(self, out: Any, err: Any) -> Any:
        self.writers = [out, err]
        self.interp = self.shell.new_interpreter(self.user, out, err)
        return self.interp

    def _end(self, status: int) -> None:
        """``exit`` or Ctrl-D: the session is over."""
        self._web.close(status)


class WebTerminal:
    """One shell session in a browser terminal."""

    def __init__(
        self,
        registry: TerminalRegistry,
        shell: Any,
        user: str,
        session_id: str,
        cols: int,
        rows: int,
        key: str | None = None,
    ) -> None:
        self.registry = registry
        self.user = user
        self.session_id = session_id
        #: the secret that reattaches it from a new websocket of the same login
        self.key = key or secrets.token_urlsafe(24)
        self.scrollback = Scrollback(registry.scrollback)
        self.peer: TerminalPeer | None = None
        #: its number on the peer's websocket
        self.number = -1
        #: scrollback offset the peer has been sent up to
        self.sent = 0
        self.closed = False
        self.status = 0
        self._channel = _Channel(self, shell, user)
        self._server = insults.ServerProtocol(ShellTerminal, self._channel)
        self._server.makeConnection(_Transport(self))
        self.resize(cols, rows)

    @property
    def shell_terminal(self) -> ShellTerminal | None:
        """The ShellTerminal insults made (None once closed)."""
        return cast(ShellTerminal | None, self._server.terminalProtocol)

    # -- the browser's side ----------------------------------------------------------------------
    def input(self, data: bytes) -> None:
        """What the user typed (keys, escape sequences, a paste)."""
        if not self.closed and data:
            self._server.dataReceived(data)

    def resize(self, cols: int, rows: int) -> None:
        terminal = self.shell_terminal
        if terminal is not None:
            terminal.terminalSize(cols, rows)

    # -- the peer ------------------------------------------------------------------------------
    def attach(self, peer: TerminalPeer, number: int) -> None:
        """Send to *peer* as terminal *number* from now on, starting with the whole scrollback."""
        old = self.peer
        if old is not None and old is not peer:
            old.terminal_taken(self.number)
        self.peer, self.number = peer, number
        self.sent = self.scrollback.start
        self.registry._attached(self)
        self.catch_up()

    def detach(self) -> None:
        """The peer's websocket went away: keep running, waiting for a reattach (the registry's window)."""
        if self.peer is None or self.closed:
            return
        self.peer = None
        self.registry._detached(self)

    def catch_up(self) -> None:
        """Send the peer what it has not had yet (it reads again, or was just attached)."""
        peer = self.peer
        if peer is None or peer.congested or self.sent == self.scrollback.end:
            return
        data, lost = self.scrollback.since(self.sent)
        self.sent = self.scrollback.end
        if lost and self.scrollback.start > 0:
            data = DROPPED + data
        self._send(peer, data)

    def _send(self, peer: TerminalPeer, data: bytes) -> None:
        for i in range(0, len(data), FRAME):
            peer.send_binary(term_frame(self.number, data[i : i + FRAME]))

    def _output(self, data: bytes) -> None:
        if not data:
            return
        self.scrollback.append(data)
        peer = self.peer
        if peer is not None and not peer.congested:
            if self.sent == self.scrollback.end - len(data):
                self.sent = self.scrollback.end
                self._send(peer, data)
            else:
                self.catch_up()

    # -- the end -------------------------------------------------------------------------------
    def close(self, status: int | None = None) -> None:
        """End the shell session: its programs are stopped, its interpreter forgotten."""
        if self.closed:
            return
        self.closed = True
        interp = self._channel.interp
        if status is None:
            status = getattr(getattr(interp, "session", None), "status", 0) or 0
        self.status = int(status)
        for writer in self._channel.writers:
            writer.closed = True
        try:
            self._server.connectionLost(Failure(error.ConnectionDone("the terminal was closed")))
        except Exception:
            log.failure("closing a desktop terminal's shell failed")
        if interp is not None:
            self._channel.shell.forget(interp)
        self.registry._forget(self)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.terminal_ended(self.number, self.status)


class TerminalRegistry:
    """Every desktop terminal of this runtime, by key: limits, the reattach window, the end of a login."""

    def __init__(
        self,
        clock: Any,
        shell: Any,
        *,
        window: float = REATTACH,
        scrollback: int = SCROLLBACK,
        per_session: int = MAX_PER_SESSION,
        limit: int = MAX_TERMINALS,
    ) -> None:
        self.clock = clock
        self.shell = shell
        self.window = window
        self.scrollback = scrollback
        self.per_session = per_session
        self.limit = limit
        self._by_key: dict[str, WebTerminal] = {}
        self._timers: dict[str, Any] = {}
        #: login sessions whose end we listen for
        self._sessions: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_key)

    def terminals(self, session_id: str | None = None) -> list[WebTerminal]:
        return [t for t in self._by_key.values() if session_id is None or t.session_id == session_id]

    def open(self, session: Any, cols: int, rows: int) -> WebTerminal:
        """A new shell session for *session*'s user (a :class:`~oneos.desktop.sessions.WebSession`)."""
        if len(self._by_key) >= self.limit:
            raise DesktopError(f"this runtime already serves {self.limit} terminals", "EBUSY")
        if len(self.terminals(session.id)) >= self.per_session:
            raise DesktopError(
                f"this login already has {self.per_session} terminals (close some, or wait a minute for those of "
                "closed tabs to end)",
                "EBUSY",
            )
        self._watch_session(session)
        terminal = WebTerminal(self, self.shell, session.user, session.id, cols, rows)
        if terminal.closed:  # the shell ended at once (nothing to run it on)
            raise DesktopError("the shell session ended as it started", "EIO")
        self._by_key[terminal.key] = terminal
        self._detached(terminal)  # until attached, it waits like one whose websocket went away
        return terminal

    def find(self, key: str, session: Any) -> WebTerminal:
        """The live terminal *key* names, if it belongs to *session*; ENOENT otherwise (ended, or never was)."""
        terminal = self._by_key.get(key)
        if terminal is None or terminal.closed or terminal.session_id != session.id:
            raise DesktopError("no terminal to resume with that key (it ended)", "ENOENT")
        return terminal

    def end_session(self, session_id: str) -> None:
        """The login session ended (logout, expiry): every terminal of it ends now."""
        self._sessions.discard(session_id)
        for terminal in self.terminals(session_id):
            terminal.close()

    def close_all(self) -> None:
        for terminal in list(self._by_key.values()):
            terminal.close()

    # -- called by the terminals ----------------------------------------------------------------
    def _watch_session(self, session: Any) -> None:
        if session.id in self._sessions:
            return
        self._sessions.add(session.id)
        on_end: list[Callable[[], object]] = session.on_end
        on_end.append(lambda: self.end_session(session.id))

    def _attached(self, terminal: WebTerminal) -> None:
        timer = self._timers.pop(terminal.key, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _detached(self, terminal: WebTerminal) -> None:
        self._attached(terminal)
        self._timers[terminal.key] = self.clock.callLater(self.window, self._expired, terminal)

    def _expired(self, terminal: WebTerminal) -> None:
        self._timers.pop(terminal.key, None)
        if terminal.peer is None:
            log.info(
                "desktop terminal of {user} ended: not reattached within {t:g}s", user=terminal.user, t=self.window
            )
            terminal.close()

    def _forget(self, terminal: WebTerminal) -> None:
        self._attached(terminal)
        if self._by_key.get(terminal.key) is terminal:
            del self._by_key[terminal.key]

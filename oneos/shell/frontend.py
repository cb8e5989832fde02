"""What the shell's front ends (:mod:`oneos.shell.ssh`, :mod:`oneos.shell.telnet`) share.

The session writer that survives a vanished client, the login grace
timer, the banner, and how typed input reaches a running program
(:func:`to_program`).  The line discipline they share is
:mod:`oneos.shell.lines`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oneos.shell.lines import EndOfInput, Event, Line, Text
from oneos.shell.session import SessionInput

#: Seconds a connection told to go may take to read the goodbye before it is cut.
GOODBYE = 5.0
BANNER = "OneOS shell. Type 'help' for the built-ins; anything else runs on the grid.\n"
#: the prompt of the lines after the first of an unfinished construct (bash's PS2), on every front end
CONTINUATION_PROMPT = "> "


class SafeWriter:
    """Writes to a channel that may already be gone (the client vanished)."""

    def __init__(self, write: Callable[[bytes], Any], crlf: bool = False) -> None:
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


class LoginGrace:
    """A connection's deadline to log in; on expiry, say why, close, and cut it if it will not close."""

    def __init__(self, clock: Any, seconds: float | None, expire: Callable[[], Any]) -> None:
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


def cut_later(clock: Any, tcp: Any) -> None:
    """Abort *tcp* if a polite close has not finished soon (a peer that reads nothing)."""

    def cut() -> None:
        if getattr(tcp, "connected", False) and hasattr(tcp, "abortConnection"):
            tcp.abortConnection()

    clock.callLater(GOODBYE, cut)


def peer_address(tcp: Any) -> str:
    """``HOST:PORT`` of the other end of *tcp*, for the log."""
    peer = tcp.getPeer() if tcp is not None else None
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def to_program(event: Event, inp: SessionInput) -> bool:
    """Hand what was typed while a command runs to its input: a line (with its LF), text, or the end.

    False when the input refused it (nobody reads and the backlog is full).
    """
    if isinstance(event, Line):
        return inp.feed(event.data + b"\n")
    if isinstance(event, Text):
        return inp.feed(event.data)
    if isinstance(event, EndOfInput):
        inp.end_of_input()
    return True

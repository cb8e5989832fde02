"""The shell's line discipline: what the bytes a client sends mean, with no I/O.

Every front end turns what its client sends into the same few events, and
acts on them (runs a line, feeds the running program, interrupts it):

* :class:`Line`: a complete line (without its end);
* :class:`Text`: bytes for the running program that end no line (Ctrl-D
  after some typing sends what is typed; telnet input while a command runs);
* :class:`Interrupt`: Ctrl-C;
* :class:`EndOfInput`: Ctrl-D on an empty line (the end of the program's
  input; at a prompt, logout);
* :class:`Echo`: what to show the client, for a terminal cooked here;
* :class:`TooLong`: a line grew past :data:`~oneos.shell.parser.MAX_LINE`
  and was dropped.

One discipline per kind of client:

* :class:`CookedLine`: a raw client terminal made cooked, as a tty in
  cooked mode does (``ssh -t HOST LINE``): echo, Enter (CR or LF),
  backspace (a whole UTF-8 character), Ctrl-C, Ctrl-D;
* :class:`ScriptLines`: a stream with no terminal (``ssh -T HOST < script``):
  LF ends a line, no byte is a key; the last line needs no LF;
* :class:`TelnetLines`: a telnet client, which edits the line itself: CR LF,
  CR NUL and a lone CR end a line; Ctrl-C and Ctrl-D are keys;
* :func:`cooked_key`: the rules of Ctrl-C, Ctrl-D and Enter for one key with
  a line typed, shared by :class:`CookedLine` and the interactive SSH
  terminal (whose line editing is :mod:`oneos.shell.editor`).

:class:`ScriptLines` and :class:`TelnetLines` keep the complete lines typed
ahead of the commands until the front end takes the next one
(:meth:`~ScriptLines.next_line`), one per command, as a tty's input queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oneos.shell.parser import MAX_LINE

CTRL_C = b"\x03"
CTRL_D = b"\x04"
#: Keys that end a line at a cooked terminal.
ENTER = (b"\r", b"\n")
#: Keys that erase the last character at a cooked terminal (DEL, BS).
ERASE = (b"\x7f", b"\x08")


@dataclass(frozen=True)
class Line:
    """A complete line, without its end."""

    data: bytes


@dataclass(frozen=True)
class Text:
    """Bytes for the running program that end no line."""

    data: bytes


@dataclass(frozen=True)
class Echo:
    """Bytes to show the client (a terminal cooked here)."""

    data: bytes


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C."""


@dataclass(frozen=True)
class EndOfInput:
    """Ctrl-D on an empty line."""


@dataclass(frozen=True)
class TooLong:
    """A line grew past the limit and was dropped."""


INTERRUPT, END_OF_INPUT, TOO_LONG = Interrupt(), EndOfInput(), TooLong()

Event = Line | Text | Echo | Interrupt | EndOfInput | TooLong


def cooked_key(key: bytes, typed: bytes) -> list[Event] | None:
    """What Ctrl-C, Ctrl-D and Enter mean with *typed* on the line, as at a tty in cooked mode.

    Ctrl-C interrupts (the typed line is dropped); Enter sends the line;
    Ctrl-D sends what is typed, without a line end, or on an empty line
    ends the input.  None for any other key (an editing key).
    """
    if key == CTRL_C:
        return [INTERRUPT]
    if key == CTRL_D:
        return [Text(typed)] if typed else [END_OF_INPUT]
    if key in ENTER:
        return [Line(typed)]
    return None


class CookedLine:
    """A raw client terminal made cooked here, as a tty in cooked mode (``ssh -t HOST LINE``).

    The client's terminal is raw: every key arrives as it is typed, and
    nothing is shown unless it is echoed.  Printable keys (and UTF-8 bytes)
    are kept and echoed, up to *limit* per line; DEL and BS erase the last
    character (all its UTF-8 bytes); Enter (CR or LF) sends the line;
    Ctrl-C interrupts; Ctrl-D as :func:`cooked_key` says.  Other control
    bytes (escape sequences, tab) are dropped.  Echoes end lines with CR LF
    (the client's terminal adds no CR).
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        #: the line being typed
        self.line = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            key = bytes([byte])
            control = cooked_key(key, bytes(self.line))
            if control is not None:
                if key == CTRL_C:
                    _echo(events, b"^C\r\n")
                elif key in ENTER:
                    _echo(events, b"\r\n")
                events.extend(control)
                self.line.clear()
            elif key in ERASE:
                while self.line and self.line[-1] & 0xC0 == 0x80:  # a UTF-8 character's continuation bytes
                    self.line.pop()
                if self.line:
                    self.line.pop()
                    _echo(events, b"\b \b")
            elif byte >= 0x20 and len(self.line) < self.limit:
                self.line += key
                _echo(events, key)
        return events


def _echo(events: list[Event], data: bytes) -> None:
    """Add an echo, joined to the previous one (one write for a burst of keys)."""
    if events and isinstance(events[-1], Echo):
        events[-1] = Echo(events[-1].data + data)
    else:
        events.append(Echo(data))


class ScriptLines:
    """Lines of a stream with no terminal (``echo 'ls; pwd' | ssh -T HOST``): the input is a script.

    LF ends a line and no byte is a key.  Complete lines wait here until
    taken (:meth:`next_line`).  A line growing past *limit* before its LF
    is dropped, up to and including its LF, with one :class:`TooLong`.
    :meth:`end` makes a last line without LF a line.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._partial = b""
        self._lines: list[bytes] = []
        #: the rest of an over-long line is being dropped
        self._skipping = False

    def feed(self, data: bytes) -> list[Event]:
        """Take *data*; a TooLong event if a line was dropped."""
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            if self._skipping:
                self._skipping = False
                continue
            self._lines.append(line)
        if len(self._partial) > self.limit:
            self._partial, self._skipping = b"", True
            return [TOO_LONG]
        return []

    def end(self) -> None:
        """The input ended: what follows the last LF is a line too."""
        if self._partial and not self._skipping:
            self._lines.append(self._partial)
        self._partial = b""

    @property
    def waiting(self) -> bool:
        """Complete lines wait to be taken."""
        return bool(self._lines)

    def next_line(self) -> bytes | None:
        return self._lines.pop(0) if self._lines else None


class TelnetLines:
    """What a telnet client sends: it edits the line itself, so nothing is echoed or erased here.

    CR LF, CR NUL and a lone CR end a line, as LF does.  What a piece of
    data means depends on whether a command runs (``feed(data, running)``):

    * at the prompt, complete lines wait here until taken (:meth:`next_line`);
      Ctrl-C interrupts and drops everything typed before it (lines waiting
      too); Ctrl-D at the start of the data, with nothing typed or waiting,
      is :class:`EndOfInput` (logout), any other Ctrl-D is dropped; a line
      growing past *limit* with no line waiting is dropped (:class:`TooLong`);
    * while a command runs, what arrives is the program's input as it comes
      (:class:`Text`, line ends included), Ctrl-C interrupts and every
      Ctrl-D ends the input (:class:`EndOfInput`).
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._partial = b""
        self._lines: list[bytes] = []

    def feed(self, data: bytes, running: bool) -> list[Event]:
        data = data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\n").replace(b"\r", b"\n")
        events: list[Event] = []
        if running:
            for piece in re.split(b"([\x03\x04])", data):
                if piece == CTRL_C:
                    events.append(INTERRUPT)
                elif piece == CTRL_D:
                    events.append(END_OF_INPUT)
                elif piece:
                    events.append(Text(piece))
            return events
        if CTRL_C in data:
            events.append(INTERRUPT)
            self.discard()
            data = data.rpartition(CTRL_C)[2]
        if data.startswith(CTRL_D) and not self._partial and not self._lines:
            events.append(END_OF_INPUT)
            return events
        *complete, self._partial = (self._partial + data.replace(CTRL_D, b"")).split(b"\n")
        self._lines.extend(complete)
        if len(self._partial) > self.limit and not self._lines:
            self._partial = b""
            events.append(TOO_LONG)
        return events

    def discard(self) -> None:
        """Drop everything typed (Ctrl-C at the prompt)."""
        self._partial = b""
        self._lines.clear()

    def next_line(self) -> bytes | None:
        return self._lines.pop(0) if self._lines else None

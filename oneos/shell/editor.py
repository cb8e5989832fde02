"""The interactive shell's line editor, with no I/O: the line being typed, what each key does, how it is drawn.

The terminal (:mod:`oneos.shell.terminal`) turns what the client sends into
keys and hands them here, then writes what :class:`View` says; so every key,
every cursor position and every byte drawn is decided by code that tests
can drive without a terminal:

* :class:`KeyDecoder`: the bytes typed, UTF-8 decoded incrementally (a
  character split across keystrokes or packets arrives whole).  A byte that
  is not UTF-8 becomes a lone surrogate (U+DC80..U+DCFF, Python's
  ``surrogateescape``): it is shown as U+FFFD and the terminal refuses a line
  that holds one (:func:`has_invalid`), instead of running a command with a
  silently changed file name.  The program-input line keeps the bytes exact.
* :class:`LineEditor`: the line as code points, the cursor, the kill ring
  (:class:`KillRing`), the history (:class:`History`) with Up/Down and the
  reverse incremental search (Ctrl-R).  :meth:`LineEditor.press` takes one
  key (a character, or a :class:`Key`) and says what the terminal must do
  (:class:`Action`).
* :class:`View`: where the line is on the screen, in display cells (a wide
  CJK character takes 2, a combining mark 0; :func:`char_cells`), and the
  least output that turns what is shown into the new line, wrapping at the
  terminal's width included.
* completion helpers: :func:`completion_word` (which word the cursor is in,
  unquoted, and what kind: command, path, placement), :func:`completed`
  (that word written back with a candidate, quoted as it was) and
  :func:`columns` (a candidate listing);
* the history file's format: :func:`parse_history`, :func:`history_bytes`,
  :func:`saved_in_history`.

The key table is in docs/shell.md ("Line editing").
"""

from __future__ import annotations

import codecs
import enum
import functools
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from oneos.shell.parser import MAX_LINE

#: Lines kept in the history (the session's and the history file's).
HISTORY_LINES = 1000
#: Largest history file written: the tree's one-message writes carry 256 KiB; the oldest lines go first.
HISTORY_BYTES = 192 * 1024
#: Killed texts kept for Ctrl-Y / Alt-Y.
KILL_RING = 16
#: The width assumed when the client says none (a terminal of size 0): lines are then never wrapped here.
UNKNOWN_WIDTH = 1 << 20

_INVALID_FIRST, _INVALID_LAST = "\udc80", "\udcff"
_REPLACEMENT = "\ufffd"


# -- characters on a terminal ---------------------------------------------------------------------


def is_invalid(ch: str) -> bool:
    """Whether *ch* stands for an input byte that was not UTF-8 (see :class:`KeyDecoder`)."""
    return _INVALID_FIRST <= ch <= _INVALID_LAST


def has_invalid(text: str) -> bool:
    """Whether *text* holds bytes that were not UTF-8."""
    return any(is_invalid(ch) for ch in text) if _has_surrogate(text) else False


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@functools.lru_cache(maxsize=4096)
def char_cells(ch: str) -> int:
    """Display cells *ch* takes on a terminal: 2 for wide (East Asian W/F), 0 for marks and format characters.

    Control characters are drawn in caret notation (``^A``, 2 cells) and
    invalid input bytes as U+FFFD (1 cell): see :func:`shown`.
    """
    if is_invalid(ch):
        return 1
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return 2
    if 0x80 <= code < 0xA0:
        return 1
    if code == 0xAD:  # soft hyphen: terminals draw it
        return 1
    if unicodedata.category(ch) in ("Mn", "Me", "Cf") or 0x1160 <= code <= 0x11FF:
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def zero_width(ch: str) -> bool:
    """A character drawn on the one before it (a combining mark, ZWJ, a variation selector)."""
    return char_cells(ch) == 0


def shown(text: str) -> str:
    """*text* as it is written to the terminal: controls in caret notation, invalid bytes as U+FFFD."""
    if text.isprintable() and not _has_surrogate(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if is_invalid(ch) or 0x80 <= code < 0xA0 or 0xD800 <= code <= 0xDFFF:
            out.append(_REPLACEMENT)
        elif code < 0x20 or code == 0x7F:
            out.append("^" + chr(code ^ 0x40))
        else:
            out.append(ch)
    return "".join(out)


def cells(text: str) -> int:
    """Display cells of *text* on one row (no wrapping)."""
    return sum(char_cells(ch) for ch in text)


class KeyDecoder:
    """Typed bytes to characters, incrementally: a UTF-8 sequence may arrive split over several keystrokes.

    Bytes that are not UTF-8 come out as lone surrogates (``surrogateescape``),
    one per byte, so they can be shown, refused, or handed back exactly
    (``text.encode("utf-8", "surrogateescape")``).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        """A key that is not a byte came (an arrow): an unfinished sequence before it is invalid."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

    @property
    def pending(self) -> bool:
        """Part of a character has arrived."""
        return bool(self._decoder.getstate()[0])


def encoded(text: str) -> bytes:
    """A line as the bytes typed (invalid bytes given back as they came)."""
    return text.encode("utf-8", "surrogateescape")


# -- keys and what they do ------------------------------------------------------------------------


class Key(enum.Enum):
    """Keys that are not a character (the terminal maps escape sequences to these)."""

    UP = "up"
    DOWN = "down"
    LEFT = "left"
    RIGHT = "right"
    HOME = "home"
    END = "end"
    DELETE = "delete"
    CTRL_LEFT = "ctrl-left"
    CTRL_RIGHT = "ctrl-right"
    ALT_B = "alt-b"
    ALT_F = "alt-f"
    ALT_D = "alt-d"
    ALT_Y = "alt-y"
    ALT_BACKSPACE = "alt-backspace"


class Action(enum.Enum):
    """What the terminal does after a key (besides drawing the line again)."""

    #: nothing more
    NONE = "none"
    #: the line is complete (Enter): take it (:meth:`LineEditor.take`)
    ACCEPT = "accept"
    #: Ctrl-C: drop the line
    INTERRUPT = "interrupt"
    #: Ctrl-D on an empty line
    EOF = "eof"
    #: Tab
    COMPLETE = "complete"
    #: Ctrl-L: clear the screen, draw the line at the top
    CLEAR = "clear"
    #: the key could do nothing (ring the bell)
    BELL = "bell"


CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E, CTRL_F, CTRL_G = "\x01", "\x02", "\x03", "\x04", "\x05", "\x06", "\x07"
CTRL_K, CTRL_L, CTRL_N, CTRL_P, CTRL_R, CTRL_U, CTRL_W, CTRL_Y = (
    "\x0b",
    "\x0c",
    "\x0e",
    "\x10",
    "\x12",
    "\x15",
    "\x17",
    "\x19",
)
TAB, BACKSPACE, ENTER = "\t", "\x7f", "\r"
_ENTER = ("\r", "\n")
_BACKSPACE = ("\x7f", "\x08")

KeyLike = str | Key


class History:
    """Lines run earlier, oldest first, at most *limit*.

    *entries* may be a list someone else appends to (the session's history,
    which the interpreter keeps): the editor only reads it, and
    :meth:`add` is for callers that keep no other history.
    """

    def __init__(self, entries: list[str] | None = None, limit: int = HISTORY_LINES) -> None:
        self.entries: list[str] = entries if entries is not None else []
        self.limit = limit
        #: the last reverse search's text (Ctrl-R Ctrl-R searches it again)
        self.last_search = ""

    def add(self, line: str) -> None:
        if line.strip():
            self.entries.append(line)
            del self.entries[: -self.limit]

    def find(self, query: str, before: int) -> tuple[int, int] | None:
        """The newest entry older than *before* holding *query*: (its index, where the last match starts)."""
        for index in range(min(before, len(self.entries)) - 1, -1, -1):
            at = self.entries[index].rfind(query)
            if at >= 0:
                return index, at
        return None


class KillRing:
    """Texts cut by the kill keys, newest last; consecutive kills grow one entry (as readline)."""

    def __init__(self, size: int = KILL_RING) -> None:
        self.size = size
        self.texts: list[str] = []
        self._at = -1

    def push(self, text: str) -> None:
        self.texts.append(text)
        del self.texts[: -self.size]
        self._at = len(self.texts) - 1

    def grow(self, text: str, before: bool) -> None:
        """Add to the newest entry: *before* it for a kill backwards, after it for one forwards."""
        if not self.texts:
            self.push(text)
            return
        self.texts[-1] = text + self.texts[-1] if before else self.texts[-1] + text
        self._at = len(self.texts) - 1

    def current(self) -> str | None:
        return self.texts[self._at] if self.texts else None

    def rotate(self) -> str | None:
        """The entry before the current one (Alt-Y after a yank), wrapping around."""
        if not self.texts:
            return None
        self._at = (self._at - 1) % len(self.texts)
        return self.texts[self._at]


@dataclass
class _Search:
    """A reverse incremental search in progress (Ctrl-R)."""

    #: the line before the search, restored by Ctrl-G / Ctrl-C
    saved: str
    saved_cursor: int
    query: str = ""
    #: the entry shown (None: nothing found yet)
    index: int | None = None
    failed: bool = False


def _is_word(ch: str) -> bool:
    """A character of a word for Alt-B/Alt-F/Alt-D (letters and digits, with their marks), as readline."""
    return ch.isalnum() or zero_width(ch)


class LineEditor:
    """The line being typed, in code points, and what each key does to it.

    :meth:`press` takes one key: a character (a printable one is inserted,
    a control character is a command: Ctrl-A is ``"\\x01"``) or a
    :class:`Key`; it returns the :class:`Action` the terminal must take.
    The line never grows past *limit* characters (the parser's limit).
    """

    def __init__(self, history: History | None = None, limit: int = MAX_LINE) -> None:
        self.history = history if history is not None else History()
        self.limit = limit
        #: the line (a str: inserting and deleting copy it in C, joining a list at every key would not)
        self.text = ""
        self.cursor = 0
        self.kills = KillRing()
        #: bumped at every key: a completion answered late applies only if nothing was typed since
        self.version = 0
        self.search: _Search | None = None
        #: what the previous key did ("kill", "yank", ""): consecutive kills grow one entry, Alt-Y follows a yank
        self._last = ""
        self._yank: tuple[int, int] | None = None
        #: the history entry shown by Up/Down (None: the new line), and the new line meanwhile
        self._browse: int | None = None
        self._stash = ""

    # -- the line ----------------------------------------------------------------------------------
    @property
    def line(self) -> str:
        return self.text

    def set_line(self, text: str, cursor: int | None = None) -> None:
        self.text = text[: self.limit]
        self.cursor = len(self.text) if cursor is None else max(0, min(cursor, len(self.text)))

    def reset(self) -> None:
        """A new, empty line (after Enter or Ctrl-C); the history is browsed from its end again."""
        self.text, self.cursor = "", 0
        self.search = None
        self._browse, self._stash = None, ""
        self._last, self._yank = "", None
        self.version += 1

    def take(self) -> str:
        """The accepted line; the editor starts a new one.  (Who runs it records it in the history.)"""
        line = self.line
        self.reset()
        return line

    def replace(self, start: int, end: int, text: str) -> bool:
        """Put *text* in place of ``text[start:end]``, the cursor after it; False if it had to be cut to fit."""
        start, end = max(0, start), min(end, len(self.text))
        room = self.limit - (len(self.text) - (end - start))
        fits = text[: max(0, room)]
        self.text = self.text[:start] + fits + self.text[end:]
        self.cursor = start + len(fits)
        self.version += 1
        return len(fits) == len(text)

    def display(self, prompt: str) -> tuple[str, int]:
        """What to draw (the prompt, or the search's, then the line) and where the cursor is in it."""
        if self.search is not None:
            s = self.search
            prompt = f"({'failed ' if s.failed else ''}reverse-i-search)`{s.query}': "
        return prompt + self.line, len(prompt) + self.cursor

    # -- keys ----------------------------------------------------------------------------------------
    def press(self, key: KeyLike) -> Action:
        self.version += 1
        action = self._press(key)
        while 0 < self.cursor < len(self.text) and zero_width(self.text[self.cursor]):
            self.cursor -= 1  # never between a character and its marks
        return action

    def _press(self, key: KeyLike) -> Action:
        if self.search is not None:
            action = self._search_key(key)
            if action is not None:
                return action
        last, self._last = self._last, ""
        if isinstance(key, Key):
            return _NAMED[key](self, last)
        if key in _ENTER:
            return Action.ACCEPT
        handler = _CONTROL.get(key)
        if handler is not None:
            return handler(self, last)
        if not key.isprintable() and not is_invalid(key) and not zero_width(key):
            return Action.NONE  # another control character: ignored
        return self._insert(key)

    # -- moving --------------------------------------------------------------------------------------
    def _cluster_start(self, i: int) -> int:
        """Where the character before *i* starts, with the marks drawn on it."""
        i -= 1
        while i > 0 and zero_width(self.text[i]):
            i -= 1
        return max(i, 0)

    def _cluster_end(self, i: int) -> int:
        """Where the character at *i* ends, with the marks drawn on it."""
        i += 1
        while i < len(self.text) and zero_width(self.text[i]):
            i += 1
        return min(i, len(self.text))

    def _move(self, to: int) -> Action:
        if to == self.cursor:
            return Action.BELL
        self.cursor = to
        return Action.NONE

    def _home(self, last: str) -> Action:
        self.cursor = 0
        return Action.NONE

    def _end(self, last: str) -> Action:
        self.cursor = len(self.text)
        return Action.NONE

    def _left(self, last: str) -> Action:
        return self._move(self._cluster_start(self.cursor)) if self.cursor else Action.BELL

    def _right(self, last: str) -> Action:
        return self._move(self._cluster_end(self.cursor)) if self.cursor < len(self.text) else Action.BELL

    def _word_left_of(self, i: int) -> int:
        while i > 0 and not _is_word(self.text[i - 1]):
            i -= 1
        while i > 0 and _is_word(self.text[i - 1]):
            i -= 1
        return i

    def _word_right_of(self, i: int) -> int:
        n = len(self.text)
        while i < n and not _is_word(self.text[i]):
            i += 1
        while i < n and _is_word(self.text[i]):
            i += 1
        return i

    def _word_left(self, last: str) -> Action:
        return self._move(self._word_left_of(self.cursor))

    def _word_right(self, last: str) -> Action:
        return self._move(self._word_right_of(self.cursor))

    # -- changing ------------------------------------------------------------------------------------
    def _insert(self, text: str) -> Action:
        room = self.limit - len(self.text)
        if room <= 0:
            return Action.BELL
        self.text = self.text[: self.cursor] + text[:room] + self.text[self.cursor :]
        self.cursor += min(len(text), room)
        return Action.NONE if len(text) <= room else Action.BELL

    def _delete(self, start: int, end: int) -> str:
        cut = self.text[start:end]
        self.text = self.text[:start] + self.text[end:]
        self.cursor = start
        return cut

    def _backspace(self, last: str) -> Action:
        if not self.cursor:
            return Action.BELL
        self._delete(self._cluster_start(self.cursor), self.cursor)
        return Action.NONE

    def _delete_here(self, last: str) -> Action:
        if self.cursor >= len(self.text):
            return Action.BELL
        self._delete(self.cursor, self._cluster_end(self.cursor))
        return Action.NONE

    def _ctrl_d(self, last: str) -> Action:
        if not self.text:
            return Action.EOF
        return self._delete_here(last)

    def _kill(self, start: int, end: int, last: str, before: bool) -> Action:
        if start >= end:
            self._last = last if last == "kill" else ""
            return Action.BELL
        cut = self._delete(start, end)
        if last == "kill":
            self.kills.grow(cut, before)
        else:
            self.kills.push(cut)
        self._last = "kill"
        return Action.NONE

    def _kill_to_start(self, last: str) -> Action:
        return self._kill(0, self.cursor, last, before=True)

    def _kill_to_end(self, last: str) -> Action:
        return self._kill(self.cursor, len(self.text), last, before=False)

    def _kill_blank_word(self, last: str) -> Action:
        """Ctrl-W: the word before the cursor, up to a blank (unix-word-rubout)."""
        i = self.cursor
        while i > 0 and self.text[i - 1].isspace():
            i -= 1
        while i > 0 and not self.text[i - 1].isspace():
            i -= 1
        return self._kill(i, self.cursor, last, before=True)

    def _kill_word(self, last: str) -> Action:
        return self._kill(self.cursor, self._word_right_of(self.cursor), last, before=False)

    def _kill_word_back(self, last: str) -> Action:
        return self._kill(self._word_left_of(self.cursor), self.cursor, last, before=True)

    def _yank_text(self, text: str | None) -> Action:
        if text is None:
            return Action.BELL
        start = self.cursor
        action = self._insert(text)
        self._yank = (start, self.cursor)
        self._last = "yank"
        return action

    def _yank_last(self, last: str) -> Action:
        return self._yank_text(self.kills.current())

    def _yank_pop(self, last: str) -> Action:
        if last != "yank" or self._yank is None:
            return Action.BELL
        text = self.kills.rotate()
        start, end = self._yank
        self._delete(start, end)
        return self._yank_text(text)

    # -- history -------------------------------------------------------------------------------------
    def _show_entry(self, text: str) -> None:
        self.text = text[: self.limit]
        self.cursor = len(self.text)

    def _up(self, last: str) -> Action:
        entries = self.history.entries
        at = len(entries) if self._browse is None or self._browse > len(entries) else self._browse
        if at == 0:
            return Action.BELL
        if self._browse is None:
            self._stash = self.text
        self._browse = at - 1
        self._show_entry(entries[at - 1])
        return Action.NONE

    def _down(self, last: str) -> Action:
        if self._browse is None:
            return Action.BELL
        entries = self.history.entries
        at = self._browse + 1
        if at >= len(entries):
            self._browse = None
            self._show_entry(self._stash)
        else:
            self._browse = at
            self._show_entry(entries[at])
        return Action.NONE

    # -- reverse search --------------------------------------------------------------------------------
    def _start_search(self, last: str) -> Action:
        self.search = _Search(saved=self.text, saved_cursor=self.cursor)
        return Action.NONE

    def _search_key(self, key: KeyLike) -> Action | None:
        """A key during a search: None if it ended the search and must now be handled as usual."""
        s = self.search
        assert s is not None
        entries = self.history.entries
        if key in (CTRL_G, CTRL_C):
            self.text, self.cursor = s.saved, s.saved_cursor
            self.search = None
            return Action.NONE
        if key == CTRL_R:
            if not s.query:
                s.query = self.history.last_search
            if not s.query:
                return Action.NONE
            before = s.index if s.index is not None else len(entries)
            return self._search_from(before, bell=True)
        if key in _BACKSPACE:
            s.query = s.query[:-1]
            s.index, s.failed = None, False
            if not s.query:
                self.text, self.cursor = s.saved, s.saved_cursor
                return Action.NONE
            return self._search_from(len(entries), bell=False)
        if isinstance(key, str) and (key.isprintable() or is_invalid(key)) and key not in _ENTER:
            s.query += key
            before = s.index + 1 if s.index is not None else len(entries)
            return self._search_from(before, bell=True)
        # any other key: keep the line found, leave the search, and do what the key does
        self.search = None
        if s.index is not None:
            self._browse, self._stash = s.index, s.saved
        return None

    def _search_from(self, before: int, bell: bool) -> Action:
        s = self.search
        assert s is not None
        self.history.last_search = s.query
        found = self.history.find(s.query, before)
        if found is None:
            s.failed = True
            return Action.BELL if bell else Action.NONE
        s.index, at = found
        s.failed = False
        self._show_entry(self.history.entries[s.index])
        self.cursor = at
        return Action.NONE


_Handler = Callable[[LineEditor, str], Action]

_CONTROL: dict[str, _Handler] = {
    CTRL_A: LineEditor._home,
    CTRL_E: LineEditor._end,
    CTRL_B: LineEditor._left,
    CTRL_F: LineEditor._right,
    CTRL_U: LineEditor._kill_to_start,
    CTRL_K: LineEditor._kill_to_end,
    CTRL_W: LineEditor._kill_blank_word,
    CTRL_Y: LineEditor._yank_last,
    CTRL_D: LineEditor._ctrl_d,
    CTRL_P: LineEditor._up,
    CTRL_N: LineEditor._down,
    CTRL_R: LineEditor._start_search,
    CTRL_C: lambda editor, last: Action.INTERRUPT,
    CTRL_G: lambda editor, last: Action.BELL,
    CTRL_L: lambda editor, last: Action.CLEAR,
    TAB: lambda editor, last: Action.COMPLETE,
    "\x7f": LineEditor._backspace,
    "\x08": LineEditor._backspace,
}

_NAMED: dict[Key, _Handler] = {
    Key.UP: LineEditor._up,
    Key.DOWN: LineEditor._down,
    Key.LEFT: LineEditor._left,
    Key.RIGHT: LineEditor._right,
    Key.HOME: LineEditor._home,
    Key.END: LineEditor._end,
    Key.DELETE: LineEditor._delete_here,
    Key.CTRL_LEFT: LineEditor._word_left,
    Key.ALT_B: LineEditor._word_left,
    Key.CTRL_RIGHT: LineEditor._word_right,
    Key.ALT_F: LineEditor._word_right,
    Key.ALT_D: LineEditor._kill_word,
    Key.ALT_BACKSPACE: LineEditor._kill_word_back,
    Key.ALT_Y: LineEditor._yank_pop,
}


# -- drawing -------------------------------------------------------------------------------------


def _walk(pos: tuple[int, int], text: str, cols: int) -> tuple[int, int]:
    """Where the cursor is after drawing *text* from *pos* (row, column), on a terminal *cols* wide.

    A character that does not fit on the row goes to the next one (a wide
    character at the last column included, as xterm does).  The column may
    end equal to *cols*: the row is full and the terminal waits to wrap.
    """
    row, col = pos
    for ch in text:
        w = char_cells(ch)
        if not w:
            continue
        if col + w > cols:
            row, col = row + 1, 0
        col += w
    return row, col


def column_after(column: int, text: str, cols: int) -> int:
    """The cursor's column after a terminal *cols* wide shows *text* from *column* (output, not ours).

    Line ends, backspace, tabs and escape sequences (which move nothing we
    track) are understood; this is only used to know where the next prompt
    or typed line starts.
    """
    cut = max(text.rfind("\n"), text.rfind("\r"))
    if cut >= 0:
        column, text = 0, text[cut + 1 :]
    if text.isascii() and text.isprintable():  # the usual case, in one step
        end = column + len(text)
        return end if end <= cols else (end - 1) % cols + 1
    if len(text) > _LONG_RUN:  # a long run with no line end (binary): its end is near enough
        column, text = 0, text[-_LONG_RUN:]
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        i += 1
        if ch == "\x1b":
            i = _escape_end(text, i)
        elif ch == "\b":
            column = max(0, min(column, cols - 1) - 1)
        elif ch == "\t":
            column = min(cols, (column // 8 + 1) * 8) if column < cols else column
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            continue
        else:
            w = char_cells(ch)
            if w:
                if column + w > cols:
                    column = 0
                column += w
    return column


#: Characters of output with no line end looked at to know the column (more: only its end).
_LONG_RUN = 16 * 1024


def _escape_end(text: str, i: int) -> int:
    """Index just past the escape sequence whose ESC was at ``i - 1``."""
    if i >= len(text):
        return i
    kind = text[i]
    if kind == "[":  # CSI: parameters, then a final byte 0x40..0x7e
        i += 1
        while i < len(text) and not "\x40" <= text[i] <= "\x7e":
            i += 1
        return i + 1
    if kind == "]":  # OSC: up to BEL or ESC backslash
        end = len(text)
        for stop in ("\x07", "\x1b\\"):
            at = text.find(stop, i)
            if at >= 0:
                end = min(end, at + len(stop))
        return end
    return i + 1


def _move(frm: tuple[int, int], to: tuple[int, int]) -> str:
    """The cursor moves from *frm* to *to* (rows relative, both on the screen)."""
    out = ""
    if to[0] < frm[0]:
        out += f"\x1b[{frm[0] - to[0]}A"
    elif to[0] > frm[0]:
        out += f"\x1b[{to[0] - frm[0]}B"
    if to[1] != frm[1]:
        if to[1] == 0:
            out += "\r"
        elif to[1] > frm[1]:
            out += f"\x1b[{to[1] - frm[1]}C"
        else:
            out += f"\x1b[{frm[1] - to[1]}D"
    return out


def _common(a: str, b: str) -> int:
    """Length of the common start of *a* and *b*."""
    if b.startswith(a):
        return len(a)
    if a.startswith(b):
        return len(b)
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class View:
    """What the terminal shows of the line (prompt included) and where its cursor is, in cells.

    The drawing starts at column :attr:`origin` of a row (row 0); rows are
    counted from there, so nothing above the line is ever touched.
    :meth:`draw` returns the output that turns what is shown into the new
    text: it rewrites only from the first character that changed (typing
    at the end writes just that character, as an echo), erases what is left
    of the old text, and puts the cursor where the editor's is.  Output
    that is not ours (a program's, a listing) is followed by :meth:`moved_to`
    with the column it left the cursor at.
    """

    def __init__(self, cols: int = 80) -> None:
        self.cols = cols if cols > 0 else UNKNOWN_WIDTH
        self.origin = 0
        #: the text drawn from the origin
        self.text = ""
        #: the cursor (row, column)
        self.at = (0, 0)
        #: where the drawn text ends (the column may be ``cols``: a full row, see :func:`_walk`)
        self._end = (0, 0)

    def resize(self, cols: int) -> None:
        self.cols = cols if cols > 0 else UNKNOWN_WIDTH

    def moved_to(self, column: int) -> None:
        """Nothing of ours is shown; the cursor is at *column* of its row."""
        self.origin = column
        self.text = ""
        self.at = self._end = (0, column)

    def _norm(self, pos: tuple[int, int]) -> tuple[int, int]:
        return (pos[0] + 1, 0) if pos[1] >= self.cols else pos

    def position(self, text: str, index: int) -> tuple[int, int]:
        """Where the cursor shows when it is before ``text[index]`` (after the text if index is its length)."""
        pos = _walk((0, self.origin), text[:index], self.cols)
        if index < len(text) and pos[1] + char_cells(text[index]) > self.cols:
            return pos[0] + 1, 0  # a wide character that does not fit goes to the next row
        return self._norm(pos)

    def draw(self, text: str, cursor: int) -> str:
        """The output that shows *text* with the cursor before ``text[cursor]``."""
        out: list[str] = []
        if self.origin >= self.cols and not self.text and text:
            # the row is full and the terminal waits to wrap: start on the next row, where we can come back to
            out.append("\r\n")
            self.moved_to(0)
        old = self.text
        p = _common(old, text)
        while p > 0 and (
            (p < len(text) and zero_width(text[p])) or (p < len(old) and zero_width(old[p]))
        ):  # never split a character from its marks
            p -= 1
        if p == len(old) == len(text):  # the same text: only the cursor moves
            target = self.position(text, cursor) if cursor < len(text) else self._norm(self._end)
            out.append(_move(self.at, target))
            self.at = target
            return "".join(out)
        start = self._end if p == len(old) else _walk((0, self.origin), text[:p], self.cols)
        out.append(_move(self.at, self._norm(start)))
        if p < len(old):
            out.append("\x1b[J")
        end = start
        if p < len(text):
            tail = text[p:]
            out.append(shown(tail))
            end = _walk(start, tail, self.cols)
            if end[1] >= self.cols:
                out.append("\r\n")  # a full last row: put the cursor on the next one, where it can be moved back to
        target = self._norm(end) if cursor >= len(text) else self.position(text, cursor)
        out.append(_move(self._norm(end), target))
        self.text, self._end, self.at = text, end, target
        return "".join(out)

    def erase(self) -> str:
        """Remove what is drawn (the cursor goes back to the origin), for output that is not ours."""
        if not self.text:
            return ""
        out = _move(self.at, (0, self.origin)) + "\x1b[J"
        self.moved_to(self.origin)
        return out

    def commit(self) -> str:
        """Keep what is drawn on the screen but forget it (Ctrl-D sent it to a program): the cursor goes after it."""
        out = _move(self.at, self._norm(self._end))
        self.moved_to(self._norm(self._end)[1])
        return out

    def finish(self, mark: str = "") -> str:
        """Leave the line: the cursor after the text, *mark* (``^C``) shown, and the next row started."""
        out = _move(self.at, self._norm(self._end))
        full = self._end[1] >= self.cols
        if mark:
            out += mark
            full = False
        if not full or not self.text:
            out += "\r\n"
        self.moved_to(0)
        return out


# -- completion -----------------------------------------------------------------------------------

_SPECIAL = frozenset(" \t\r\n;&|<>()`'\"\\$*?[]")
_DQ_SPECIAL = frozenset('"\\$`')
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class CompletionWord:
    """The word the cursor is in, as completion needs it."""

    #: where it starts in the line
    start: int
    #: its value (quotes and backslashes removed)
    text: str
    #: the quote still open at the cursor ("'", '"' or "")
    quote: str
    #: "command" (first word of a command), "path", "placement" (``@...``), or "" (nothing to complete:
    #: a variable, a glob, an assignment, a comment)
    kind: str


def completion_word(line: str) -> CompletionWord:
    """The last word of *line* (the text before the cursor), and what kind of word it is.

    A small lexer of the shell's language (:mod:`oneos.shell.parser`):
    blanks and operators end words, quotes and backslashes are removed;
    the first word of each command (after ``;``, ``&``, ``|``, ``&&``,
    ``||``, and any ``NAME=value`` words) is a command, the word after a
    redirection a path.
    """
    i, n = 0, len(line)
    seen_command = redirect = False
    start: int | None = None
    value: list[str] = []
    quote = ""
    plain = True
    quoted = False

    def finish_word() -> None:
        nonlocal start, value, seen_command, redirect, plain, quoted
        word_raw = line[start:i] if start is not None else ""
        if redirect:
            redirect = False
        elif not (not seen_command and _ASSIGNMENT.match(word_raw)):
            seen_command = True
        start, value, plain, quoted = None, [], True, False

    while i < n:
        c = line[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                value.append(c)
            i += 1
            continue
        if quote == '"':
            if c == '"':
                quote = ""
            elif c == "\\" and i + 1 < n and line[i + 1] in _DQ_SPECIAL:
                value.append(line[i + 1])
                i += 1
            else:
                if c in "$`":
                    plain = False
                value.append(c)
            i += 1
            continue
        if c in " \t\r\n":
            if start is not None:
                finish_word()
            i += 1
            continue
        if c in ";&|()":
            if start is not None:
                finish_word()
            seen_command = redirect = False
            i += 1
            continue
        if c in "<>":
            if start is not None:
                if "".join(value).isdigit() and not quoted:
                    start, value = None, []  # a descriptor: 2> FILE
                else:
                    finish_word()
            redirect = True
            i += 1
            if i < n and line[i] in ">&":
                i += 1
            continue
        if c == "#" and start is None:
            return CompletionWord(n, "", "", "")  # a comment
        if start is None:
            start, value, plain, quoted = i, [], True, False
        if c == "\\":
            if i + 1 < n:
                value.append(line[i + 1])
            quoted = True
            i += 2
            continue
        if c in "'\"":
            quote, quoted = c, True
            i += 1
            continue
        if c in "$`*?[":
            plain = False
        value.append(c)
        i += 1
    if start is None:
        start, value = n, []
    text = "".join(value)
    raw = line[start:]
    if not plain:
        kind = ""
    elif redirect:
        kind = "path"
    elif raw.startswith("@"):
        kind = "placement"
    elif not seen_command and _ASSIGNMENT.match(raw):
        kind = ""
    elif not seen_command and "/" not in text:
        kind = "command"
    else:
        kind = "path"
    return CompletionWord(start, text, quote, kind)


def escape(text: str) -> str:
    """*text* as one unquoted word of the shell: special characters behind a backslash."""
    out = []
    for i, ch in enumerate(text):
        if ch in _SPECIAL or (i == 0 and ch in "#@"):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def completed(word: CompletionWord, text: str, final: bool) -> str:
    """The word written back with the value *text*: quoted as it was; *final*: closed and followed by a blank."""
    if word.kind == "placement":
        return text + (" " if final else "")  # @RUNTIME, @dev:NAME, @tag:TAG: plain by their grammar
    if word.quote == "'":
        body = "'" + text.replace("'", "'\\''")
        return body + ("' " if final else "")
    if word.quote == '"':
        body = '"' + "".join("\\" + ch if ch in _DQ_SPECIAL else ch for ch in text)
        return body + ('" ' if final else "")
    return escape(text) + (" " if final else "")


def common_start(texts: list[str]) -> str:
    return os.path.commonprefix(texts) if texts else ""


def columns(names: list[str], width: int, limit: int = 500) -> list[str]:
    """*names* in columns across a terminal *width* cells wide (down first, as ls); at most *limit* shown."""
    more = len(names) - limit
    names = names[:limit]
    if not names:
        return []
    widths = [cells(shown(n)) for n in names]
    cell = max(widths) + 2
    per_row = max(1, min(len(names), (min(width, 1000) + 2) // cell))
    rows = (len(names) + per_row - 1) // per_row
    lines = []
    for r in range(rows):
        parts = []
        for c in range(per_row):
            k = c * rows + r
            if k < len(names):
                parts.append(shown(names[k]) + " " * (cell - widths[k]))
        lines.append("".join(parts).rstrip())
    if more > 0:
        lines.append(f"... and {more} more")
    return lines


# -- the history file -----------------------------------------------------------------------------


def saved_in_history(line: str) -> bool:
    """Whether a line run goes to the history file: not a blank one, nor one typed with a leading space."""
    return bool(line.strip()) and not line.startswith(" ")


def parse_history(data: bytes, limit: int = HISTORY_LINES) -> list[str]:
    """The lines of a history file (UTF-8, one line each), the last *limit*."""
    lines = [line for line in data.decode("utf-8", "replace").split("\n") if line.strip()]
    return lines[-limit:]


def history_bytes(lines: list[str], limit: int = HISTORY_LINES, size: int = HISTORY_BYTES) -> bytes:
    """A history file holding the last *limit* of *lines*, dropping older ones until it is at most *size* bytes."""
    kept: list[bytes] = []
    total = 0
    for line in reversed(lines[-limit:]):
        data = line.encode("utf-8", "replace") + b"\n"
        if total + len(data) > size:
            break
        kept.append(data)
        total += len(data)
    return b"".join(reversed(kept))

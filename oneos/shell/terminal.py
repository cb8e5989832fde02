"""The interactive shell terminal: prompt, line editing, history, completion, Ctrl-C.

:class:`ShellTerminal` is what an SSH ``shell`` request with a pty gets
(:mod:`oneos.shell.ssh`), and what each desktop terminal runs
(:mod:`oneos.desktop.terminal`), on twisted.conch's insults (which turns
the client's bytes and escape sequences into keys).  What the keys do to
the line, and what is drawn, is :mod:`oneos.shell.editor`'s; here are the
parts that talk to the session:

* typed bytes are decoded as UTF-8 across keystrokes (insults hands over
  one byte at a time); the line run is exactly what was typed, and a line
  holding bytes that are not UTF-8 is refused with a message (it would
  name files the user did not mean);
* while a command runs, keys edit a line for *it*, as a tty in cooked mode
  (:func:`~oneos.shell.lines.cooked_key`), sent on Enter;
* :class:`Completer`: Tab completes commands (first word of a command:
  built-ins, functions, reserved words, programs on the PATH), OneOS
  paths (other words, ``/dev`` included), runtimes, devices and tags
  (``@...``); a second Tab lists the candidates;
* :class:`HistoryFile`: the history outlives the session in the user's
  ``~/.oneos_history`` (read at login, written after each line, as the
  user: a user without a home or rights just has the session's history).

Output the session writes while a line is being edited (a background job,
the running program) is written above the line, which is drawn again after
it.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from twisted.conch.insults import insults
from twisted.internet import defer
from twisted.logger import Logger

from oneos.errors import OneOSError, describe
from oneos.fs import paths
from oneos.fs.errors import NotFound
from oneos.shell.devices import is_device_path, live_runtimes
from oneos.shell.editor import (
    CTRL_C,
    CTRL_D,
    CTRL_L,
    CTRL_N,
    CTRL_P,
    CTRL_R,
    TAB,
    Action,
    CompletionWord,
    History,
    Key,
    KeyDecoder,
    KeyLike,
    LineEditor,
    View,
    column_after,
    columns,
    common_start,
    completed,
    completion_word,
    encoded,
    has_invalid,
    history_bytes,
    is_invalid,
    parse_history,
    saved_in_history,
)
from oneos.shell.frontend import BANNER, CONTINUATION_PROMPT, SafeWriter, to_program
from oneos.shell.interpreter import Interpreter
from oneos.shell.lines import Event, Interrupt, cooked_key
from oneos.shell.parser import RESERVED, is_incomplete
from oneos.shell.session import HISTORY_SIZE, SessionInput

log = Logger()

#: The history file, in the user's home.
HISTORY_FILE = ".oneos_history"
#: Its mode when the shell makes it: the user's only.
HISTORY_PERM = 0o600
#: Seconds a listing of the programs on a PATH is reused for completion.
PROGRAMS_TTL = 30.0

INVALID_LINE = (
    "oneos: this line holds bytes that are not UTF-8 (shown as \ufffd), so it was not run: "
    "correct them, or set the terminal to UTF-8"
)

_P: Any = insults.ServerProtocol  # its key constants are set with setattr: untyped
#: insults' names of keys that are not characters (it hands them over as these constants)
_KEYS: dict[Any, Key] = {
    _P.UP_ARROW: Key.UP,
    _P.DOWN_ARROW: Key.DOWN,
    _P.LEFT_ARROW: Key.LEFT,
    _P.RIGHT_ARROW: Key.RIGHT,
    _P.HOME: Key.HOME,
    _P.END: Key.END,
    _P.DELETE: Key.DELETE,
}
#: Alt (ESC) and a key
_ALT: dict[bytes, Key] = {
    b"b": Key.ALT_B,
    b"B": Key.ALT_B,
    b"f": Key.ALT_F,
    b"F": Key.ALT_F,
    b"d": Key.ALT_D,
    b"D": Key.ALT_D,
    b"y": Key.ALT_Y,
    b"Y": Key.ALT_Y,
    b"\x7f": Key.ALT_BACKSPACE,
    b"\x08": Key.ALT_BACKSPACE,
}
#: escape sequences insults does not name: modified arrows, application-mode and rxvt keys
_SEQUENCES: dict[bytes, Key] = {
    b"\x1b[1;5C": Key.CTRL_RIGHT,
    b"\x1b[1;5D": Key.CTRL_LEFT,
    b"\x1b[5C": Key.CTRL_RIGHT,
    b"\x1b[5D": Key.CTRL_LEFT,
    b"\x1b[Oc": Key.CTRL_RIGHT,
    b"\x1b[Od": Key.CTRL_LEFT,
    b"\x1b[1;3C": Key.ALT_F,
    b"\x1b[1;3D": Key.ALT_B,
    b"\x1b[OA": Key.UP,
    b"\x1b[OB": Key.DOWN,
    b"\x1b[OC": Key.RIGHT,
    b"\x1b[OD": Key.LEFT,
    b"\x1b[OH": Key.HOME,
    b"\x1b[OF": Key.END,
    b"\x1b[7~": Key.HOME,
    b"\x1b[8~": Key.END,
}
#: keys that mean nothing on a line typed for a program (history and completion are the shell's)
_SHELL_ONLY = (Key.UP, Key.DOWN, TAB, CTRL_R, CTRL_P, CTRL_N)


class TerminalChannel(Protocol):
    """What the terminal needs of its session: an SSH session channel, or a desktop terminal's stand-in."""

    shell: Any
    terminal: Any

    def _interpreter(self, out: Any, err: Any) -> Interpreter: ...


class Candidate(NamedTuple):
    """One completion."""

    #: the whole word's value once completed
    text: str
    #: how it is listed (a name, a directory with its /)
    label: str
    #: nothing more can follow: close the quote, add a blank
    final: bool


def host_path() -> str:
    """The PATH of this process (the runtime serving the session): what a runtime gives its programs by default."""
    return os.environ.get("PATH", os.defpath)


def executables(path: str) -> frozenset[str]:
    """The names of the regular files with execute permission in the directories of *path*.

    Missing and unreadable directories (and entries that vanish while
    listed) are skipped silently: PATH often names some.  Relative entries
    are skipped too: they would name directories of this process's working
    directory, not the user's.
    """
    names: set[str] = set()
    for directory in dict.fromkeys(path.split(os.pathsep)):
        if not os.path.isabs(directory):
            continue
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_file() and os.access(entry.path, os.X_OK):
                            names.add(entry.name)
                    except OSError:
                        continue
        except OSError:
            continue
    return frozenset(names)


class Completer:
    """The candidates for a word (:class:`~oneos.shell.editor.CompletionWord`), from the session's view of the grid.

    The first word of a command completes from what a line can run there:
    the built-ins, the session's functions, the reserved words of the
    parser (``if``, ``while``..., as bash offers them) and the programs on
    the PATH.  Programs run on a runtime's host, where the agent manager
    finds them on the PATH it is given: the session's ``PATH`` when the
    session exports one (only exported variables reach a program, see
    :meth:`~oneos.shell.session.Session.agent_env`), else that runtime's own.
    Which runtime is the scheduler's choice, not known at Tab, so the
    programs offered are those found on that PATH on the machine serving
    the session (*host_path*: the serving runtime process's own PATH): on
    hosts set up alike, what the line will find.
    Listing the PATH's directories costs milliseconds of the reactor's time,
    so the names are listed at most once per :data:`PROGRAMS_TTL` seconds of
    *seconds* (the grid's reactor clock) per PATH: a program installed
    meanwhile is offered within that time.  A command word holding a ``/``
    (``./tool.sh``, ``bin/x``) is a path in the OneOS tree, as
    :meth:`~oneos.shell.launcher.ProgramLauncher.resolve` runs it
    (:func:`~oneos.shell.editor.completion_word` gives it kind ``path``).
    """

    def __init__(
        self,
        interp: Interpreter,
        host_path: Callable[[], str] = host_path,
        seconds: Callable[[], float] | None = None,
    ) -> None:
        self.interp = interp
        self.host_path = host_path
        reactor = interp.grid.reactor
        self.seconds = seconds or (reactor.seconds if reactor is not None else time.monotonic)
        #: the PATH last listed, when the listing goes stale, and the names found
        self._programs: tuple[str, float, frozenset[str]] | None = None

    def candidates(self, word: CompletionWord) -> defer.Deferred:
        """Fires with a sorted list of :class:`Candidate` (empty when there are none or the grid cannot say)."""
        if word.kind == "command":
            names = sorted(n for n in self.commands() if n.startswith(word.text))
            return defer.succeed([Candidate(n, n, True) for n in names])
        if word.kind == "placement":
            return self._guarded(self._placements(word.text))
        if word.kind == "path":
            return self._guarded(self._paths(word.text))
        return defer.succeed([])

    def commands(self) -> set[str]:
        """Every name the first word of a command may complete to (each once)."""
        return {*self.interp.builtins, *self.interp.top.functions, *RESERVED, *self.programs()}

    def program_path(self) -> str:
        """The PATH a program of this session is looked up on: the session's if exported, else the host's."""
        session = self.interp.session
        if "PATH" in session.exported and "PATH" in session.env:
            return session.env["PATH"]
        return self.host_path()

    def programs(self) -> frozenset[str]:
        """The executables on :meth:`program_path`, listed again once the last listing is stale or PATH changed."""
        path, now = self.program_path(), self.seconds()
        cached = self._programs
        if cached is not None and cached[0] == path and now < cached[1]:
            return cached[2]
        names = executables(path)
        self._programs = (path, now + PROGRAMS_TTL, names)
        return names

    def _guarded(self, coroutine: Any) -> defer.Deferred:
        def failed(f: Any) -> list[Candidate]:
            log.debug("no completions: {error}", error=describe(f.value) if isinstance(f.value, OneOSError) else f)
            return []

        return defer.Deferred.fromCoroutine(coroutine).addErrback(failed)

    async def _paths(self, text: str) -> list[Candidate]:
        directory, slash, prefix = text.rpartition("/")
        cwd = self.interp.session.cwd
        base = paths.normalise(directory or "/", cwd) if slash else cwd
        lead = directory + slash
        if is_device_path(base):
            entries = await self._devices(base)
        else:
            entries = [(e.name, e.is_dir) for e in await self.interp.grid.fs.listdir(base)]
        return [
            Candidate(lead + name + ("/" if is_dir else ""), name + ("/" if is_dir else ""), not is_dir)
            for name, is_dir in sorted(entries)
            if name.startswith(prefix) and (prefix.startswith(".") or not name.startswith("."))
        ]

    async def _devices(self, base: str) -> list[tuple[str, bool]]:
        """``/dev`` lists the runtimes with devices (as folders), ``/dev/RT`` its devices."""
        rows = await live_runtimes(self.interp.grid)
        if base == "/dev":
            return [(r.id, True) for r in rows if r.devices]
        runtime = paths.basename(base)
        return [(d.name, False) for r in rows if r.id == runtime for d in r.devices]

    async def _placements(self, text: str) -> list[Candidate]:
        """``@RUNTIME`` (the live ones), ``@dev:NAME`` (their devices), ``@tag:TAG`` (their tags)."""
        rows = await live_runtimes(self.interp.grid)
        rest = text[1:]
        if rest.startswith("dev:"):
            words = [(f"@dev:{n}", True) for n in sorted({d.name for r in rows for d in r.devices})]
        elif rest.startswith("tag:"):
            words = [(f"@tag:{t}", True) for t in sorted({t for r in rows for t in r.tags})]
        else:
            words = [(f"@{r.id}", True) for r in rows] + [("@dev:", False), ("@tag:", False)]
        return [Candidate(w, w, final) for w, final in words if w.startswith(text)]


class HistoryFile:
    """A user's ``~/.oneos_history``: loaded at login, each line run added to it, as the user.

    Each save reads the file again and appends this session's new lines to
    what is there (another session of the same user may have added some),
    keeping the last :data:`~oneos.shell.editor.HISTORY_LINES`; saves run
    one at a time, in order.  The first error (no home, no right to write,
    store down) turns the file off for the session with one log line: the
    session keeps its own history, and the user sees no error.
    """

    def __init__(self, fs: Any, path: str, user: str) -> None:
        self.fs = fs
        self.path = path
        self.user = user
        self.off = False
        self._pending: list[str] = []
        #: a save runs (the lines added meanwhile wait for its end)
        self._saving = False

    def load(self) -> defer.Deferred:
        """Fires with the lines of the file (none if there is no file or it cannot be read); never fails."""
        return defer.Deferred.fromCoroutine(self._load())

    async def _load(self) -> list[str]:
        try:
            data = await self.fs.read_small(self.path)
        except NotFound:
            return []
        except Exception as e:
            self._turn_off("read", e)
            return []
        return parse_history(data)

    def add(self, line: str) -> None:
        if self.off:
            return
        self._pending.append(line)
        if not self._saving:
            self._saving = True
            defer.Deferred.fromCoroutine(self._save())

    async def _save(self) -> None:
        try:
            while self._pending and not self.off:
                lines, self._pending = self._pending, []
                try:
                    current = parse_history(await self.fs.read_small(self.path))
                    made = False
                except NotFound:
                    current, made = [], True
                await self.fs.write_small(self.path, history_bytes(current + lines))
                if made:
                    await self.fs.chmod(self.path, HISTORY_PERM)
        except Exception as e:
            self._turn_off("write", e)
        finally:
            self._saving = False

    def _turn_off(self, doing: str, error: BaseException) -> None:
        self.off = True
        self._pending = []
        why = describe(error) if isinstance(error, OneOSError) else repr(error)
        log.info(
            "shell history of {user} kept for the session only: cannot {doing} {path}: {why}",
            user=self.user,
            doing=doing,
            path=self.path,
            why=why,
        )


class ShellTerminal(insults.TerminalProtocol):
    """The interactive terminal of one session: prompt, line editing, history, completion, Ctrl-C."""

    def __init__(self, channel: TerminalChannel) -> None:
        self.channel = channel
        #: a command runs (or the session is not ready yet): keys edit a line for it
        self.busy = True
        self.interp: Interpreter | None = None
        self.width, self.height = 80, 24
        self.prompt = ""
        self.keys = KeyDecoder()
        #: the command line
        self.editor = LineEditor()
        #: lines of a construct still open (``for x in a b`` then Enter): the next ones get the ``> `` prompt
        self.continued: list[str] = []
        #: the line typed for the running program (no history, no completion)
        self.program = LineEditor(History([]))
        self.view = View(self.width)
        self.completer: Completer | None = None
        self.history_file: HistoryFile | None = None
        #: Tabs pressed in a row (the second lists the candidates)
        self._tabs = 0
        self._output_text = codecs.getincrementaldecoder("utf-8")("replace")
        self.terminal: Any = None

    # -- the session ---------------------------------------------------------------------------
    def connectionMade(self) -> None:
        self.channel.terminal = self
        out = SafeWriter(self._output)  # insults turns \n into \r\n itself
        interp = self.interp = self.channel._interpreter(out, out)
        interp.interactive = True  # background jobs are announced (as bash does at a terminal)
        interp.input = SessionInput()  # typing: no pause (it would hold Ctrl-C back too), excess dropped
        self.editor = LineEditor(History(interp.session.history))
        self.completer = Completer(interp)
        self._output(BANNER.encode())
        d = self.channel.shell.prepare(interp)
        d.addBoth(lambda _: self._load_history())
        d.addBoth(lambda _: self._ready())

    def _load_history(self) -> defer.Deferred | None:
        """Put the lines of ``~/.oneos_history`` before the session's (the user's home, once made)."""
        assert self.interp is not None
        session = self.interp.session
        if session.home == "/":  # the home could not be made: no file
            return None
        self.history_file = HistoryFile(self.interp.grid.fs, paths.join(session.home, HISTORY_FILE), session.user)

        def loaded(lines: list[str]) -> None:
            session.history[:0] = lines
            del session.history[:-HISTORY_SIZE]

        return self.history_file.load().addCallback(loaded)

    def _ready(self) -> None:
        """The prompt, for a new line (the session is ready, or a command ended)."""
        if self.interp is None or self.interp.gone:
            return
        self.busy = False
        assert self.interp.input is not None
        self.interp.input.discard()  # typed during the command but not read by it
        self.program.reset()
        self.editor.reset()
        self._tabs = 0
        self.continued = []
        self.prompt = self.interp.session.prompt()
        self._draw()

    def terminalSize(self, width: int, height: int) -> None:
        """Remember the size (redrawing nothing: a wipe would erase output)."""
        self.width, self.height = width, height
        self.view.resize(width)

    def _run(self, line: str) -> None:
        """Run a line, or the lines of a construct typed over several (each kept in the history as typed)."""
        assert self.interp is not None
        self.busy = True
        lines, self.continued = [*self.continued, line], []
        for typed in lines:
            if len(lines) > 1:
                self.interp.session.remember(typed)
            if self.history_file is not None and saved_in_history(typed):
                self.history_file.add(typed)
        self.interp.execute("\n".join(lines), record=len(lines) == 1).addBoth(self._done)

    def _done(self, status: Any) -> None:
        assert self.interp is not None
        if self.interp.exit_status is not None:
            self._logout(self.interp.exit_status)
            return
        self._ready()

    def _logout(self, status: int) -> None:
        self.busy = True
        end: Callable[[int], Any] | None = getattr(self.channel, "_end", None)
        if end is not None:
            end(status)
        else:
            self.terminal.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.interp is not None:
            self.interp.hangup()

    # -- output ------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if text:  # insults turns each LF into CR LF: give it LFs
            self.terminal.write(text.replace("\r\n", "\n").encode("utf-8", "replace"))

    def _draw(self) -> None:
        """Show the line as the editor has it now."""
        if self.busy:
            text, cursor = self.program.line, self.program.cursor
        else:
            text, cursor = self.editor.display(self.prompt)
        self._write(self.view.draw(text, cursor))

    def _output(self, data: bytes) -> None:
        """The session's output: written above the line being edited, which is drawn again below it."""
        if not data:
            return
        self._write(self.view.erase())
        self.terminal.write(data)
        self.view.moved_to(column_after(self.view.origin, self._output_tail(data), self.view.cols))
        if not self.busy:
            if self.view.origin:
                self._write("\r\n")  # the prompt starts a row
                self.view.moved_to(0)
            self._draw()
        elif self.program.text:
            self._draw()

    def _output_tail(self, data: bytes) -> str:
        """What of *data* decides the cursor's column: the text after its last line end."""
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut >= 0:
            self._output_text.reset()
            return "\n" + self._output_text.decode(data[cut + 1 :])
        return self._output_text.decode(data)

    # -- keys ------------------------------------------------------------------------------------
    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        self._dispatch(self._keys(keyID, modifier))

    def unhandledControlSequence(self, seq: bytes) -> None:
        named = _SEQUENCES.get(seq)
        if named is not None:
            self._dispatch([*self.keys.flush(), named])

    def _dispatch(self, keys: list[KeyLike]) -> None:
        for key in keys:
            if self.interp is None:
                return
            if self.busy:
                self._program_key(key)
            else:
                self._shell_key(key)

    def _keys(self, keyID: Any, modifier: Any) -> list[KeyLike]:
        """What insults handed over, as the editor's keys (characters decoded from UTF-8, or a :class:`Key`)."""
        named = _KEYS.get(keyID)
        if named is None and isinstance(keyID, bytes) and len(keyID) == 1:
            if modifier is _P.ALT and keyID < b"\x80":
                named = _ALT.get(keyID)
                if named is None:
                    return list(self.keys.flush())  # an Alt key with no meaning here
            else:
                return list(self.keys.feed(keyID))
        if named is None:
            return []  # F1, Insert, PgUp...: nothing
        return [*self.keys.flush(), named]

    def _shell_key(self, key: KeyLike) -> None:
        if key != TAB:
            self._tabs = 0
        action = self.editor.press(key)
        if action is Action.ACCEPT:
            self._accept()
        elif action is Action.INTERRUPT:
            self._draw()
            self._write(self.view.finish("^C"))
            self.editor.reset()
            if self.continued:  # Ctrl-C drops the unfinished construct, as bash does
                assert self.interp is not None
                self.continued = []
                self.prompt = self.interp.session.prompt()
            self._draw()
        elif action is Action.EOF and self.continued:
            # Ctrl-D inside an unfinished construct: run it, so the parser says what is missing; no
            # logout (bash's "unexpected end of file")
            self._write(self.view.finish())
            self._run(self.continued.pop())
        elif action is Action.EOF:
            self._write(self.view.finish("logout"))
            assert self.interp is not None
            self._logout(self.interp.session.status)
        elif action is Action.CLEAR:
            self._clear()
        else:
            self._draw()
            if action is Action.BELL:
                self._write("\x07")
            elif action is Action.COMPLETE:
                self._complete()

    def _accept(self) -> None:
        self._draw()  # (a search shows its own prompt until it ends)
        line = self.editor.line
        if has_invalid(line):
            first = next(i for i, ch in enumerate(line) if is_invalid(ch))
            self.editor.set_line(line, first)
            self._write(self.view.finish() + INVALID_LINE + "\r\n")
            self._draw()
            return
        self.editor.take()
        self._write(self.view.finish())
        if is_incomplete("\n".join([*self.continued, line])):
            self.continued.append(line)  # an open if/for/quote/pipe: ask for the rest, as bash's PS2
            self.prompt = CONTINUATION_PROMPT
            self._draw()
            return
        self._run(line)

    def _clear(self) -> None:
        self._write("\x1b[H\x1b[2J")
        self.view.moved_to(0)
        self._draw()

    def _program_key(self, key: KeyLike) -> None:
        """A key while a command runs: edit a line for the program, as a tty in cooked mode.

        Ctrl-C, Ctrl-D and Enter mean what :func:`~oneos.shell.lines.cooked_key`
        says; the other keys edit the line.  History and completion are the
        shell's, not the program's: off.  The program gets the bytes typed,
        exactly (not UTF-8 ones too).
        """
        if key in _SHELL_ONLY:
            return
        if key in (CTRL_C, CTRL_D, "\r", "\n"):
            assert isinstance(key, str)
            typed = encoded(self.program.line)
            events = cooked_key(key.encode(), typed)
            assert events is not None
            if key == CTRL_C:
                self._write(self.view.finish("^C"))
            elif key == CTRL_D:
                self._write(self.view.commit())
            else:
                self._write(self.view.finish())
            self.program.reset()
            if not self._to_program(events):
                self._write("\x07")  # nobody reads and the backlog is full
            return
        if key == CTRL_L:
            self._clear()
            return
        action = self.program.press(key)
        self._draw()
        if action is Action.BELL:
            self._write("\x07")

    def _to_program(self, events: list[Event]) -> bool:
        """Act on what keys typed while a command runs mean; False if its input refused some."""
        assert self.interp is not None and self.interp.input is not None
        accepted = True
        for event in events:
            if isinstance(event, Interrupt):
                self.interp.interrupt()
            else:
                accepted = to_program(event, self.interp.input) and accepted
        return accepted

    # -- completion ------------------------------------------------------------------------------
    def _complete(self) -> None:
        """Tab: complete the word before the cursor; a second Tab in a row lists the candidates."""
        assert self.completer is not None
        self._tabs += 1
        editor = self.editor
        word = completion_word(editor.text[: editor.cursor])
        version, listing = editor.version, self._tabs >= 2
        d = self.completer.candidates(word)
        d.addCallback(self._completed, word, version, listing)
        d.addErrback(lambda f: log.failure("completion failed", f))

    def _completed(self, found: list[Candidate], word: CompletionWord, version: int, listing: bool) -> None:
        editor = self.editor
        if self.busy or editor.version != version:
            return  # typed on meanwhile, or a command runs: too late
        if not found:
            self._write("\x07")
            return
        if len(found) == 1:
            new = completed(word, found[0].text, found[0].final)
        else:
            common = common_start([c.text for c in found])
            if len(common) <= len(word.text):
                if listing:
                    self._list([c.label for c in found])
                else:
                    self._write("\x07")
                return
            new = completed(word, common, False)
        if not editor.replace(word.start, editor.cursor, new):
            self._write("\x07")
        if len(found) == 1:
            self._tabs = 0  # done: the next Tab is a first one (after a partial one, a second Tab lists)
        self._draw()

    def _list(self, labels: list[str]) -> None:
        shown = columns(labels, self.width if self.width > 0 else 80)
        self._write(self.view.finish() + "".join(line + "\r\n" for line in shown))
        self.view.moved_to(0)
        self._draw()

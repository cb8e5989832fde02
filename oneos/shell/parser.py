"""The OneOS shell language: a pure parser from text to an AST, no I/O.

    A=1 python3 gen.py "$N" @rt-1 | grep -v '^#' @tag:fast > /out.txt 2>&1 && echo ok &

The grammar, POSIX-shell-like but deliberately small::

    script    := sep* (and_or ((';' | '\\n' | '&') sep*)*)?
    and_or    := pipeline (('&&' | '||') '\\n'* pipeline)*
    pipeline  := command ('|' '\\n'* command)*
    command   := (word | redirect)+    -- leading NAME=value words are
                                          assignments, trailing unquoted
                                          @RUNTIME / @tag:T / @dev:D  placement
    redirect  := [digit] ('<' | '>' | '>>') word  |  [digit] '>&' digit

Words are made of parts: literal text (remembering whether it was quoted,
because only unquoted ``*``, ``?`` and ``[`` glob) and parameter expansions
``$NAME``, ``${NAME}`` and ``$?``.  Expansion and globbing happen later
(:mod:`oneos.shell.expand`, the executor), so this module never needs an
environment, a file system or a clock, and is fuzzed with arbitrary text.

Every problem raises :class:`ShellSyntaxError` with the 0-based offset of the
offending character and a message saying what was expected.  The parser is
iterative (no recursion per token), so no input can exhaust the stack; lines
over :data:`MAX_LINE` characters are refused before any work is done.

What is left out on purpose, and rejected rather than silently misread:
command substitution (``$(...)``, backquotes), subshells and ``(``/``)``,
``&>``, and ``>&FILE``.  Rejecting them keeps the meaning of every accepted
line identical to what a bash user expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oneos.errors import OneOSError

MAX_LINE = 64 * 1024
"""Longest accepted input, in characters: an interactive line, not a file."""

MAX_FD = 9
"""Highest file descriptor a redirection may name (POSIX: one digit)."""

# Same rules as oneos.config.ID_PATTERN / TAG_PATTERN (a test keeps them in
# sync); copied so that parsing does not import the pub/sub stack.
RUNTIME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Same rule as a device name (oneos.devices.info).
DEVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_BLANKS = frozenset(" \t\r")
_OPERATOR_START = frozenset(";&|<>\n")
_RESERVED = frozenset("()`")
_WORD_END = _BLANKS | _OPERATOR_START | _RESERVED
_DQ_ESCAPABLE = frozenset('$`"\\')
_PLAIN_RUN = re.compile(r"[^ \t\r\n;&|<>()`'\"\\$]+")
_DQ_RUN = re.compile(r"[^\"\\$`]+")


class ShellSyntaxError(OneOSError):
    """A shell line cannot be parsed.

    ``position`` is the 0-based character offset of the problem, so an edge
    (the shell server, the desktop) can point at it; ``reason`` is the
    message without the location prefix.
    """

    def __init__(self, text: str, position: int, reason: str) -> None:
        super().__init__(f"syntax error at {_where(text, position)}: {reason}")
        self.position = position
        self.reason = reason


def _where(text: str, position: int) -> str:
    """Human (1-based) location of *position*; lines only matter for scripts."""
    line_start = text.rfind("\n", 0, position) + 1
    column = position - line_start + 1
    if "\n" not in text:
        return f"column {column}"
    return f"line {text.count(chr(10), 0, position) + 1}, column {column}"


# --- the AST -------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """Plain text of a word.  ``quoted`` text never globs nor splits."""

    text: str
    quoted: bool = False


@dataclass(frozen=True)
class Param:
    """``$NAME``, ``${NAME}`` or ``$?`` (name ``"?"``).

    ``quoted`` records that it stood inside double quotes; expansion does not
    split words, so it only matters to a future executor that might.
    """

    name: str
    quoted: bool = False


Part = Literal | Param


@dataclass(frozen=True)
class Word:
    """One shell word as written: its parts, in order, not yet expanded.

    Parts are canonical: adjacent literals with the same quoting are merged,
    so two spellings of the same word (``'a'"b"`` and ``"ab"``) compare equal.
    """

    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Assignment:
    """A leading ``NAME=value`` word: sets NAME for this command (or the shell)."""

    name: str
    value: Word


@dataclass(frozen=True)
class Redirect:
    """``fd op target``: ``op`` is ``<``, ``>``, ``>>`` (target a Word, a OneOS
    path) or ``>&`` (target an int, the file descriptor to duplicate)."""

    fd: int
    op: str
    target: Word | int


@dataclass(frozen=True)
class Placement:
    """Where a stage must run: a runtime id, tags and devices (``@dev:NAME``, in state ok) the runtime must have."""

    runtime: str | None = None
    tags: tuple[str, ...] = ()
    near: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """One pipeline stage.  ``words`` may be empty for ``A=1`` or ``> f``."""

    words: tuple[Word, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    assignments: tuple[Assignment, ...] = ()
    placement: Placement = Placement()


@dataclass(frozen=True)
class Pipeline:
    """Stages joined by ``|``: each one's stdout feeds the next one's stdin."""

    stages: tuple[Command, ...]


@dataclass(frozen=True)
class AndOr:
    """Pipelines joined by ``&&``/``||``; ``background`` when ended by ``&``."""

    first: Pipeline
    rest: tuple[tuple[str, Pipeline], ...] = ()
    background: bool = False


@dataclass(frozen=True)
class Script:
    """A whole input: and-or lists run one after another.  May be empty."""

    items: tuple[AndOr, ...] = ()


_NOWHERE = Placement()


# --- tokens --------------------------------------------------------------------


@dataclass(frozen=True)
class _WordToken:
    word: Word
    position: int
    plain: str | None  # the text when the word is one unquoted literal


@dataclass(frozen=True)
class _OpToken:
    op: str  # ';' '\n' '&' '&&' '|' '||' or a redirection operator
    position: int
    fd: int | None = None  # redirections only: an explicit descriptor


@dataclass(frozen=True)
class _EndToken:
    position: int


_Token = _WordToken | _OpToken | _EndToken
_REDIRECT_OPS = frozenset({"<", ">", ">>", ">&"})


def _describe(token: _Token) -> str:
    """How a token is named in "expected X, found Y" messages."""
    if isinstance(token, _EndToken):
        return "end of input"
    if isinstance(token, _OpToken):
        return "a newline" if token.op == "\n" else f"'{token.op}'"
    return "a word"


class _WordBuilder:
    """Collects the parts of one word and makes them canonical.

    Canonical means two spellings of one word give equal ASTs: adjacent
    literals with the same quoting are merged, and an empty quoted literal
    (``''``) is kept only where it changes meaning: as the whole word (an
    empty argument) or in front of unquoted text, where it stops ``@x``
    being a placement and ``A=1`` an assignment.
    """

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self._chunks: list[str] = []
        self._quoted: bool | None = None  # quoting of the pending chunks

    def add_text(self, text: str, quoted: bool) -> None:
        if self._quoted is not None and self._quoted != quoted:
            self._flush()
        self._quoted = quoted
        self._chunks.append(text)

    def add_param(self, name: str, quoted: bool) -> None:
        self._flush()
        self._parts.append(Param(name, quoted))

    def _flush(self) -> None:
        if self._quoted is not None:
            self._parts.append(Literal("".join(self._chunks), self._quoted))
        self._chunks, self._quoted = [], None

    def finish(self) -> tuple[Part, ...]:
        self._flush()
        if any(isinstance(p, Literal) and not p.text for p in self._parts):
            return canonical_parts(self._parts)
        return tuple(self._parts)  # already merged: quoting alternates


def canonical_parts(parts: list[Part] | tuple[Part, ...]) -> tuple[Part, ...]:
    """*parts* in canonical form (see :class:`_WordBuilder`)."""
    merged = _merge(parts)
    return tuple(_merge([p for i, p in enumerate(merged) if not _droppable(merged, i)]))


def _merge(parts: list[Part] | tuple[Part, ...]) -> list[Part]:
    """Join runs of literals with the same quoting (linear, for huge words)."""
    merged: list[Part] = []
    chunks: list[str] = []
    for i, part in enumerate(parts):
        if not isinstance(part, Literal):
            merged.append(part)
            continue
        chunks.append(part.text)
        after = parts[i + 1] if i + 1 < len(parts) else None
        if not (isinstance(after, Literal) and after.quoted == part.quoted):
            merged.append(Literal("".join(chunks), part.quoted))
            chunks = []
    return merged


def _droppable(parts: list[Part], i: int) -> bool:
    """Empty literals are noise, except a leading ``''`` that guards meaning."""
    part = parts[i]
    if not isinstance(part, Literal) or part.text:
        return False
    if not part.quoted:
        return True
    after = parts[i + 1] if i + 1 < len(parts) else None
    return not (i == 0 and (after is None or (isinstance(after, Literal) and not after.quoted)))


def _plain(parts: tuple[Part, ...]) -> str | None:
    """The text of a word that is one unquoted literal, else None."""
    if len(parts) == 1 and isinstance(parts[0], Literal) and not parts[0].quoted:
        return parts[0].text
    return None


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` accepts '²', which ``int`` refuses."""
    return bool(text) and set(text) <= _DIGITS


def _descriptor(text: str, digits: str, start: int, hint: str = "") -> int:
    """A redirection's descriptor: one digit, so ``echo 100>f`` is not fd 100."""
    if len(digits) > 1 or int(digits) > MAX_FD:
        shown = digits if len(digits) <= 20 else digits[:20] + "..."
        raise ShellSyntaxError(text, start, f"file descriptor {shown} is out of range (0-{MAX_FD}){hint}")
    return int(digits)


class _Lexer:
    """Turns text into tokens on demand, so errors come out in text order."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, position: int, reason: str) -> ShellSyntaxError:
        return ShellSyntaxError(self.text, position, reason)

    def peek(self, offset: int = 0) -> str:
        """The character *offset* ahead, or '' past the end."""
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def next_token(self) -> _Token:
        self._skip_blanks_and_comment()
        start = self.pos
        c = self.peek()
        if not c:
            return _EndToken(start)
        if c in _RESERVED:
            raise self._reserved(start)
        if c in _OPERATOR_START:
            return self._operator(None, start)
        return self._word(start)

    def _skip_blanks_and_comment(self) -> None:
        """Skip blanks, line continuations and a ``#`` comment (not its newline)."""
        while True:
            c = self.peek()
            if c in _BLANKS:
                self.pos += 1
            elif c == "\\" and self.peek(1) == "\n":
                self.pos += 2
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _reserved(self, position: int) -> ShellSyntaxError:
        c = self.text[position]
        if c == "`":
            return self.error(
                position, "command substitution with '`' is not supported (write \\` or '`' to use it literally)"
            )
        return self.error(position, f"'{c}' is not supported here (quote it to use it literally)")

    def _operator(self, fd: int | None, start: int) -> _OpToken:
        """Read an operator at self.pos; *fd* is a digit word just before it."""
        c, n = self.peek(), self.peek(1)
        if c == "&" and n == ">":
            raise self.error(start, "'&>' is not supported; write '> FILE 2>&1'")
        if c in "&|" and n == c:
            op = c + c
        elif c == ">" and n in (">", "&") and n:
            op = c + n
        else:
            op = c
        self.pos += len(op)
        return _OpToken(op, start, fd)

    def _word(self, start: int) -> _Token:
        builder = _WordBuilder()
        while True:
            c = self.peek()
            if not c or c in _WORD_END:
                break
            if c == "'":
                self._single_quoted(builder)
            elif c == '"':
                self._double_quoted(builder)
            elif c == "\\":
                self._escape(builder)
            elif c == "$":
                self._dollar(builder, quoted=False)
            else:
                self._run(_PLAIN_RUN, builder, quoted=False)
        parts = builder.finish()
        plain = _plain(parts)
        if plain is not None and self.peek() in ("<", ">") and _is_number(plain):
            hint = "; put a space before the operator if it is an argument"
            return self._operator(_descriptor(self.text, plain, start, hint), start)
        return _WordToken(Word(parts), start, plain)

    def _single_quoted(self, builder: _WordBuilder) -> None:
        start = self.pos
        end = self.text.find("'", start + 1)
        if end < 0:
            raise self.error(start, 'unterminated single quote (expected a closing "\'" before the end of input)')
        builder.add_text(self.text[start + 1 : end], quoted=True)
        self.pos = end + 1

    def _double_quoted(self, builder: _WordBuilder) -> None:
        start = self.pos
        self.pos += 1
        builder.add_text("", quoted=True)
        while True:
            c = self.peek()
            if not c:
                raise self.error(start, "unterminated double quote (expected a closing '\"' before the end of input)")
            if c == '"':
                self.pos += 1
                return
            if c == "`":
                raise self._reserved(self.pos)
            if c == "$":
                self._dollar(builder, quoted=True)
            elif c == "\\":
                self._escape_in_double_quotes(builder)
            else:
                self._run(_DQ_RUN, builder, quoted=True)

    def _run(self, pattern: re.Pattern[str], builder: _WordBuilder, quoted: bool) -> None:
        """Take a run of ordinary characters at once: huge words stay linear."""
        match = pattern.match(self.text, self.pos)
        assert match is not None
        builder.add_text(match.group(), quoted)
        self.pos = match.end()

    def _escape(self, builder: _WordBuilder) -> None:
        """Unquoted backslash: quotes the next character; before a newline, joins lines."""
        n = self.peek(1)
        if not n:
            raise self.error(self.pos, "expected a character after '\\' (it is the last character)")
        if n != "\n":
            builder.add_text(n, quoted=True)
        self.pos += 2

    def _escape_in_double_quotes(self, builder: _WordBuilder) -> None:
        """As in POSIX: only ``$ ` " \\`` and newline are special after a backslash."""
        n = self.peek(1)
        if n == "\n":
            self.pos += 2
        elif n in _DQ_ESCAPABLE:
            builder.add_text(n, quoted=True)
            self.pos += 2
        else:
            builder.add_text("\\", quoted=True)
            self.pos += 1

    def _dollar(self, builder: _WordBuilder, quoted: bool) -> None:
        start = self.pos
        n = self.peek(1)
        if n == "{":
            self._braced_param(builder, quoted)
        elif n == "(":
            raise self.error(start, "command substitution '$(' is not supported (quote the '$' to use it literally)")
        elif n == "?":
            builder.add_param("?", quoted)
            self.pos += 2
        elif n in _NAME_START:
            end = start + 1
            while end < len(self.text) and self.text[end] in _NAME_CHARS:
                end += 1
            builder.add_param(self.text[start + 1 : end], quoted)
            self.pos = end
        else:
            builder.add_text("$", quoted)
            self.pos += 1

    def _braced_param(self, builder: _WordBuilder, quoted: bool) -> None:
        start = self.pos
        end = self.text.find("}", start + 2)
        if end < 0:
            raise self.error(start, "unterminated '${' (expected a variable name and a closing '}')")
        name = self.text[start + 2 : end]
        if name != "?" and not NAME_PATTERN.fullmatch(name):
            shown = name if len(name) <= 20 else name[:20] + "..."
            raise self.error(
                start + 2, f"expected a variable name inside '${{...}}', found {shown!r} (modifiers are not supported)"
            )
        builder.add_param(name, quoted)
        self.pos = end + 1


# --- the parser ----------------------------------------------------------------


class _Parser:
    """Recursive-descent in shape, loops in fact: one token of lookahead."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lexer = _Lexer(text)
        self.token: _Token = self.lexer.next_token()

    def error(self, position: int, reason: str) -> ShellSyntaxError:
        return ShellSyntaxError(self.text, position, reason)

    def advance(self) -> _Token:
        token = self.token
        self.token = self.lexer.next_token()
        return token

    def is_op(self, *ops: str) -> bool:
        return isinstance(self.token, _OpToken) and self.token.op in ops and self.token.fd is None

    def skip_newlines(self) -> None:
        while self.is_op("\n"):
            self.advance()

    def script(self) -> Script:
        items: list[AndOr] = []
        self.skip_newlines()
        while not isinstance(self.token, _EndToken):
            items.append(self.and_or())
            self.skip_newlines()
        return Script(tuple(items))

    def and_or(self) -> AndOr:
        first = self.pipeline(after=None)
        rest: list[tuple[str, Pipeline]] = []
        while self.is_op("&&", "||"):
            op = self.advance()
            assert isinstance(op, _OpToken)  # is_op said so
            self.skip_newlines()
            rest.append((op.op, self.pipeline(after=op)))
        return AndOr(first, tuple(rest), self.terminator())

    def terminator(self) -> bool:
        """Consume what ends an and-or list; True if it was ``&``."""
        token = self.token
        if isinstance(token, _EndToken):
            return False
        if self.is_op(";", "\n", "&"):
            self.advance()
            return token.op == "&"  # type: ignore[union-attr]
        # Unreachable with today's tokens; here so a new one is never skipped.
        raise self.error(
            token.position, f"expected ';', '&', '&&', '||', '|' or the end of the line, found {_describe(token)}"
        )

    def pipeline(self, after: _OpToken | None) -> Pipeline:
        stages = [self.command(after)]
        while self.is_op("|"):
            op = self.advance()
            assert isinstance(op, _OpToken)  # is_op said so
            self.skip_newlines()
            stages.append(self.command(op))
        return Pipeline(tuple(stages))

    def command(self, after: _OpToken | None) -> Command:
        start = self.token
        words: list[_WordToken] = []
        redirects: list[Redirect] = []
        while True:
            token = self.token
            if isinstance(token, _WordToken):
                words.append(token)
                self.advance()
            elif isinstance(token, _OpToken) and token.op in _REDIRECT_OPS:
                redirects.append(self.redirect())
            else:
                break
        if not words and not redirects:
            raise self.missing_command(start, after)
        return _build_command(self, words, redirects)

    def missing_command(self, found: _Token, after: _OpToken | None) -> ShellSyntaxError:
        if after is not None:
            where = found.position if not isinstance(found, _EndToken) else len(self.text)
            suffix = "" if isinstance(found, _EndToken) else f", found {_describe(found)}"
            return self.error(where, f"expected a command after '{after.op}'{suffix}")
        return self.error(found.position, f"expected a command before {_describe(found)}")

    def redirect(self) -> Redirect:
        op = self.advance()
        assert isinstance(op, _OpToken)
        fd = op.fd if op.fd is not None else (0 if op.op == "<" else 1)
        target = self.token
        if op.op == ">&":
            if not (isinstance(target, _WordToken) and target.plain is not None and _is_number(target.plain)):
                raise self.error(
                    target.position,
                    "expected a file descriptor number after '>&' (to send both to a file, write '> FILE 2>&1')",
                )
            self.advance()
            return Redirect(fd, op.op, _descriptor(self.text, target.plain, target.position))
        if not isinstance(target, _WordToken):
            raise self.error(target.position, f"expected a file name after '{op.op}', found {_describe(target)}")
        self.advance()
        return Redirect(fd, op.op, target.word)


def _is_assignment(token: _WordToken) -> bool:
    """``NAME=...`` with the name and ``=`` unquoted, as in POSIX."""
    first = token.word.parts[0] if token.word.parts else None
    if not isinstance(first, Literal) or first.quoted:
        return False
    name, eq, _ = first.text.partition("=")
    return bool(eq) and NAME_PATTERN.fullmatch(name) is not None


def _assignment(token: _WordToken) -> Assignment:
    first = token.word.parts[0]
    assert isinstance(first, Literal)
    name, _, value = first.text.partition("=")
    head: tuple[Part, ...] = (Literal(value),) if value else ()
    return Assignment(name, Word(canonical_parts(head + token.word.parts[1:])))


def _is_placement(token: _WordToken) -> bool:
    """An unquoted leading ``@`` marks a placement word (``'@x'`` is an argument)."""
    first = token.word.parts[0] if token.word.parts else None
    return isinstance(first, Literal) and not first.quoted and first.text.startswith("@")


def _build_command(parser: _Parser, words: list[_WordToken], redirects: list[Redirect]) -> Command:
    """Split a stage's words into assignments, arguments and placement."""
    split = 0
    while split < len(words) and _is_assignment(words[split]):
        split += 1
    assignments = tuple(_assignment(t) for t in words[:split])
    rest = words[split:]
    cut = len(rest)
    while cut > 0 and _is_placement(rest[cut - 1]):
        cut -= 1
    placement = _placement(parser, rest[cut:])
    if rest[cut:] and not rest[:cut]:
        raise parser.error(rest[cut].position, f"expected a command before the placement {rest[cut].plain or '@...'!r}")
    return Command(tuple(t.word for t in rest[:cut]), tuple(redirects), assignments, placement)


def _placement(parser: _Parser, tokens: list[_WordToken]) -> Placement:
    if not tokens:
        return _NOWHERE
    runtime: str | None = None
    tags: list[str] = []
    near: list[str] = []
    for token in tokens:
        if token.plain is None:
            raise parser.error(
                token.position,
                "a placement must be plain text like @RUNTIME, @tag:TAG or @dev:DEVICE (quote it if it is an argument)",
            )
        if token.plain.startswith("@tag:"):
            tags.append(_placement_name(parser, token, token.plain[5:], TAG_PATTERN, "a tag"))
            continue
        if token.plain.startswith("@dev:"):
            near.append(_placement_name(parser, token, token.plain[5:], DEVICE_PATTERN, "a device name"))
            continue
        name = _placement_name(parser, token, token.plain[1:], RUNTIME_PATTERN, "a runtime id")
        if runtime is not None:
            raise parser.error(token.position, f"a stage can run on one runtime only (already placed on {runtime!r})")
        runtime = name
    return Placement(runtime, tuple(tags), tuple(near))


def _placement_name(parser: _Parser, token: _WordToken, name: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(name):
        shown = token.plain if len(token.plain or "") <= 40 else (token.plain or "")[:40] + "..."
        raise parser.error(
            token.position,
            f"expected {what} after '@' in {shown!r} (write @RUNTIME, @tag:TAG or @dev:DEVICE; quote it if it is an argument)",
        )
    return name


def _check_input(text: str) -> None:
    """Refuse what no line should hold before spending any work on it."""
    if len(text) > MAX_LINE:
        raise ShellSyntaxError(text[:0], MAX_LINE, f"line too long ({len(text)} characters; the limit is {MAX_LINE})")
    nul = text.find("\0")
    if nul >= 0:
        raise ShellSyntaxError(text, nul, "NUL characters are not allowed (binary input?)")


def parse(line: str) -> Script:
    """Parse one shell input (a line, or several separated by newlines).

    Raises :class:`ShellSyntaxError` and nothing else for any ``str``.
    """
    if not isinstance(line, str):
        raise TypeError(f"parse() needs str, not {type(line).__name__}")
    _check_input(line)
    return _Parser(line).script()

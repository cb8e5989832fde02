"""The OneOS shell language: a pure parser from text to an AST, no I/O.

    A=1 python3 gen.py "$N" @rt-1 | grep -v '^#' @tag:fast > /out.txt 2>&1 && echo ok &
    for f in $(ls /data); do if [ -s "/data/$f" ]; then wc -l "/data/$f" @rt-2; fi; done > /counts

The grammar, a subset of bash's, kept small enough to be read here::

    script    := list                      -- the whole input
    list      := sep* (and_or (('; ' | '\\n' | '&') sep*)*)?
    and_or    := pipeline (('&&' | '||') '\\n'* pipeline)*
    pipeline  := ['!'] command ('|' '\\n'* command)*
    command   := simple | compound redirect* | function
    simple    := (word | redirect)+        -- leading NAME=value words are
                                              assignments, trailing unquoted
                                              @RUNTIME / @tag:T / @dev:D  placement
    compound  := '{' list '}' | '(' list ')' | '((' ARITH '))'
               | 'if' list 'then' list ('elif' list 'then' list)* ['else' list] 'fi'
               | ('while' | 'until') list 'do' list 'done'
               | 'for' NAME ['in' word* (';' | '\\n')] 'do' list 'done'
               | 'for' '((' ARITH ';' ARITH ';' ARITH '))' [';'] 'do' list 'done'
               | 'case' word 'in' (['('] word ('|' word)* ')' list [';;' | ';&' | ';;&'])* 'esac'
    function  := NAME '(' ')' compound  |  'function' NAME ['(' ')'] compound
    redirect  := [digit] ('<' | '>' | '>>') word  |  [digit] '>&' digit

Reserved words (``if``, ``then``, ``{``, ``}`` ...) are recognised only
unquoted and where a command starts, as in bash, so ``echo if`` is an
argument and ``'if'`` a command name.

Words are made of parts: literal text (remembering whether it was quoted,
because only unquoted ``*``, ``?`` and ``[`` glob), parameter expansions
(``$NAME``, ``${NAME}``, ``$?``, ``$1``, ``$#``, ``$@``, ``$*``), ``~`` and
``~USER`` at the start of a word, command substitutions (``$(...)`` and
backquotes, holding a parsed :class:`Script`) and arithmetic expansions
(``$((...))``, holding the parts of the expression text).  Expansion,
globbing and running happen later (:mod:`oneos.shell.words`,
:mod:`oneos.shell.interpreter`), so this module never needs an environment,
a file system or a clock, and is fuzzed with arbitrary text.

Every problem raises :class:`ShellSyntaxError` with the 0-based offset of the
offending character and a message saying what was expected.  An input that
stops inside a construct (an open quote, ``if`` without ``fi``, a line
ending in ``|``) raises it with ``incomplete`` set, which is how a terminal
knows to ask for another line (:func:`is_incomplete`).  Lists, pipelines
and words are parsed with loops; only nesting (a compound command inside
another, ``$(...)`` inside a word) recurses, and it is refused past
:data:`MAX_NESTING` levels, so no input can exhaust the stack.  Inputs over
:data:`MAX_LINE` characters are refused before any work is done.

What is left out on purpose, and rejected rather than silently misread:
``&>``, ``>&FILE``, here-documents (``<<``), ``[[ ... ]]`` is not special
(it would be a command named ``[[``), parameter modifiers (``${X:-y}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from oneos.errors import OneOSError

MAX_LINE = 64 * 1024
"""Longest accepted input, in characters: an interactive line, or a sourced script."""

MAX_FD = 9
"""Highest file descriptor a redirection may name (POSIX: one digit)."""

MAX_NESTING = 32
"""Deepest nesting of compound commands and substitutions: far beyond what people write, well within the stack."""

# Same rules as oneos.config.ID_PATTERN / TAG_PATTERN (a test keeps them in
# sync); copied so that parsing does not import the pub/sub stack.
RUNTIME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Same rule as a device name (oneos.devices.info).
DEVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Function names: a variable name, or with '-' too (``my-tool() { ...; }``), as bash allows.
FUNCTION_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: ``~USER``: the characters a OneOS user name may hold; ``~+`` and ``~-`` are $PWD and $OLDPWD.
_TILDE_USER = re.compile(r"\+|[A-Za-z0-9._-]*")
#: Parameters with a one-character name: ``$?``, ``$#``, ``$@``, ``$*`` and ``$0``..``$9``.
SPECIAL_PARAMS = frozenset("?#@*0123456789")

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_BLANKS = frozenset(" \t\r")
_OPERATOR_START = frozenset(";&|<>()\n")
_WORD_END = _BLANKS | _OPERATOR_START
_DQ_ESCAPABLE = frozenset('$`"\\')
_PLAIN_RUN = re.compile(r"[^ \t\r\n;&|<>()`'\"\\$]+")
_DQ_RUN = re.compile(r"[^\"\\$`]+")
_ARITH_RUN = re.compile(r"[^$`\"]+")
_PARENS = re.compile(r"[()]")
#: arithmetic_end's answer when the text ends before the ``))``.
_UNCLOSED = -1

#: Words that open a compound command where a command starts.
OPENERS = frozenset({"if", "while", "until", "for", "case", "function", "{"})
#: Words that close or continue one; never a command name.
CLOSERS = frozenset({"then", "elif", "else", "fi", "do", "done", "esac", "}"})
#: Every reserved word (``in`` only after ``for NAME`` and ``case WORD``; ``!`` before a pipeline).
RESERVED = OPENERS | CLOSERS | {"!", "in"}
_CASE_ENDS = frozenset({";;", ";&", ";;&"})


class ShellSyntaxError(OneOSError):
    """A shell line cannot be parsed.

    ``position`` is the 0-based character offset of the problem, so an edge
    (the shell server, the desktop) can point at it; ``reason`` is the
    message without the location prefix.  ``incomplete`` is True when the
    text only stopped too early (an open quote, ``if`` without ``fi``): a
    terminal then asks for more lines instead of reporting it.
    """

    def __init__(self, text: str, position: int, reason: str, incomplete: bool = False) -> None:
        super().__init__(f"syntax error at {_where(text, position)}: {reason}")
        self.position = position
        self.reason = reason
        self.incomplete = incomplete


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
    """``$NAME``, ``${NAME}``, ``$?`` (name ``"?"``), ``$1`` / ``${10}``, ``$#``, ``$@`` or ``$*``.

    ``quoted`` records that it stood inside double quotes.
    """

    name: str
    quoted: bool = False


@dataclass(frozen=True)
class Tilde:
    """``~`` (the user's home, ``user=""``) or ``~USER`` (``/home/USER``), only ever first in a word."""

    user: str = ""


@dataclass(frozen=True)
class CommandSub:
    """``$(SCRIPT)`` or ```SCRIPT```: replaced by what the script prints, trailing newlines removed.

    Backquotes parse to the same node as ``$(...)`` (and unparse as it).
    """

    script: Script
    quoted: bool = False


@dataclass(frozen=True)
class ArithSub:
    """``$((EXPRESSION))``: *parts* are the expression's text and the expansions inside it."""

    parts: tuple[Part, ...]
    quoted: bool = False


Part = Literal | Param | Tilde | CommandSub | ArithSub


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
    """A simple command (one pipeline stage).  ``words`` may be empty for ``A=1`` or ``> f``."""

    words: tuple[Word, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    assignments: tuple[Assignment, ...] = ()
    placement: Placement = Placement()


@dataclass(frozen=True)
class Group:
    """``{ LIST; }``: a list run in this shell, as one command (one set of redirections)."""

    body: Script
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class Subshell:
    """``( LIST )``: a list run in a copy of the shell, so its ``cd`` and variables do not leak."""

    body: Script
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class If:
    """``if C; then B; elif C2; then B2; else E; fi``: *clauses* are (condition, body) pairs."""

    clauses: tuple[tuple[Script, Script], ...]
    orelse: Script | None = None
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class Loop:
    """``while C; do B; done`` (or ``until``, which loops while C fails)."""

    condition: Script
    body: Script
    until: bool = False
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class For:
    """``for NAME in WORDS; do B; done``; ``words`` None is ``for NAME; do``, over ``"$@"``."""

    name: str
    words: tuple[Word, ...] | None
    body: Script
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class ArithFor:
    """``for ((INIT; TEST; STEP)); do B; done``: three arithmetic expressions (an empty TEST is true)."""

    init: tuple[Part, ...]
    test: tuple[Part, ...]
    step: tuple[Part, ...]
    body: Script
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class CaseItem:
    """``PATTERN | PATTERN) LIST ;;``; *terminator* ``;&`` falls through, ``;;&`` tests the next patterns."""

    patterns: tuple[Word, ...]
    body: Script
    terminator: str = ";;"


@dataclass(frozen=True)
class Case:
    """``case WORD in ITEMS esac``: the first item with a matching glob pattern runs."""

    word: Word
    items: tuple[CaseItem, ...]
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class ArithCommand:
    """``((EXPRESSION))``: status 0 when the expression is non-zero, 1 when it is zero."""

    parts: tuple[Part, ...]
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class FunctionDef:
    """``NAME() BODY``: defines a function whose body (a compound command, with its redirections) runs at each call."""

    name: str
    body: Compound


Compound = Group | Subshell | If | Loop | For | ArithFor | Case | ArithCommand
#: What a pipeline stage can be.
Node = Command | Group | Subshell | If | Loop | For | ArithFor | Case | ArithCommand | FunctionDef
COMPOUND_TYPES = (Group, Subshell, If, Loop, For, ArithFor, Case, ArithCommand)


@dataclass(frozen=True)
class Pipeline:
    """Stages joined by ``|``: each one's stdout feeds the next one's stdin; ``negated`` by a leading ``!``."""

    stages: tuple[Node, ...]
    negated: bool = False


@dataclass(frozen=True)
class AndOr:
    """Pipelines joined by ``&&``/``||``; ``background`` when ended by ``&``.

    ``ends_line`` (not part of equality) says the list was the last on its
    line: an error that abandons "the rest of the line", as bash does for a
    failed arithmetic expansion, skips to the first list after it.
    """

    first: Pipeline
    rest: tuple[tuple[str, Pipeline], ...] = ()
    background: bool = False
    ends_line: bool = field(default=True, compare=False, repr=False)


@dataclass(frozen=True)
class Script:
    """A whole input, or the body of a compound command: and-or lists run one after another.  May be empty."""

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
    op: str  # ';' '\n' '&' '&&' '|' '||' '(' ')' ';;' ';&' ';;&' or a redirection operator
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
    if token.plain in RESERVED:
        return f"'{token.plain}'"
    return "a word"


class _WordBuilder:
    """Collects the parts of one word and makes them canonical.

    Canonical means two spellings of one word give equal ASTs: adjacent
    literals with the same quoting are merged, and an empty quoted literal
    (``''``) is kept only where it changes meaning: as the whole word (an
    empty argument) or in front of unquoted text, where it stops ``@x``
    being a placement, ``A=1`` an assignment and ``if`` a reserved word.
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
        self.add_part(Param(name, quoted))

    def add_part(self, part: Part) -> None:
        self._flush()
        self._parts.append(part)

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


def tilde_prefix(parts: tuple[Part, ...]) -> tuple[Part, ...]:
    """Canonical *parts* with a leading ``~`` / ``~USER`` made a :class:`Tilde`.

    As in bash, only an unquoted ``~`` at the start, with nothing after the
    user name but a ``/`` (or the end of the word), is a tilde prefix:
    ``~/x``, ``~ann``; not ``~'x'``, ``\\~`` nor ``a~``.  Decided on the
    canonical parts, so a word and its unparsed text always agree.
    """
    first = parts[0] if parts else None
    if not (isinstance(first, Literal) and not first.quoted and first.text.startswith("~")):
        return parts
    match = _TILDE_USER.match(first.text, 1)
    assert match is not None  # (the pattern matches the empty string)
    rest = first.text[match.end() :]
    if rest.startswith("/"):
        return (Tilde(match.group()), Literal(rest), *parts[1:])
    if not rest and len(parts) == 1:
        return (Tilde(match.group()),)
    return parts


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


def _shown(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Lexer:
    """Turns text into tokens on demand, so errors come out in text order.

    *depth* is how deeply the text being lexed is nested (in compound
    commands and substitutions): ``$(...)`` and backquotes parse their
    script with a parser one level deeper.
    """

    def __init__(self, text: str, pos: int = 0, depth: int = 0) -> None:
        self.text = text
        self.pos = pos
        self.depth = depth

    def error(self, position: int, reason: str, incomplete: bool = False) -> ShellSyntaxError:
        return ShellSyntaxError(self.text, position, reason, incomplete)

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

    def _operator(self, fd: int | None, start: int) -> _OpToken:
        """Read an operator at self.pos; *fd* is a digit word just before it."""
        c, n = self.peek(), self.peek(1)
        if c == "&" and n == ">":
            raise self.error(start, "'&>' is not supported; write '> FILE 2>&1'")
        if c == ";" and n == ";":
            op = ";;&" if self.peek(2) == "&" else ";;"
        elif c == ";" and n == "&":
            op = ";&"
        elif c in "&|" and n == c:
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
            elif c == "`":
                self._backquoted(builder, quoted=False)
            else:
                self._run(_PLAIN_RUN, builder, quoted=False)
        parts = tilde_prefix(builder.finish())
        plain = _plain(parts)
        if plain is not None and self.peek() in ("<", ">") and _is_number(plain):
            hint = "; put a space before the operator if it is an argument"
            return self._operator(_descriptor(self.text, plain, start, hint), start)
        return _WordToken(Word(parts), start, plain)

    def _single_quoted(self, builder: _WordBuilder) -> None:
        start = self.pos
        end = self.text.find("'", start + 1)
        if end < 0:
            raise self.error(
                start, 'unterminated single quote (expected a closing "\'" before the end of input)', incomplete=True
            )
        builder.add_text(self.text[start + 1 : end], quoted=True)
        self.pos = end + 1

    def _double_quoted(self, builder: _WordBuilder) -> None:
        start = self.pos
        self.pos += 1
        builder.add_text("", quoted=True)
        while True:
            c = self.peek()
            if not c:
                raise self.error(
                    start, "unterminated double quote (expected a closing '\"' before the end of input)", True
                )
            if c == '"':
                self.pos += 1
                return
            if c == "`":
                self._backquoted(builder, quoted=True)
            elif c == "$":
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
            raise self.error(self.pos, "expected a character after '\\' (it is the last character)", incomplete=True)
        if n != "\n":
            builder.add_text(n, quoted=True)
        self.pos += 2

    def _escape_in_double_quotes(self, builder: _WordBuilder) -> None:
        """As in POSIX: only ``$ ` " \\`` and newline are special after a backslash."""
        n = self.peek(1)
        if n == "\n":
            self.pos += 2
        elif n in _DQ_ESCAPABLE and n:
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
        elif n == "(" and self.peek(2) == "(" and self._arithmetic(builder, quoted):
            return
        elif n == "(":
            self._command_substitution(builder, quoted)
        elif n and n in SPECIAL_PARAMS:
            builder.add_param(n, quoted)
            self.pos += 2
        elif n in _NAME_START and n:
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
            raise self.error(start, "unterminated '${' (expected a variable name and a closing '}')", incomplete=True)
        name = self.text[start + 2 : end]
        if not (NAME_PATTERN.fullmatch(name) or _is_number(name) or (len(name) == 1 and name in SPECIAL_PARAMS)):
            raise self.error(
                start + 2,
                f"expected a variable name inside '${{...}}', found {_shown(name)!r} (modifiers are not supported)",
            )
        if _is_number(name):
            name = str(int(name))  # ${01} is $1
        builder.add_param(name, quoted)
        self.pos = end + 1

    def nested(self, position: int) -> int:
        """The depth of a construct opened at *position*; refused past MAX_NESTING."""
        if self.depth >= MAX_NESTING:
            raise self.error(position, f"nested too deeply (more than {MAX_NESTING} levels)")
        return self.depth + 1

    def _command_substitution(self, builder: _WordBuilder, quoted: bool) -> None:
        """``$( SCRIPT )``: the script is parsed here, in this text, up to its ``)``."""
        start = self.pos
        sub = _Parser(self.text, start + 2, self.nested(start))
        script = sub.compound_list(frozenset({")"}))
        token = sub.token
        if isinstance(token, _EndToken):
            raise self.error(start, "unfinished '$(': expected ')' before the end of input", incomplete=True)
        if not (isinstance(token, _OpToken) and token.op == ")"):
            raise self.error(token.position, f"expected ')' to close the '$(' at {_where(self.text, start)}")
        builder.add_part(CommandSub(script, quoted))
        self.pos = sub.lexer.pos

    def _backquoted(self, builder: _WordBuilder, quoted: bool) -> None:
        """```SCRIPT```: backslash keeps ``$ ` \\`` (and ``"`` in double quotes) literal; the rest is parsed."""
        start = self.pos
        depth = self.nested(start)
        chars: list[str] = []
        origin: list[int] = []  # where each character of the inner text came from
        i = start + 1
        text = self.text
        while True:
            if i >= len(text):
                raise self.error(start, "unterminated '`' (expected a closing '`' before the end of input)", True)
            c = text[i]
            if c == "`":
                break
            if c == "\\" and i + 1 < len(text) and (text[i + 1] in "$`\\" or (quoted and text[i + 1] == '"')):
                chars.append(text[i + 1])
                origin.append(i + 1)
                i += 2
                continue
            chars.append(c)
            origin.append(i)
            i += 1
        inner = "".join(chars)
        try:
            script = _Parser(inner, 0, depth).script()
        except ShellSyntaxError as e:
            where = origin[e.position] if e.position < len(origin) else i
            raise self.error(where, e.reason + " (inside '`...`')") from None
        builder.add_part(CommandSub(script, quoted))
        self.pos = i + 1

    def arithmetic_end(self, start: int, end: int | None = None) -> int | None:
        """Where the ``))`` closing an arithmetic text that starts at *start* is, or None.

        None when the parentheses do not close with ``))`` (``$( (a) )`` is a
        command substitution holding a subshell, as in bash) or nest deeper
        than MAX_NESTING; :data:`_UNCLOSED` when the text ends first.
        """
        limit = len(self.text) if end is None else end
        depth = 0
        for match in _PARENS.finditer(self.text, start, limit):
            if match.group() == "(":
                depth += 1
                if depth > MAX_NESTING:
                    return None
            elif depth:
                depth -= 1
            elif match.start() + 1 < limit and self.text[match.start() + 1] == ")":
                return match.start()
            else:
                return None
        return _UNCLOSED

    def arithmetic_parts(self, start: int, end: int) -> tuple[Part, ...]:
        """The text between *start* and *end* as arithmetic: expansions kept, double quotes removed."""
        builder = _WordBuilder()
        self.pos = start
        while self.pos < end:
            c = self.text[self.pos]
            if c == "$":
                self._dollar(builder, quoted=True)
            elif c == "`":
                self._backquoted(builder, quoted=True)
            elif c == '"':
                self.pos += 1
            else:
                match = _ARITH_RUN.match(self.text, self.pos, end)
                assert match is not None
                builder.add_text(match.group(), quoted=True)
                self.pos = match.end()
        if self.pos > end:
            raise self.error(start, "an expansion inside '((...))' runs past its end")
        return builder.finish()

    def _arithmetic(self, builder: _WordBuilder, quoted: bool) -> bool:
        """``$((EXPRESSION))``; False (nothing consumed) when it is really ``$( (...) ...)``."""
        start = self.pos
        close = self.arithmetic_end(start + 3)
        if close is None:
            return False
        if close == _UNCLOSED:
            raise self.error(start, "unfinished '$((': expected '))' before the end of input", incomplete=True)
        depth = self.nested(start)
        outer, self.depth = self.depth, depth
        try:
            parts = self.arithmetic_parts(start + 3, close)
        finally:
            self.depth = outer
        builder.add_part(ArithSub(parts, quoted))
        self.pos = close + 2
        return True


# --- the parser ----------------------------------------------------------------


class _Parser:
    """Recursive descent with one token of lookahead; lists and pipelines are loops.

    *stops* (passed down the list rules) are the tokens that end the list
    being parsed: reserved words such as ``fi`` and ``done``, or ``)`` and
    ``;;``.  They are recognised only where a command would start.
    """

    def __init__(self, text: str, start: int = 0, depth: int = 0) -> None:
        self.text = text
        self.lexer = _Lexer(text, start, depth)
        self.token: _Token = self.lexer.next_token()

    def error(self, position: int, reason: str, incomplete: bool = False) -> ShellSyntaxError:
        return ShellSyntaxError(self.text, position, reason, incomplete)

    def advance(self) -> _Token:
        token = self.token
        self.token = self.lexer.next_token()
        return token

    def is_op(self, *ops: str) -> bool:
        return isinstance(self.token, _OpToken) and self.token.op in ops and self.token.fd is None

    def is_word(self, *words: str) -> bool:
        return isinstance(self.token, _WordToken) and self.token.plain in words

    def at_end(self) -> bool:
        return isinstance(self.token, _EndToken)

    def skip_newlines(self) -> None:
        while self.is_op("\n"):
            self.advance()

    def at_stop(self, stops: frozenset[str]) -> bool:
        token = self.token
        if isinstance(token, _EndToken):
            return True
        if isinstance(token, _OpToken):
            return token.fd is None and token.op in stops
        return token.plain in stops

    # -- lists ----------------------------------------------------------------
    def script(self) -> Script:
        script = self.compound_list(frozenset())
        if not self.at_end():  # (compound_list stops only at the end when there are no stops)
            raise self.error(self.token.position, f"unexpected {_describe(self.token)}")
        return script

    def compound_list(self, stops: frozenset[str]) -> Script:
        items: list[AndOr] = []
        self.skip_newlines()
        while not self.at_stop(stops):
            self.refuse_closer(stops)
            items.append(self.and_or(stops))
            self.skip_newlines()
        return Script(tuple(items))

    def refuse_closer(self, stops: frozenset[str]) -> None:
        """A reserved word that closes something else where a command should start (``if a; fi``)."""
        token = self.token
        if isinstance(token, _WordToken) and token.plain in CLOSERS:
            raise self.error(token.position, f"unexpected '{token.plain}'{_expected_hint(stops)}")
        if isinstance(token, _OpToken) and token.fd is None and (token.op == ")" or token.op in _CASE_ENDS):
            raise self.error(token.position, f"unexpected '{token.op}'{_expected_hint(stops)}")

    def and_or(self, stops: frozenset[str]) -> AndOr:
        first = self.pipeline(after=None)
        rest: list[tuple[str, Pipeline]] = []
        while self.is_op("&&", "||"):
            op = self.advance()
            assert isinstance(op, _OpToken)  # is_op said so
            self.skip_newlines()
            rest.append((op.op, self.pipeline(after=op)))
        background, ends_line = self.terminator(stops)
        return AndOr(first, tuple(rest), background, ends_line)

    def terminator(self, stops: frozenset[str]) -> tuple[bool, bool]:
        """Consume what ends an and-or list: (True if it was ``&``, True if its line ends there)."""
        token = self.token
        if isinstance(token, _EndToken):
            return False, True
        if self.is_op(";", "\n", "&"):
            self.advance()
            assert isinstance(token, _OpToken)
            return token.op == "&", token.op == "\n" or self.is_op("\n") or self.at_end()
        if self.at_stop(stops):  # ')' or ';;' closing the construct around it
            return False, False
        if isinstance(token, _OpToken) and (token.op == ")" or token.op in _CASE_ENDS or token.op == "("):
            raise self.error(token.position, f"unexpected '{token.op}'{_expected_hint(stops)}")
        raise self.error(
            token.position, f"expected ';', '&', '&&', '||', '|' or the end of the line, found {_describe(token)}"
        )

    def pipeline(self, after: _OpToken | None) -> Pipeline:
        negated = False
        while self.is_word("!"):
            bang = self.advance()
            negated = not negated
            after = _OpToken("!", bang.position)
        stages = [self.command(after)]
        while self.is_op("|"):
            op = self.advance()
            assert isinstance(op, _OpToken)  # is_op said so
            self.skip_newlines()
            stages.append(self.command(op))
        return Pipeline(tuple(stages), negated)

    # -- commands ---------------------------------------------------------------
    def command(self, after: _OpToken | None) -> Node:
        start = self.token
        compound = self.compound()
        if compound is not None:
            return compound
        if isinstance(start, _WordToken) and start.plain == "function":
            return self.function_keyword()
        if isinstance(start, _WordToken) and start.plain in CLOSERS:
            raise self.error(start.position, f"unexpected '{start.plain}'")
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
        if self.is_op("("):
            name = words[0].plain if len(words) == 1 and not redirects else None
            if name is not None and FUNCTION_NAME_PATTERN.fullmatch(name) and name not in RESERVED:
                return self.function_parens(name, words[0].position)
            raise self.error(self.token.position, "unexpected '(' (quote it to use it literally)")
        if not words and not redirects:
            raise self.missing_command(start, after)
        return _build_command(self, words, redirects)

    def missing_command(self, found: _Token, after: _OpToken | None) -> ShellSyntaxError:
        if after is not None:
            where = found.position if not isinstance(found, _EndToken) else len(self.text)
            suffix = "" if isinstance(found, _EndToken) else f", found {_describe(found)}"
            return self.error(
                where, f"expected a command after '{after.op}'{suffix}", incomplete=isinstance(found, _EndToken)
            )
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

    def redirects(self) -> tuple[Redirect, ...]:
        found: list[Redirect] = []
        while isinstance(self.token, _OpToken) and self.token.op in _REDIRECT_OPS:
            found.append(self.redirect())
        return tuple(found)

    # -- compound commands ----------------------------------------------------------
    def compound(self) -> Compound | None:
        """A compound command (with its redirections) if one starts here, else None."""
        token = self.token
        node: Compound
        if isinstance(token, _OpToken) and token.op == "(" and token.fd is None:
            arith = self.arithmetic_command(token)
            node = arith if arith is not None else self.subshell(token)
        elif isinstance(token, _WordToken) and token.plain in ("{", "if", "while", "until", "for", "case"):
            depth = self.lexer.nested(token.position)
            outer, self.lexer.depth = self.lexer.depth, depth
            try:
                if token.plain == "{":
                    node = self.group(token)
                elif token.plain == "if":
                    node = self.if_clause(token)
                elif token.plain in ("while", "until"):
                    node = self.loop(token)
                elif token.plain == "for":
                    node = self.for_clause(token)
                else:
                    node = self.case_clause(token)
            finally:
                self.lexer.depth = outer
        else:
            return None
        redirects = self.redirects()
        return replace(node, redirects=redirects) if redirects else node

    def unfinished(self, opener: _Token, expected: str) -> ShellSyntaxError:
        what = _opener_name(opener)
        return self.error(
            opener.position, f"unfinished '{what}': expected {expected} before the end of input", incomplete=True
        )

    def expect_word(self, word: str, opener: _Token) -> None:
        if self.is_word(word):
            self.advance()
            return
        if self.at_end():
            raise self.unfinished(opener, f"'{word}'")
        raise self.error(
            self.token.position,
            f"expected '{word}' to go with the '{_opener_name(opener)}' at {_where(self.text, opener.position)}, "
            f"found {_describe(self.token)}",
        )

    def expect_op(self, op: str, opener: _Token) -> None:
        if self.is_op(op):
            self.advance()
            return
        if self.at_end():
            raise self.unfinished(opener, f"'{op}'")
        raise self.error(
            self.token.position,
            f"expected '{op}' to go with the '{_opener_name(opener)}' at {_where(self.text, opener.position)}, "
            f"found {_describe(self.token)}",
        )

    def body(self, stops: frozenset[str], opener: _Token, after: str) -> Script:
        """A list that may not be empty (``if`` needs a condition, ``do`` a command)."""
        script = self.compound_list(stops)
        if not script.items:
            if self.at_end():
                raise self.unfinished(opener, f"a command after '{after}'")
            raise self.error(self.token.position, f"expected a command after '{after}', found {_describe(self.token)}")
        return script

    def group(self, opener: _Token) -> Group:
        self.advance()
        body = self.body(frozenset({"}"}), opener, "{")
        self.expect_word("}", opener)
        return Group(body)

    def subshell(self, opener: _Token) -> Subshell:
        depth = self.lexer.nested(opener.position)
        outer, self.lexer.depth = self.lexer.depth, depth
        try:
            self.advance()
            body = self.body(frozenset({")"}), opener, "(")
            self.expect_op(")", opener)
        finally:
            self.lexer.depth = outer
        return Subshell(body)

    def arithmetic_command(self, opener: _Token) -> ArithCommand | None:
        """``((EXPRESSION))`` when the ``(`` just read starts one (else it is a subshell)."""
        if self.text[opener.position + 1 : opener.position + 2] != "(":
            return None
        close = self.lexer.arithmetic_end(opener.position + 2)
        if close is None:
            return None
        if close == _UNCLOSED:
            raise self.error(opener.position, "unfinished '((': expected '))' before the end of input", True)
        parts = self.lexer.arithmetic_parts(opener.position + 2, close)
        self.lexer.pos = close + 2
        self.token = self.lexer.next_token()
        return ArithCommand(parts)

    def if_clause(self, opener: _Token) -> If:
        self.advance()
        then_stop = frozenset({"then"})
        else_stops = frozenset({"elif", "else", "fi"})
        condition = self.body(then_stop, opener, "if")
        self.expect_word("then", opener)
        clauses = [(condition, self.body(else_stops, opener, "then"))]
        orelse: Script | None = None
        while self.is_word("elif"):
            self.advance()
            condition = self.body(then_stop, opener, "elif")
            self.expect_word("then", opener)
            clauses.append((condition, self.body(else_stops, opener, "then")))
        if self.is_word("else"):
            self.advance()
            orelse = self.body(frozenset({"fi"}), opener, "else")
        self.expect_word("fi", opener)
        return If(tuple(clauses), orelse)

    def do_done(self, opener: _Token) -> Script:
        self.expect_word("do", opener)
        body = self.body(frozenset({"done"}), opener, "do")
        self.expect_word("done", opener)
        return body

    def loop(self, opener: _Token) -> Loop:
        self.advance()
        assert isinstance(opener, _WordToken)
        condition = self.body(frozenset({"do"}), opener, opener.plain or "while")
        return Loop(condition, self.do_done(opener), until=opener.plain == "until")

    def for_clause(self, opener: _Token) -> For | ArithFor:
        self.advance()
        if self.is_op("("):
            return self.arithmetic_for(opener)
        token = self.token
        if not (isinstance(token, _WordToken) and token.plain is not None and NAME_PATTERN.fullmatch(token.plain)):
            if self.at_end():
                raise self.unfinished(opener, "a variable name")
            raise self.error(token.position, f"expected a variable name after 'for', found {_describe(token)}")
        name = token.plain
        self.advance()
        self.skip_newlines()
        words: tuple[Word, ...] | None = None
        if self.is_word("in"):
            self.advance()
            found: list[Word] = []
            while isinstance(self.token, _WordToken):
                found.append(self.token.word)
                self.advance()
            words = tuple(found)
            if self.at_end():
                raise self.unfinished(opener, "'do'")
            if not self.is_op(";", "\n"):
                raise self.error(
                    self.token.position,
                    f"expected ';' or a newline after the words of 'for', found {_describe(self.token)}",
                )
            self.advance()
        elif self.is_op(";"):
            self.advance()
        self.skip_newlines()
        return For(name, words, self.do_done(opener))

    def arithmetic_for(self, opener: _Token) -> ArithFor:
        paren = self.token
        if self.text[paren.position + 1 : paren.position + 2] != "(":
            raise self.error(paren.position, "expected a variable name or '((' after 'for'")
        close = self.lexer.arithmetic_end(paren.position + 2)
        if close == _UNCLOSED:
            raise self.unfinished(opener, "'))'")
        if close is None:
            raise self.error(paren.position, "expected 'for ((INIT; TEST; STEP))'")
        sections = _split_sections(self.text, paren.position + 2, close)
        if len(sections) != 3:
            raise self.error(paren.position, "expected 'for ((INIT; TEST; STEP))' (three expressions separated by ';')")
        init, test, step = (self.lexer.arithmetic_parts(a, b) for a, b in sections)
        self.lexer.pos = close + 2
        self.token = self.lexer.next_token()
        if self.is_op(";"):
            self.advance()
        self.skip_newlines()
        return ArithFor(init, test, step, self.do_done(opener))

    def case_clause(self, opener: _Token) -> Case:
        self.advance()
        token = self.token
        if not isinstance(token, _WordToken):
            if self.at_end():
                raise self.unfinished(opener, "a word")
            raise self.error(token.position, f"expected a word after 'case', found {_describe(token)}")
        self.advance()
        self.skip_newlines()
        self.expect_word("in", opener)
        stops = frozenset({"esac"}) | _CASE_ENDS
        items: list[CaseItem] = []
        while True:
            self.skip_newlines()
            if self.is_word("esac"):
                self.advance()
                break
            if self.at_end():
                raise self.unfinished(opener, "'esac'")
            if self.is_op("("):
                self.advance()
            patterns = [self.pattern(opener)]
            while self.is_op("|"):
                self.advance()
                patterns.append(self.pattern(opener))
            self.expect_op(")", opener)
            body = self.compound_list(stops)
            end = self.token
            if isinstance(end, _OpToken) and end.op in _CASE_ENDS:
                self.advance()
                items.append(CaseItem(tuple(patterns), body, end.op))
                continue
            items.append(CaseItem(tuple(patterns), body))
            self.expect_word("esac", opener)
            break
        return Case(token.word, tuple(items))

    def pattern(self, opener: _Token) -> Word:
        token = self.token
        if isinstance(token, _WordToken):
            self.advance()
            return token.word
        if self.at_end():
            raise self.unfinished(opener, "a pattern")
        raise self.error(token.position, f"expected a pattern, found {_describe(token)}")

    # -- functions --------------------------------------------------------------------
    def function_parens(self, name: str, position: int) -> FunctionDef:
        """``NAME ( ) BODY``, the current token being the ``(``."""
        opener = _WordToken(Word((Literal(name),)), position, name)
        self.advance()
        if not self.is_op(")"):
            raise self.error(self.token.position, f"expected ')' after '{name} (', found {_describe(self.token)}")
        self.advance()
        return self.function_body(name, opener)

    def function_keyword(self) -> FunctionDef:
        opener = self.advance()
        token = self.token
        if not (
            isinstance(token, _WordToken)
            and token.plain is not None
            and FUNCTION_NAME_PATTERN.fullmatch(token.plain)
            and token.plain not in RESERVED
        ):
            if self.at_end():
                raise self.unfinished(opener, "a function name")
            raise self.error(token.position, f"expected a function name after 'function', found {_describe(token)}")
        self.advance()
        if self.is_op("("):
            self.advance()
            self.expect_op(")", opener)
        return self.function_body(token.plain, opener)

    def function_body(self, name: str, opener: _Token) -> FunctionDef:
        self.skip_newlines()
        if self.at_end():
            raise self.error(
                opener.position, f"unfinished function '{name}': expected its body before the end of input", True
            )
        body = self.compound()
        if body is None:
            raise self.error(
                self.token.position,
                f"the body of function '{name}' must be a compound command such as '{{ ...; }}', "
                f"found {_describe(self.token)}",
            )
        return FunctionDef(name, body)


def _opener_name(token: _Token) -> str:
    if isinstance(token, _WordToken):
        return token.plain or "?"
    if isinstance(token, _OpToken):
        return token.op
    return "?"


def _expected_hint(stops: frozenset[str]) -> str:
    """`` (expected 'fi')`` when a construct is open, for "unexpected X" messages."""
    closers = sorted(s for s in stops if s in CLOSERS or s == ")")
    if not closers:
        return ""
    return " (expected " + " or ".join(f"'{c}'" for c in closers) + ")"


def _split_sections(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """``for ((a; b; c))``: the spans between the ``;`` not inside parentheses."""
    sections: list[tuple[int, int]] = []
    depth, begin = 0, start
    for i in range(start, end):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == ";" and depth == 0:
            sections.append((begin, i))
            begin = i + 1
    sections.append((begin, end))
    return sections


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
    # A=~/x: a value starting with a tilde prefix expands it, as a word would (bash does).
    return Assignment(name, Word(tilde_prefix(canonical_parts(head + token.word.parts[1:]))))


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
    """Parse one shell input (a line, or several separated by newlines: a script).

    Raises :class:`ShellSyntaxError` and nothing else for any ``str``.
    """
    if not isinstance(line, str):
        raise TypeError(f"parse() needs str, not {type(line).__name__}")
    _check_input(line)
    try:
        return _Parser(line).script()
    except RecursionError:  # MAX_NESTING keeps parsing well inside the limit; this is for callers already deep
        raise ShellSyntaxError(line, 0, "nested too deeply for the space left to parse it") from None


def is_incomplete(text: str) -> bool:
    """Whether *text* stops inside a construct, so a terminal should ask for another line (bash's ``> ``).

    True for an open quote, ``if``/``while``/``for``/``case``/``{``/``(`` not
    closed yet, a line ending in ``|``, ``&&``, ``||`` or ``\\``.  False for
    text that parses, and for text with an error more lines cannot fix.
    The terminal joins the lines with newlines and runs the whole text.
    """
    try:
        parse(text)
    except ShellSyntaxError as e:
        return e.incomplete
    return False

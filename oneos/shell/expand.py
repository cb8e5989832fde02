"""Pure functions over the shell AST: expand words, build glob patterns, unparse.

Expansion never splits a word in two: ``$X`` with ``X="a b"`` stays one
argument, as if it were quoted.  Values of variables are never globbed
either (as in zsh): a file name held in a variable is used as it is, and only
``*``, ``?`` and ``[`` typed unquoted on the line are wildcards.  Both rules
make a line mean the same whatever the environment holds, which matters more
on a shared grid than bash compatibility in corner cases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from oneos.shell.parser import (
    AndOr,
    Assignment,
    Command,
    Literal,
    Param,
    Part,
    Pipeline,
    Placement,
    Redirect,
    Script,
    Word,
)

GLOB_CHARS = frozenset("*?[")
"""Characters that make an unquoted word a glob pattern (as oneos.fs.paths)."""


# --- expansion -----------------------------------------------------------------


def _param_value(part: Param, env: Mapping[str, str], last_status: int) -> str:
    """``$?`` is the last exit status; an unset variable is empty, as in sh."""
    if part.name == "?":
        return str(last_status)
    return env.get(part.name, "")


def expand_word(word: Word, env: Mapping[str, str], last_status: int) -> str:
    """The word's final text: variables replaced, quotes removed, no globbing."""
    return "".join(
        part.text if isinstance(part, Literal) else _param_value(part, env, last_status) for part in word.parts
    )


def is_glob(word: Word) -> bool:
    """True if the word has an unquoted ``*``, ``?`` or ``[`` typed on the line."""
    return any(
        isinstance(part, Literal) and not part.quoted and not GLOB_CHARS.isdisjoint(part.text) for part in word.parts
    )


def _escape_glob(text: str) -> str:
    """Make wildcards in *text* match only themselves (``*`` becomes ``[*]``)."""
    return "".join(f"[{c}]" if c in GLOB_CHARS else c for c in text)


def glob_pattern(word: Word, env: Mapping[str, str], last_status: int) -> str | None:
    """An fnmatch pattern for the word, or None when it is not a glob.

    Quoted text and variable values are escaped so they match literally:
    ``'a*'*`` gives ``a[*]*``.  When the pattern matches nothing, the caller
    should use :func:`expand_word` instead (bash's default, no ``nullglob``).
    Quoted wildcards inside an unquoted bracket (``[a'*']``) are not
    supported: they are escaped like anywhere else.
    """
    if not is_glob(word):
        return None
    pieces = []
    for part in word.parts:
        if isinstance(part, Literal):
            pieces.append(part.text if not part.quoted else _escape_glob(part.text))
        else:
            pieces.append(_escape_glob(_param_value(part, env, last_status)))
    return "".join(pieces)


# --- unparse -------------------------------------------------------------------

# Characters that cannot stand unquoted in a word, and a '$' that would start
# an expansion.  Only ASTs built by hand can hold them in unquoted text; the
# parser's never do, so for parsed ASTs unparse is exact.
_UNQUOTED_SPECIAL = re.compile(r"[ \t\r\n;&|<>()`'\"\\]|\$(?=[A-Za-z_?{(])")


def _render_part(part: Part) -> str:
    if isinstance(part, Param):
        text = "${" + part.name + "}"
        return f'"{text}"' if part.quoted else text
    if part.quoted:
        return _single_quote(part.text)
    return _UNQUOTED_SPECIAL.sub(lambda m: "\\" + m.group(), part.text)


def _single_quote(text: str) -> str:
    """``it's`` as ``'it'\\''s'``: single quotes keep everything else literal."""
    if not text:
        return "''"
    return "\\'".join(f"'{piece}'" if piece else "" for piece in text.split("'"))


def render_word(word: Word) -> str:
    """Shell text for one word; an empty word renders as ``''``."""
    return "".join(_render_part(p) for p in word.parts) or "''"


def _render_assignment(assignment: Assignment) -> str:
    return assignment.name + "=" + "".join(_render_part(p) for p in assignment.value.parts)


def _render_redirect(redirect: Redirect) -> str:
    default = 0 if redirect.op == "<" else 1
    prefix = "" if redirect.fd == default else str(redirect.fd)
    if isinstance(redirect.target, int):
        return f"{prefix}{redirect.op}{redirect.target}"
    return f"{prefix}{redirect.op} {render_word(redirect.target)}"


def _render_placement(placement: Placement) -> list[str]:
    runtime = [f"@{placement.runtime}"] if placement.runtime is not None else []
    return runtime + [f"@tag:{tag}" for tag in placement.tags] + [f"@dev:{name}" for name in placement.near]


def _render_command(command: Command) -> str:
    return " ".join(
        [_render_assignment(a) for a in command.assignments]
        + [render_word(w) for w in command.words]
        + _render_placement(command.placement)
        + [_render_redirect(r) for r in command.redirects]
    )


def _render_pipeline(pipeline: Pipeline) -> str:
    return " | ".join(_render_command(c) for c in pipeline.stages)


def _render_and_or(item: AndOr) -> str:
    text = _render_pipeline(item.first)
    for op, pipeline in item.rest:
        text += f" {op} {_render_pipeline(pipeline)}"
    return text


def unparse(script: Script) -> str:
    """Shell text that parses back to *script*: ``parse(unparse(parse(x))) == parse(x)``.

    The text is normalised, not the original (quoting becomes single quotes,
    ``$X`` becomes ``${X}``), which is what logs and job listings want.
    """
    pieces = []
    for i, item in enumerate(script.items):
        text = _render_and_or(item)
        if item.background:
            text += " &"
        elif i + 1 < len(script.items):
            text += ";"
        pieces.append(text)
    return " ".join(pieces)

"""Pure functions over the shell AST: expand simple words, build glob patterns, unparse.

Expansion never splits a variable's value: ``$X`` with ``X="a b"`` stays one
argument, as if it were quoted.  Values of variables are never globbed
either (as in zsh): a file name held in a variable is used as it is, and only
``*``, ``?`` and ``[`` typed unquoted on the line are wildcards.  Both rules
make a line mean the same whatever the environment holds, which matters more
on a shared grid than bash compatibility in corner cases.  (The output of an
unquoted ``$(...)`` is split into words, as bash does, but never globbed:
:mod:`oneos.shell.words`, which expands words that need the interpreter.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from oneos.fs import paths
from oneos.shell.parser import (
    RESERVED,
    AndOr,
    ArithCommand,
    ArithFor,
    ArithSub,
    Assignment,
    Case,
    Command,
    CommandSub,
    For,
    FunctionDef,
    Group,
    If,
    Literal,
    Loop,
    Node,
    Param,
    Part,
    Pipeline,
    Placement,
    Redirect,
    Script,
    Subshell,
    Tilde,
    Word,
)

GLOB_CHARS = frozenset("*?[")
"""Characters that make an unquoted word a glob pattern (as oneos.fs.paths)."""

#: What ``$0`` expands to.
SHELL_NAME = "oneos"


# --- expansion -----------------------------------------------------------------


def param_value(name: str, env: Mapping[str, str], last_status: int, positional: Sequence[str] = ()) -> str:
    """One parameter's text: ``$?`` the last status, ``$1`` ``$#`` ``$*`` ``$@`` the positional
    parameters (``$@`` joined by spaces where one word is wanted), an unset variable empty, as in sh."""
    if name == "?":
        return str(last_status)
    if name == "#":
        return str(len(positional))
    if name in ("@", "*"):
        return " ".join(positional)
    if name == "0":
        return SHELL_NAME
    if name.isdigit():
        n = int(name)
        return positional[n - 1] if n <= len(positional) else ""
    return env.get(name, "")


def tilde_value(part: Tilde, env: Mapping[str, str]) -> str:
    """``~`` is $HOME; ``~USER`` is /home/USER (the caller checks that it exists, as bash leaves
    an unknown user's ``~USER`` as it is)."""
    if not part.user:
        return env.get("HOME", "~")
    if part.user in ("+", "-"):
        return env.get("PWD" if part.user == "+" else "OLDPWD") or "~" + part.user
    return f"/home/{part.user}"


def _part_text(part: Part, env: Mapping[str, str], last_status: int) -> str:
    if isinstance(part, Literal):
        return part.text
    if isinstance(part, Param):
        return param_value(part.name, env, last_status)
    if isinstance(part, Tilde):
        return tilde_value(part, env)
    raise ValueError("a command substitution or arithmetic expansion needs the interpreter (oneos.shell.words)")


def expand_word(word: Word, env: Mapping[str, str], last_status: int) -> str:
    """The final text of a word without substitutions: variables replaced, quotes removed, no globbing."""
    return "".join(_part_text(part, env, last_status) for part in word.parts)


def is_glob(word: Word) -> bool:
    """True if the word has an unquoted ``*``, ``?`` or ``[`` typed on the line."""
    return any(
        isinstance(part, Literal) and not part.quoted and not GLOB_CHARS.isdisjoint(part.text) for part in word.parts
    )


#: What :func:`escape_glob` puts a backslash before: wildcards, and what is special inside ``[...]``.
_GLOB_SPECIAL = frozenset("*?[]\\!^-")


def escape_glob(text: str) -> str:
    """Make *text* match only itself in a pattern (``*`` becomes ``\\*``), wherever it lands.

    Quoted text inside a typed bracket stays literal too: ``[\\!]x`` (``[``
    typed, ``!`` quoted) is the class holding ``!``, not a negation, as bash
    reads it (:func:`oneos.fs.paths.glob_regex`).
    """
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def glob_pattern(word: Word, env: Mapping[str, str], last_status: int) -> str | None:
    """An fnmatch pattern for a word without substitutions, or None when it is not a glob.

    Quoted text and variable values are escaped so they match literally:
    ``'a*'*`` gives ``a\\**``.  When the pattern matches nothing, the caller
    should use :func:`expand_word` instead (bash's default, no ``nullglob``).
    Quoted text inside a typed bracket (``[a'*']``) is escaped like anywhere
    else, which inside a bracket means the character itself.
    """
    if not is_glob(word):
        return None
    pieces = []
    for part in word.parts:
        if isinstance(part, Literal):
            pieces.append(part.text if not part.quoted else escape_glob(part.text))
        else:
            pieces.append(escape_glob(_part_text(part, env, last_status)))
    return "".join(pieces)


def match_glob(text: str, pattern: str) -> bool:
    """Whether *text* matches the glob *pattern* (``case``): ``*`` and ``?`` match any character, ``/`` too.

    Bash's pattern rules (brackets with ``!``/``^``, classes, ranges,
    backslash escapes): the same matcher as file names use.
    """
    return paths.glob_regex(pattern).match(text) is not None


# --- unparse -------------------------------------------------------------------

# Characters that cannot stand unquoted in a word, and a '$' that would start
# an expansion.  Only ASTs built by hand can hold them in unquoted text; the
# parser's never do, so for parsed ASTs unparse is exact.
_UNQUOTED_SPECIAL = re.compile(r"[ \t\r\n;&|<>()`'\"\\]|\$(?=[A-Za-z_?{(#@*0-9])")


def _render_part(part: Part) -> str:
    if isinstance(part, Param):
        text = "${" + part.name + "}"
        return f'"{text}"' if part.quoted else text
    if isinstance(part, Tilde):
        return "~" + part.user
    if isinstance(part, CommandSub):
        text = _render_substitution(part.script)
        return f'"{text}"' if part.quoted else text
    if isinstance(part, ArithSub):
        text = "$((" + _render_arithmetic(part.parts) + "))"
        return f'"{text}"' if part.quoted else text
    if part.quoted:
        return _single_quote(part.text)
    return _UNQUOTED_SPECIAL.sub(lambda m: "\\" + m.group(), part.text)


def _render_substitution(script: Script) -> str:
    """``$(...)``; a space keeps ``$( (a) )`` from reading as ``$((``."""
    inner = unparse(script)
    return "$( " + inner + ")" if inner.startswith("(") else "$(" + inner + ")"


def _render_arithmetic(parts: tuple[Part, ...]) -> str:
    """An arithmetic text as written: its literal text as it is, its expansions as ``${X}``, ``$(...)``."""
    pieces = []
    for part in parts:
        if isinstance(part, Literal):
            pieces.append(part.text)
        elif isinstance(part, Param):
            pieces.append("${" + part.name + "}")
        elif isinstance(part, CommandSub):
            pieces.append(_render_substitution(part.script))
        elif isinstance(part, ArithSub):
            pieces.append("$((" + _render_arithmetic(part.parts) + "))")
        else:
            pieces.append(_render_part(part))
    return "".join(pieces)


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
    assignments = [_render_assignment(a) for a in command.assignments]
    words = [render_word(w) for w in command.words] + _render_placement(command.placement)
    redirects = [_render_redirect(r) for r in command.redirects]
    if not assignments and words and words[0] in RESERVED:
        return " ".join(redirects + words)  # ('< f while': a command named while, as parsed)
    return " ".join(assignments + words + redirects)


def _render_list(script: Script) -> str:
    """A list inside a compound command: every item ends with ``;`` or ``&``."""
    return " ".join(_render_and_or(item) + (" &" if item.background else ";") for item in script.items)


def _render_node(node: Node) -> str:
    if isinstance(node, Command):
        return _render_command(node)
    if isinstance(node, FunctionDef):
        return f"{node.name}() {_render_node(node.body)}"
    text = _render_compound(node)
    return " ".join([text] + [_render_redirect(r) for r in node.redirects])


def _render_compound(node: Node) -> str:
    if isinstance(node, Group):
        return "{ " + _render_list(node.body) + " }"
    if isinstance(node, Subshell):
        return "( " + _render_list(node.body) + " )"
    if isinstance(node, If):
        pieces = []
        for i, (condition, body) in enumerate(node.clauses):
            pieces.append(f"{'if' if i == 0 else 'elif'} {_render_list(condition)} then {_render_list(body)}")
        if node.orelse is not None:
            pieces.append(f"else {_render_list(node.orelse)}")
        return " ".join(pieces) + " fi"
    if isinstance(node, Loop):
        keyword = "until" if node.until else "while"
        return f"{keyword} {_render_list(node.condition)} do {_render_list(node.body)} done"
    if isinstance(node, For):
        words = "" if node.words is None else " in" + "".join(" " + render_word(w) for w in node.words)
        return f"for {node.name}{words}; do {_render_list(node.body)} done"
    if isinstance(node, ArithFor):
        header = ";".join(_render_arithmetic(p) for p in (node.init, node.test, node.step))
        return f"for (({header})); do {_render_list(node.body)} done"
    if isinstance(node, Case):
        items = []
        for item in node.items:
            patterns = " | ".join(render_word(p) for p in item.patterns)
            listed = _render_list(item.body)
            items.append(f"({patterns}) {listed + ' ' if listed else ''}{item.terminator}")
        return " ".join([f"case {render_word(node.word)} in", *items, "esac"])
    if isinstance(node, ArithCommand):
        return "((" + _render_arithmetic(node.parts) + "))"
    raise TypeError(f"not a shell command node: {node!r}")


def _render_pipeline(pipeline: Pipeline) -> str:
    text = " | ".join(_render_node(c) for c in pipeline.stages)
    return "! " + text if pipeline.negated else text


def _render_and_or(item: AndOr) -> str:
    text = _render_pipeline(item.first)
    for op, pipeline in item.rest:
        text += f" {op} {_render_pipeline(pipeline)}"
    return text


def unparse(script: Script) -> str:
    """Shell text that parses back to *script*: ``parse(unparse(parse(x))) == parse(x)``.

    The text is normalised, not the original (quoting becomes single quotes,
    ``$X`` becomes ``${X}``, backquotes become ``$(...)``, everything is on
    one line), which is what logs and job listings want.
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

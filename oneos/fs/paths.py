"""Pure path logic of the OneOS file system: no I/O, used by every backend.

Paths are POSIX-like, always absolute once normalised: ``/`` separated,
``.`` and empty components dropped, ``..`` resolved textually (there are no
symlinks).  ``..`` above ``/`` is an error rather than being clamped to
``/`` as a kernel would: on a shared grid file system a path that climbs out
of the tree is almost certainly a bug or an attack, and failing names it.

Names are UTF-8 strings of 1..255 bytes without ``/`` or NUL; a whole path is
at most 4096 bytes (Linux's NAME_MAX and PATH_MAX), both as given and once
normalised.  A trailing ``/`` is accepted and dropped (``/a/`` is ``/a``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from oneos.fs.errors import InvalidPath, NameTooLong

ROOT = "/"
SEP = "/"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

_MAGIC = re.compile(r"[*?\[\\]")


def _utf8_len(text: str, path: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPath(path, "not valid UTF-8") from None


def validate_name(name: str, path: str | None = None) -> str:
    """Return *name* if it is a valid single directory entry name, else raise.

    *path* is the whole path the name came from, so the error names what the
    caller actually passed.
    """
    shown = name if path is None else path
    if not isinstance(name, str):
        raise InvalidPath(repr(name), "a name must be a string")
    if name in ("", ".", ".."):
        raise InvalidPath(shown, f"{name!r} is not a usable name")
    if "\x00" in name:
        raise InvalidPath(shown, "contains a NUL byte")
    if SEP in name:
        raise InvalidPath(shown, "a name cannot contain '/'")
    if _utf8_len(name, shown) > MAX_NAME_BYTES:
        raise NameTooLong(shown, f"a name is at most {MAX_NAME_BYTES} bytes")
    return name


def normalise(path: str, cwd: str = ROOT) -> str:
    """The canonical absolute form of *path*, relative paths taken from *cwd*.

    Raises :class:`InvalidPath` (empty, NUL, ``..`` above ``/``, bad UTF-8)
    or :class:`NameTooLong`.
    """
    return _join_parts(parts(path, cwd))


def parts(path: str, cwd: str = ROOT) -> tuple[str, ...]:
    """The components of the normalised *path* (``()`` for ``/``).

    Remembers the last :data:`PARTS_CACHE` answers: one request's path is
    checked by the service, then the store, then its look-up, which was a
    good part of the file-system service's work for a ``stat``.  (Only
    answers are kept: a path that is refused is checked again.)
    """
    if isinstance(path, str) and isinstance(cwd, str):
        return _remembered_parts(path, cwd)
    return _parts(path, cwd)


#: Normalised paths :func:`parts` remembers.
PARTS_CACHE = 2048


@functools.lru_cache(maxsize=PARTS_CACHE)
def _remembered_parts(path: str, cwd: str) -> tuple[str, ...]:
    return _parts(path, cwd)


def _parts(path: str, cwd: str) -> tuple[str, ...]:
    if not isinstance(path, str):
        raise InvalidPath(repr(path), "a path must be a string")
    if path == "":
        raise InvalidPath(path, "empty path")
    if "\x00" in path:
        raise InvalidPath(path, "contains a NUL byte")
    if _utf8_len(path, path) > MAX_PATH_BYTES:
        raise NameTooLong(path, f"a path is at most {MAX_PATH_BYTES} bytes")
    stack: list[str] = [] if path.startswith(SEP) else list(parts(cwd))
    for component in path.split(SEP):
        if component in ("", "."):
            continue
        if component == "..":
            if not stack:
                raise InvalidPath(path, "'..' climbs above /")
            stack.pop()
            continue
        stack.append(validate_name(component, path))
    result = tuple(stack)
    if _utf8_len(_join_parts(result), path) > MAX_PATH_BYTES:
        raise NameTooLong(path, f"a path is at most {MAX_PATH_BYTES} bytes")
    return result


def _join_parts(components: Iterable[str]) -> str:
    return SEP + SEP.join(components)


def join(base: str, *names: str) -> str:
    """*base* with *names* appended, normalised (names may themselves hold ``/``)."""
    path = base
    for name in names:
        path = name if name.startswith(SEP) else f"{path.rstrip(SEP)}{SEP}{name}"
    return normalise(path)


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a normalised path; ``("/", "")`` for the root."""
    components = parts(path)
    if not components:
        return ROOT, ""
    return _join_parts(components[:-1]), components[-1]


def dirname(path: str) -> str:
    return split(path)[0]


def basename(path: str) -> str:
    return split(path)[1]


def is_within(path: str, ancestor: str) -> bool:
    """True if normalised *path* is *ancestor* or lies below it."""
    if ancestor == ROOT:
        return True
    return path == ancestor or path.startswith(ancestor + SEP)


# --- glob patterns -----------------------------------------------------------


def has_magic(component: str) -> bool:
    """True if a pattern component must be matched, not looked up: a wildcard (``*``, ``?``, ``[``) or an escape (``\\``)."""
    return _MAGIC.search(component) is not None


def match_name(name: str, pattern: str) -> bool:
    """Shell-style match of one name against one pattern component (:func:`glob_regex`).

    As in a shell, a leading ``.`` must be matched by a ``.`` typed first in
    the pattern: ``*``, ``?`` and ``[.]`` do not list hidden entries.
    Matching is case-sensitive.
    """
    if name.startswith(".") and not (pattern.startswith(".") or pattern.startswith("\\.")):
        return False
    return glob_regex(pattern).match(name) is not None


#: POSIX character classes, as in the C locale (ASCII only), as regex set contents.
_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\x0b\\x0c",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def _bracket(pattern: str, start: int) -> tuple[str, int] | None:
    """The regex of the bracket expression opening at *start*, and where it ends; None if it never closes.

    As bash: ``!`` or ``^`` first negates, a ``]`` first is literal, ``\\``
    escapes the next character, ``a-z`` is a range of code points (a reversed
    one matches nothing), ``[:class:]`` a POSIX class, ``[=c=]`` and ``[.c.]``
    the character c; an unknown class matches nothing.
    """
    n = len(pattern)
    i = start + 1
    negate = i < n and pattern[i] in "!^"
    i += negate
    items: list[str] = []
    first = True
    while True:
        if i >= n:
            return None
        c = pattern[i]
        if c == "]" and not first:
            break
        first = False
        if c == "[" and i + 1 < n and pattern[i + 1] in ":=.":
            kind = pattern[i + 1]
            end = pattern.find(kind + "]", i + 2)
            if end >= 0:
                name = pattern[i + 2 : end]
                if kind == ":":
                    items.append(_CLASSES.get(name, ""))
                else:
                    items.append(re.escape(name[:1]) if len(name) == 1 else "")
                i = end + 2
                continue
        low, i = (pattern[i + 1], i + 2) if c == "\\" and i + 1 < n else (c, i + 1)
        if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            high, i = (pattern[i + 2], i + 3) if pattern[i + 1] == "\\" and i + 2 < n else (pattern[i + 1], i + 2)
            if low <= high:
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            continue
        items.append(re.escape(low))
    body = "".join(items)
    if not body:
        return ("[\\s\\S]" if negate else "(?!)"), i + 1
    return f"[{'^' if negate else ''}{body}]", i + 1


@functools.lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regex matching what the shell pattern *pattern* matches, whole.

    ``*`` is any string, ``?`` any character, ``[...]`` a bracket expression
    (:func:`_bracket`; a ``[`` that never closes is literal), ``\\c`` the
    character c.  Bash's rules without ``extglob``, so ``[[:punct:]]``,
    ``[!a]``, ``[^a]`` and ``[\\]]`` mean what they mean there.  No ``/``
    handling: callers match one path component, or (``case``) any text.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append("[\\s\\S]*")
            continue
        if c == "?":
            out.append("[\\s\\S]")
        elif c == "[":
            found = _bracket(pattern, i)
            if found is not None:
                out.append(found[0])
                i = found[1]
                continue
            out.append(re.escape(c))
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + "\\Z")


def glob_parts(pattern: str, cwd: str = ROOT) -> tuple[str, ...]:
    """The components of a glob pattern, normalised like a path.

    Wildcard characters are legal in names, so the usual validation applies;
    ``**`` (alone as a component) later means "any number of directories".
    """
    return parts(pattern, cwd)

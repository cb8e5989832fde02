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

import fnmatch
import re
from collections.abc import Iterable

from oneos.fs.errors import InvalidPath, NameTooLong

ROOT = "/"
SEP = "/"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

_MAGIC = re.compile(r"[*?\[]")


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
    """The components of the normalised *path* (``()`` for ``/``)."""
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
    """True if a pattern component holds a wildcard (``*``, ``?``, ``[``)."""
    return _MAGIC.search(component) is not None


def match_name(name: str, pattern: str) -> bool:
    """Shell-style match of one name against one pattern component.

    As in a shell, a leading ``.`` must be matched explicitly: ``*`` does not
    list hidden entries.  Matching is case-sensitive.
    """
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def glob_parts(pattern: str, cwd: str = ROOT) -> tuple[str, ...]:
    """The components of a glob pattern, normalised like a path.

    Wildcard characters are legal in names, so the usual validation applies;
    ``**`` (alone as a component) later means "any number of directories".
    """
    return parts(pattern, cwd)

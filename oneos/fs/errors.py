"""Typed errors of the OneOS file system.

Every error carries a POSIX-style ``code`` (``"ENOENT"``, ``"EISDIR"``, ...)
and a plain message that names the path, so that the file-system kernel
service can send an error over RPC as ``(code, message, path)`` and the far
side can rebuild the same class with :func:`from_wire` - a shell then prints
``cat: /x: no such file or directory`` without knowing which backend or
which machine failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oneos.errors import OneOSError, register_error

#: Paths longer than this are cut short in messages so one bad argument
#: cannot produce a 4 KiB error line.
_SHOWN_PATH_CHARS = 120


def show_path(path: str | None) -> str:
    """How a path appears in a message: as is when printable, else repr'd, and short."""
    if path is None:
        return "?"
    text = path if path.isprintable() else repr(path)
    if len(text) > _SHOWN_PATH_CHARS:
        text = text[: _SHOWN_PATH_CHARS - 3] + "..."
    return text


class FSError(OneOSError):
    """Base of file-system errors; ``code`` is the POSIX errno name."""

    code: str = "EIO"
    #: The strerror-like phrase shown after the path.
    description: str = "input/output error"

    def __init__(self, path: str | None, detail: str | None = None) -> None:
        self.path = path
        self.detail = detail
        message = f"{show_path(path)}: {self.description}" if path is not None else self.description
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)

    @property
    def kind(self) -> str:
        """The wire name, as RPC errors call it (the errno name)."""
        return self.code

    def to_wire(self) -> dict[str, Any]:
        """The error as JSON-able fields, for an RPC reply."""
        return {"code": self.code, "message": str(self), "path": self.path}


class NotFound(FSError):
    code = "ENOENT"
    description = "no such file or directory"


class NotADirectory(FSError):
    code = "ENOTDIR"
    description = "not a directory"


class IsADirectory(FSError):
    code = "EISDIR"
    description = "is a directory"


class AlreadyExists(FSError):
    code = "EEXIST"
    description = "file exists"


class DirectoryNotEmpty(FSError):
    code = "ENOTEMPTY"
    description = "directory not empty"


class PermissionDenied(FSError):
    code = "EACCES"
    description = "permission denied"


class OperationNotPermitted(FSError):
    """Refused whatever the caller's rights, e.g. removing or moving ``/``."""

    code = "EPERM"
    description = "operation not permitted"


class InvalidPath(FSError):
    """A path or name that can never be valid (NUL, ``..`` above ``/``, empty, ...)."""

    code = "EINVAL"
    description = "invalid path"


class NameTooLong(InvalidPath):
    """A name over 255 bytes or a path over 4096 bytes (UTF-8)."""

    code = "ENAMETOOLONG"
    description = "file name too long"


class InvalidArgument(FSError):
    """An argument other than a path is wrong (negative offset, moving a directory into itself...)."""

    code = "EINVAL"
    description = "invalid argument"


class FileChanged(FSError):
    """The file was replaced while a streamed read was in progress.

    Content is immutable once committed and the old chunks are removed when
    a newer version is committed, so a long read can lose its data under it.
    It never returns a mix of versions: it fails with this, and reading again
    gives the new version whole.
    """

    code = "ESTALE"
    description = "file changed while it was being read; read it again"


class StoreUnavailable(FSError):
    """The storage backend cannot be reached or opened.

    POSIX has no code for "the database server is down"; EIO is what a
    network file system reports in that case.
    """

    code = "EIO"
    description = "file store unavailable"

    def __init__(self, where: str, detail: str | None = None) -> None:
        self.where = where
        super().__init__(None, f"{where}: {detail}" if detail else where)
        self.path = None


class FileSystemUnavailable(StoreUnavailable):
    """Nobody serves the network's file tree right now; the message says who should and why not."""

    def __init__(self, reason: str) -> None:
        self.where = reason
        self.path = None
        self.detail = None
        Exception.__init__(self, reason)


class InvalidStoreURL(FSError):
    """A store URL this code cannot open (unknown scheme, relative sqlite path...)."""

    code = "EINVAL"
    description = "invalid file store URL"

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(None, f"{url!r}: {detail}")
        self.url = url


#: code -> the class rebuilt from it; where several classes share a code
#: (EINVAL) the most general one is used on the far side.
_BY_CODE: dict[str, type[FSError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        NotADirectory,
        IsADirectory,
        AlreadyExists,
        DirectoryNotEmpty,
        PermissionDenied,
        OperationNotPermitted,
        NameTooLong,
        InvalidPath,
        FileChanged,
        StoreUnavailable,
    )
}


def from_wire(code: str, message: str, path: str | None = None) -> FSError:
    """Rebuild an error sent as ``(code, message, path)``; the message is kept verbatim.

    An unknown code still gives an :class:`FSError` carrying that code, so a
    newer peer cannot crash an older one.
    """
    cls = _BY_CODE.get(code, FSError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.path = path
    error.detail = None
    if cls is FSError:
        error.code = code
    if cls is StoreUnavailable:
        error.where = message  # type: ignore[attr-defined]
    return error


#: the file system's wire kinds (the POSIX codes), registered here once: an RPC error of one of
#: these kinds arrives as the class :func:`from_wire` rebuilds.  An agent's error with the same
#: POSIX code (an EPERM from ``kill``) arrives as that class too, its message unchanged.
WIRE_CODES = (
    "ENOENT",
    "ENOTDIR",
    "EISDIR",
    "EEXIST",
    "ENOTEMPTY",
    "EACCES",
    "EPERM",
    "EINVAL",
    "ENAMETOOLONG",
    "ESTALE",
    "EIO",
    "ENOSPC",
)


def _factory(code: str) -> Callable[[str], FSError]:
    return lambda message: from_wire(code, message)


for _code in WIRE_CODES:
    register_error(_code, _factory(_code))

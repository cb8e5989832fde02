"""The shell's own errors, and the exit status each error gives a command (as bash).

A :class:`~oneos.errors.OneOSError` raised while a command runs becomes one
plain line on the session's error output (``oneos: ...``, or ``NAME: ...``
from a built-in) and the status :func:`status_for` gives it.
"""

from __future__ import annotations

from oneos.errors import OneOSError

STATUS_NOT_FOUND = 127
STATUS_CANNOT_RUN = 126
STATUS_SYNTAX = 2
#: 128 + SIGINT: a command stopped with Ctrl-C (or by its client leaving)
STATUS_INTERRUPTED = 130
#: 128 + SIGPIPE: a stage whose reader went away (never the pipeline's status unless it is the last stage)
STATUS_BROKEN_PIPE = 141


class ShellError(OneOSError):
    """A command cannot be run as written (bad redirection, unsupported form)."""


class BrokenPipe(ShellError):
    """The reader of a pipe has gone: the writer should stop, quietly (the shell's SIGPIPE, status 141)."""

    code = kind = "EPIPE"


class UsageError(OneOSError):
    """Wrong options or arguments for a built-in."""


def status_for(error: BaseException) -> int:
    """127 for "command not found", 126 for "cannot run", else 1 (as bash)."""
    kind = getattr(error, "kind", None) or getattr(error, "code", None)
    text = str(error)
    if "command not found" in text or (kind == "ENOENT" and "no such file on runtime" in text):
        return STATUS_NOT_FOUND
    if kind in ("EACCES", "ENOEXEC") and "not executable" in text:
        return STATUS_CANNOT_RUN
    return 1

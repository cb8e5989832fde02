"""``oneos -c LINE`` over a shared connection that is already up, without loading the rest of the CLI.

Why: once a master connection is up (oneos/cli/shell.py), what is left of
a one-liner's cost is this process's start-up, and most of that was
imports: the argument parser, pathlib, json, hashlib and socket (which
pull in ``re`` and ``enum``) cost more than the session itself.  A script
that calls ``oneos -c`` in a loop pays that on every line.

So the full command (:func:`oneos.cli.shell.run`), once it has made sure
of a master for the default connection (no ``--host``, ``--port``,
``--user``, ``--identity``), writes the ``ssh`` command line of a session
over it to ``$ONEOS_HOME/shell-session`` (:func:`save`).  A later ``oneos -c
LINE`` given nothing else reads that file and, when it is still good (ours
and not writable by others, made for the same user, its master still
listening), becomes that ``ssh`` at once (:func:`exec_warm`): no parsing,
no configuration, no hashing; only ``os`` and the C socket module are
loaded.  In every other case it returns and the full command runs,
so a dead master, a restarted runtime or a changed setting are handled
exactly as before, and the file is written again.

Trusting a file in ``$ONEOS_HOME`` is no new trust: whoever can write there
already controls that home's runtime and its client key (see
:func:`oneos.cli.shell.local_identity`).
"""

from __future__ import annotations

import os
import sys

#: the file in ``$ONEOS_HOME`` holding the cached session command line
SESSION_FILE = "shell-session"
#: its first field: a file another version of OneOS wrote is ignored (and replaced)
MAGIC = "oneos-session 1"
#: ``ONEOS_SSH_REUSE`` values that turn connection reuse off
_OFF = ("0", "no", "off", "false")


def home() -> str:
    """``$ONEOS_HOME`` or ``~/.oneos``, as oneos.config.oneos_home, with os.path only."""
    return os.path.expanduser(os.environ.get("ONEOS_HOME") or os.path.join(os.path.expanduser("~"), ".oneos"))


def reuse_off(value: str) -> bool:
    """Whether an ``ONEOS_SSH_REUSE`` value turns connection reuse off (0, no, off, false)."""
    return value.strip().lower() in _OFF


def login_name() -> str:
    """Who runs us, as :func:`getpass.getuser` decides it (the environment first, then the password file)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        value = os.environ.get(name)
        if value:
            return value
    import pwd

    return pwd.getpwuid(os.getuid())[0]


def save(where: str, user: str, control: str, session: list[str]) -> None:
    """Write the session command line *session* (without the line) for *user* over *control* to *where*.

    Written to a temporary name, then renamed, so a reader never sees half
    a file; mode 0600.  Failing to write (a read-only home) only loses the
    fast path, so it is not an error.
    """
    fields = [MAGIC, user, control, *session]
    if any("\0" in f for f in fields):
        return
    data = "\0".join(fields).encode("utf-8", "surrogateescape")
    path = os.path.join(where, SESSION_FILE)
    tmp = f"{path}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def forget(where: str) -> None:
    """Remove the cached session (its master was closed on purpose)."""
    try:
        os.unlink(os.path.join(where, SESSION_FILE))
    except OSError:
        pass


def load(where: str, user: str) -> tuple[str, list[str]] | None:
    """(control socket, session command line) cached in *where* for *user*, or None.

    None when there is no file, it is not a regular file of ours that only
    we may write, it was made by another version or for another user.
    """
    try:
        fd = os.open(os.path.join(where, SESSION_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000 or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < 4 or fields[0] != MAGIC or fields[1] != user or not fields[2]:
        return None
    return fields[2], fields[3:]


def listening(control: str) -> bool:
    """Whether a master listens on *control*: a connect, with the C socket module (``socket`` costs ``enum``)."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(control)
    except OSError:
        return False
    finally:
        s.close()
    return True


def warm_command(line: str) -> list[str] | None:
    """The ``ssh`` command line that runs *line* over the live master, or None (then the full command runs)."""
    if reuse_off(os.environ.get("ONEOS_SSH_REUSE", "")):
        return None
    cached = load(home(), login_name())
    if cached is None:
        return None
    control, session = cached
    if not listening(control):
        return None
    return [*session, line]


def exec_warm(line: str) -> None:
    """Become the cached session's ``ssh`` running *line* when a master is up; return if not."""
    command = warm_command(line)
    if command is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(command[0], command)
    except OSError:
        return  # the ssh client moved: the full command finds it again

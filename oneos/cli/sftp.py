"""``oneos sftp [SFTP-ARGS]``: OpenSSH's ``sftp`` on the OneOS tree, through this machine's runtime.

The shell's SSH door serves the ``sftp`` subsystem (oneos/shell/sftp.py),
so any SFTP client works; this command only saves working out how to reach
it.  It connects exactly as ``oneos`` does (oneos/cli/shell.py): the runtime
that wrote ``$ONEOS_HOME/runtime.json`` (else the settings, or
``--host``/``--port``), your login name (or ``--user``), the network's host
key pinned in ``$ONEOS_HOME/known_hosts``, and the key ``oneos`` mints for
this machine's owner (or ``--identity``); and over the same shared
connection as ``oneos -c`` (started if need be; ``ONEOS_SSH_REUSE=0``: a
connection of its own), so a script mixing both logs in once.  Everything else on the command
line goes to ``sftp`` unchanged, so ``oneos sftp -b BATCH`` runs a batch
file in a script (exit status 1 at the first failed command, as sftp's).

Exit status: sftp's (255 when it cannot connect or log in).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from oneos.cli.quick import login_name
from oneos.cli.shell import (
    ShellClientError,
    _configured,
    _home,
    control_path,
    local_identity,
    reuse_wanted,
    share,
    ssh_argv,
)

SUMMARY = "copy files with OpenSSH's sftp (SFTP over the shell's SSH door); sftp's own options pass through"

USAGE = """usage: oneos sftp [--host HOST] [--port PORT] [--user USER] [--identity KEY] [--] [SFTP-ARGS...]

Runs OpenSSH's sftp against this machine's OneOS runtime, as 'oneos' connects.

options (before any sftp argument):
  --host HOST        shell host (default: from $ONEOS_HOME/runtime.json or listen.ssh)
  --port PORT        shell SSH port (default: likewise)
  --user, -u USER    OneOS user (default: your login name)
  --identity, -i KEY SSH private key to log in with (default: the key 'oneos' made for you here)
  --                 end of these options: the rest goes to sftp

SFTP-ARGS go to sftp as given, e.g. 'oneos sftp -b batch.txt' or 'oneos sftp -r'.
"""

#: our own options, each taking a value: name -> key in the parsed dict
_OPTIONS = {
    "--host": "host",
    "--port": "port",
    "--user": "user",
    "-u": "user",
    "--identity": "identity",
    "-i": "identity",
}


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split *argv* into our leading options and what goes to sftp (pure, for tests).

    Only leading options are ours (``--opt VALUE`` or ``--opt=VALUE``); the
    first other word, or ``--``, starts sftp's, so a value of sftp's can
    never be taken for one of ours.
    """
    ours: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return ours, argv[i + 1 :]
        name, eq, value = word.partition("=")
        if name not in _OPTIONS or (eq and not name.startswith("--")):
            break
        if not eq:
            if i + 1 >= len(argv):
                raise ShellClientError(f"{name} needs a value")
            value = argv[i + 1]
            i += 1
        ours[_OPTIONS[name]] = value
        i += 1
    return ours, argv[i:]


def sftp_argv(
    host: str,
    port: int,
    user: str,
    home: Path,
    key: str | None,
    extra: list[str],
    control: Path | str | None = None,
) -> list[str]:
    """The OpenSSH ``sftp`` command line: the same host, port, user, host-key pin and key as ``oneos``'s ``ssh``.

    The options come from :func:`oneos.cli.shell.ssh_argv` (which also pins
    the host key), so both commands always connect alike: its ``-o`` and
    ``-i`` options are kept, its ``-p`` becomes sftp's ``-P``, and its
    terminal flag and destination are sftp's business.  *control*: as for
    ``ssh_argv``, the shared connection's socket to run the session over.
    """
    sftp = shutil.which("sftp")
    if sftp is None:
        raise ShellClientError("the OpenSSH client 'sftp' is not installed (apt-get install openssh-client)")
    ssh = ssh_argv(host, port, user, home, None, key, False, control=control)
    options: list[str] = []
    i = 1
    while i < len(ssh) - 1:  # the last word is the destination
        if ssh[i] in ("-o", "-i") and i + 1 < len(ssh):
            options += ssh[i : i + 2]
            i += 2
        elif ssh[i] == "-p":
            i += 2
        else:
            i += 1
    destination = f"{user}@[{host}]" if ":" in host else f"{user}@{host}"
    return [sftp, "-P", str(port), *options, *extra, destination]


def run(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    ours, extra = parse(argv)
    if "port" in ours and not ours["port"].isdigit():
        raise ShellClientError(f"--port needs a number, not {ours['port']!r}")
    if "host" in ours and "port" in ours:
        host, port = ours["host"], int(ours["port"])
        home = _home()
    else:
        host, port, home = _configured()
        host, port = ours.get("host", host), int(ours.get("port", port))
    user = ours.get("user") or login_name()
    identity = ours.get("identity") or local_identity(home, user)
    control: Path | str = "none"
    shared = control_path(home, user, host, port, identity) if reuse_wanted(False) else None
    if shared is not None:
        over = share(host, port, user, home, identity, shared)  # the connection 'oneos -c' shares
        if over is None:
            return 255
        control = over
    command = sftp_argv(host, port, user, home, identity, extra, control)
    if sys.stdin.isatty() and "-b" not in extra:
        os.execv(command[0], command)  # interactive: the terminal belongs to sftp from here on
    return subprocess.call(command)

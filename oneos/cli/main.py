"""Entry point of the ``oneos`` console script.

Each subcommand lives in its own module exposing ``run(argv) -> int`` and a
one-line ``SUMMARY``; this module only dispatches, so adding a command never
touches the others.

Start-up is kept short: a command's module is imported only when that
command runs (``oneos -c LINE`` never loads Twisted, and over a shared
connection that is up it loads nothing but oneos/cli/quick.py), and ``oneos --help``
reads the summaries from :data:`SUMMARIES` instead of importing every
module (a command missing there is imported to find its ``SUMMARY``).
"""

from __future__ import annotations

import sys

#: subcommand name -> module under ``oneos.cli`` (or a full ``oneos.`` module
#: path), ``module:function`` when one module serves several commands; the
#: default function is ``run``
COMMANDS: dict[str, str] = {
    "configure": "configure",
    "status": "status",
    "grid": "grid",
    "psd": "psd",
    "fs": "fs",
    "reset-fs": "reset_fs",
    "run": "run",
    "ps": "control:ps",
    "pipes": "control:pipes",
    "shell": "shell",
    "sftp": "sftp",
    "desktop": "desktop",
    "devices": "devices",
    "user": "user",
    "passwd": "user:passwd",
    "kill": "control:kill",
    "pause": "control:pause",
    "resume": "control:resume",
    "invite": "invite",
    "join": "invite:join",
    "mosquitto": "mosquitto",
    "tls": "tls",
}

#: subcommand name -> its one-line summary for ``oneos --help``, the same text as its module's
#: ``SUMMARY`` (or ``SUMMARIES[function]``); kept here so the help imports nothing
#: (tests/unit/test_cli_shell.py checks that the two agree)
SUMMARIES: dict[str, str] = {
    "configure": "answer a few questions to write $ONEOS_HOME/config.json",
    "status": "show the runtimes in the network: id, address, leader, live/dead, CPU, memory, agents, devices",
    "grid": "start a broker and N runtimes on this machine (a local test grid); Ctrl-C stops all",
    "psd": "run the pubsub broker in the foreground (same as 'twistd -n oneospsd')",
    "fs": "copy files in and out of the OneOS file tree: put, get, ls, cat, mkdir, rm",
    "reset-fs": "create the initial file tree in a store (sqlite:///PATH or mongodb://HOST:PORT/DB); --force wipes",
    "run": "run a program on a runtime chosen by the scheduler (or a pipeline across runtimes)",
    "ps": "list agents (programs) running anywhere in the network",
    "pipes": "list pipes between agents with the bytes they carried and their rate",
    "shell": "open the OneOS shell (SSH), or run one line with -c LINE",
    "sftp": "copy files with OpenSSH's sftp (SFTP over the shell's SSH door); sftp's own options pass through",
    "desktop": "print a one-time login URL for this machine's web desktop (--open: open it in a browser)",
    "devices": "list the grid's I/O devices; 'devices cat RUNTIME/NAME' reads one, "
    "'devices write RUNTIME/NAME' writes one",
    "user": "manage shell users: add NAME, addkey NAME KEYFILE, del NAME, list",
    "passwd": "change a shell user's password",
    "kill": "stop an agent (SIGTERM, then SIGKILL after a grace period)",
    "pause": "pause an agent (SIGSTOP)",
    "resume": "resume a paused agent (SIGCONT)",
    "invite": "print a token that lets another machine join this network ('oneos join TOKEN' there)",
    "join": "make this machine a member of a network: install the token 'oneos invite' printed",
    "mosquitto": "write Mosquitto password and ACL files for this network's identities (see docs/security.md)",
    "tls": "TLS for the network: init (CA and this machine's certificate), issue (for another machine), install",
}


#: first arguments that mean the shell, as ``-c``: ``oneos --no-reuse -c LINE``
_SHELL_FIRST = ("-c", "--no-reuse", "--close")


def _entry(name: str) -> tuple[object, str]:
    """Import *name*'s module (only now: see the module docstring) and name its function."""
    import importlib

    target, _, function = COMMANDS[name].partition(":")
    module = target if target.startswith("oneos.") else f"oneos.cli.{target}"
    return importlib.import_module(module), function or "run"


def summary(name: str) -> str:
    """*name*'s line in ``oneos --help``: from :data:`SUMMARIES`, else from its module."""
    if name in SUMMARIES:
        return SUMMARIES[name]
    module, function = _entry(name)
    return str(getattr(module, "SUMMARIES", {}).get(function) or getattr(module, "SUMMARY", ""))


def _usage() -> str:
    lines = [
        "usage: oneos                 open the OneOS shell",
        "       oneos -c LINE         run one shell line",
        "       oneos COMMAND [ARGS...]",
        "",
        "The shell reuses one SSH connection for 60s after the last command (fast one-liners);",
        "--no-reuse (oneos --no-reuse -c LINE) or ONEOS_SSH_REUSE=0 logs in afresh each time,",
        "'oneos shell --close' closes it now.",
        "",
        "commands:",
    ]
    for name in COMMANDS:
        lines.append(f"  {name:<12}{summary(name)}")
    lines += ["", "Run 'oneos COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``oneos COMMAND ...``; return the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None and len(args) == 2 and args[0] == "-c":
        # A one-liner over a shared connection already up: becomes ssh here, before anything else loads
        # (oneos/cli/quick.py); returns when there is none, and the shell command below starts one.
        from oneos.cli.quick import exec_warm

        exec_warm(args[1])
    if not args or args[0] in _SHELL_FIRST:
        # 'oneos' alone opens the shell, 'oneos -c LINE' runs one line, as in the original
        return _dispatch("shell", args)
    if args[0] in ("-h", "--help", "help"):
        try:
            print(_usage())
        except BrokenPipeError:  # 'oneos --help | head'
            from oneos.cli.common import quiet_stdout

            quiet_stdout()
        return 0
    if args[0] == "--version":
        from oneos import __version__

        print(f"oneos {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"oneos: unknown command {name!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    return _dispatch(name, rest)


def _dispatch(name: str, rest: list[str]) -> int:
    """Run one subcommand, turning typed errors into one plain line."""
    module, function = _entry(name)
    try:
        return int(getattr(module, function)(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: one line, and the status of a command killed by SIGINT (as bash reports it)
        print(f"oneos {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from oneos.errors import OneOSError, describe  # only now: a one-liner never needs it

        if not isinstance(e, OneOSError):
            raise
        print(f"oneos {name}: {describe(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Entry point of the ``oneos`` console script.

Each subcommand lives in its own module exposing ``run(argv) -> int`` and a
one-line ``SUMMARY``; this module only dispatches, so adding a command never
touches the others.
"""

from __future__ import annotations

import importlib
import sys

from oneos.errors import OneOSError, describe

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


def _entry(name: str) -> tuple[object, str]:
    target, _, function = COMMANDS[name].partition(":")
    module = target if target.startswith("oneos.") else f"oneos.cli.{target}"
    return importlib.import_module(module), function or "run"


def _usage() -> str:
    lines = [
        "usage: oneos                 open the OneOS shell",
        "       oneos -c LINE         run one shell line",
        "       oneos COMMAND [ARGS...]",
        "",
        "commands:",
    ]
    for name in COMMANDS:
        module, function = _entry(name)
        summaries = getattr(module, "SUMMARIES", {})
        summary = summaries.get(function) or getattr(module, "SUMMARY", "")
        lines.append(f"  {name:<12}{summary}")
    lines += ["", "Run 'oneos COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``oneos COMMAND ...``; return the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] == "-c":
        # 'oneos' alone opens the shell, 'oneos -c LINE' runs one line, as in the original
        return _dispatch("shell", args)
    if args[0] in ("-h", "--help", "help"):
        print(_usage())
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
    except OneOSError as e:
        print(f"oneos {name}: {describe(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

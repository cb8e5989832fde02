"""Entry point of the ``oneos`` console script.

Each subcommand lives in its own module exposing ``run(argv) -> int`` and a
one-line ``SUMMARY``; this module only dispatches, so adding a command never
touches the others.
"""

from __future__ import annotations

import importlib
import sys

from oneos.errors import OneOSError, describe

#: subcommand name -> module under ``oneos.cli``
COMMANDS: dict[str, str] = {
    "configure": "configure",
    "status": "status",
    "grid": "grid",
    "psd": "psd",
}


def _usage() -> str:
    lines = ["usage: oneos COMMAND [ARGS...]", "", "commands:"]
    for name, module in COMMANDS.items():
        summary = getattr(importlib.import_module(f"oneos.cli.{module}"), "SUMMARY", "")
        lines.append(f"  {name:<12}{summary}")
    lines += ["", "Run 'oneos COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``oneos COMMAND ...``; return the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
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
    module = importlib.import_module(f"oneos.cli.{COMMANDS[name]}")
    try:
        return int(module.run(rest) or 0)
    except OneOSError as e:
        print(f"oneos {name}: {describe(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``oneosd`` console script: start a OneOS runtime, asking the
configuration questions first on a first run, like the original's ``oneosd``.

With no ``$ONEOS_HOME/config.json`` and a terminal on stdin and stdout it
runs the ``oneos configure`` interview, then it becomes ``twistd -n oneosd``
with the same arguments (``os.execv``: the process *is* twistd afterwards, so
Ctrl-C and SIGTERM reach it directly and its exit status is the script's).
Without a terminal, or with a config file, it starts the runtime at once.
``twistd -n oneosd`` itself never asks anything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneos.config import CONFIG_FILE, oneos_home
from oneos.twistd import twistd_command

USAGE = "usage: oneosd [--configure | --no-interview] [RUNTIME_ID] [runtime options]"

DESCRIPTION = """\
Start a OneOS runtime in the foreground: the same as 'twistd -n oneosd' with
these arguments (without a twistd.pid file), after asking the 'oneos configure'
questions on a first run: when $ONEOS_HOME/config.json (default ~/.oneos) does
not exist and stdin and stdout are a terminal. Settings given as flags are not
asked: they are the answers, saved in config.json with the others. Otherwise it
starts at once; with no config file that is the one-machine embedded default.

oneosd options:
  --configure      ask the configuration questions first, even if config.json exists
  --no-interview   never ask; start at once
  -h, --help       show this help and exit

Every other argument is passed on to 'twistd -n oneosd' (twistd's own options,
such as logging or daemonising, are not: run twistd directly for those)."""


@dataclass(frozen=True)
class Plan:
    """What ``oneosd ARGS`` does: show help, refuse, or (interview, then) exec *argv*."""

    argv: tuple[str, ...] = ()
    interview: bool = False
    home: Path = Path()
    help: bool = False
    error: str = ""
    #: settings given as flags: on a first run they answer their questions (and are saved)
    preset: dict[str, Any] = field(default_factory=dict)


def plan(
    args: Sequence[str],
    *,
    environ: Mapping[str, str],
    interactive: bool,
    exists: Callable[[Path], bool] = Path.exists,
) -> Plan:
    """Decide what ``oneosd ARGS`` does; *interactive*: stdin and stdout are a terminal."""
    own: set[str] = set()
    rest: list[str] = []
    options_over = False
    for arg in args:
        if options_over:
            rest.append(arg)
        elif arg in ("-h", "--help"):
            return Plan(help=True)
        elif arg in ("--configure", "--no-interview"):
            own.add(arg)
        else:
            options_over = arg == "--"
            rest.append(arg)
    if len(own) == 2:
        return Plan(error="--configure and --no-interview contradict each other")
    home = home_from(rest, environ)
    preset = flag_settings(rest)
    if preset is None:  # not for a runtime (--version) or unusable: twistd says what is wrong, no questions first
        interview = False
    elif "--configure" in own:
        interview = True
    elif "--no-interview" in own:
        interview = False
    else:
        interview = interactive and not exists(home / CONFIG_FILE)
    return Plan(argv=tuple(twistd_command("oneosd", *rest)), interview=interview, home=home, preset=preset or {})


def flag_settings(args: Sequence[str]) -> dict[str, Any] | None:
    """The settings *args* give as ``twistd -n oneosd`` flags, or None when they
    do not parse or ask for something else than a runtime (``--version``)."""
    from twisted.python import usage

    from oneos.runtime.tap import Flags

    if any(a in ("--version", "--help") for a in args[: list(args).index("--") if "--" in args else len(args)]):
        return None
    options = Flags()  # the flags only, no config read: 'oneos configure' refuses a bad value itself
    try:
        options.parseOptions(list(args))
    except usage.UsageError:
        return None
    return {k: v for k, v in options.overrides().items() if v is not None}


def home_from(args: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The OneOS home the runtime will use: its ``--home`` option, else ``$ONEOS_HOME`` or ``~/.oneos``."""
    home = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--home" and i + 1 < len(args):
            home = args[i + 1]
        elif arg.startswith("--home="):
            home = arg.split("=", 1)[1]
    return Path(home).expanduser() if home else oneos_home(dict(environ))


def help_text() -> str:
    """This script's options, then those of ``twistd -n oneosd`` that it passes on."""
    from oneos.runtime.tap import Options

    lines = str(Options()).splitlines()
    if lines and lines[0].strip() == Options.synopsis:
        lines = lines[1:]  # the synopsis, shown below with the command
    runtime = "\n".join(lines).strip("\n")
    return (
        f"{USAGE}\n\n{DESCRIPTION}\n\n"
        f"Runtime options, from 'twistd -n oneosd --help' (usage: twistd -n oneosd {Options.synopsis}):\n{runtime}"
    )


def _interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run ``oneosd``; returns only on help, errors or a cancelled interview (else it execs twistd)."""
    args = list(sys.argv[1:] if argv is None else argv)
    what = plan(args, environ=os.environ, interactive=_interactive())
    if what.help:
        print(help_text())
        return 0
    if what.error:
        print(f"{USAGE}\noneosd: {what.error}", file=sys.stderr)
        return 2
    if what.interview:
        from oneos.cli import configure
        from oneos.errors import OneOSError, describe

        print(f"Configuring this OneOS runtime ({what.home / CONFIG_FILE}); 'oneosd --no-interview' skips this.")
        try:
            status = configure.run(["--home", str(what.home)], preset=what.preset)
        except OneOSError as e:
            print(f"oneosd: {describe(e)}", file=sys.stderr)
            return 1
        if status:
            print("oneosd: not starting the runtime", file=sys.stderr)
            return status
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(what.argv[0], list(what.argv))
    except OSError as e:
        print(f"oneosd: cannot run {what.argv[0]}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

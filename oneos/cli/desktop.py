"""``oneos desktop [--open] [--user U]``: a one-time login to this machine's runtime's web desktop.

Like ``oneos`` itself, it talks to the runtime of this ``$ONEOS_HOME``
(``runtime.json``, written by that runtime once its front doors listen,
holds its desktop's URL).  It leaves a one-time token in
``$ONEOS_HOME/desktop-tokens/`` (a new file, mode 0600) for the user, and
prints ``URL/login?token=TOKEN``; that runtime accepts the token once,
within 2 minutes, and the browser is logged in.  Whoever can write this
home controls its runtime anyway, as with ``local_authorized_keys``, so no
password is asked.  ``--open`` opens the URL in the default browser.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
import webbrowser
from pathlib import Path

from oneos.errors import OneOSError

SUMMARY = "print a one-time login URL for this machine's web desktop (--open: open it in a browser)"


class DesktopClientError(OneOSError):
    """No runtime serves a desktop from this home."""


def _give_to_runtime(running: dict, home: Path, token_file: Path) -> None:
    """Run as root for a runtime of another account (``sudo oneos desktop``): the token becomes that account's.

    The runtime takes only a private file of its own account (and could not
    read root's 0700 directory).  Its account is its process's (Linux
    ``/proc``), else the home's owner.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(f"/proc/{int(running['pid'])}")
    except (OSError, KeyError, TypeError, ValueError):
        owner = home.stat()
    if owner.st_uid == 0:
        return
    for path in (token_file.parent, token_file):
        os.chown(path, owner.st_uid, owner.st_gid)


def run(argv: list[str]) -> int:
    from oneos.cli.shell import read_runtime_file
    from oneos.config import oneos_home
    from oneos.desktop.sessions import TOKEN_LIFETIME, new_login_token, sweep_token_files, write_token_file
    from oneos.shell.users import UserError, validate_user_name

    parser = argparse.ArgumentParser(
        prog="oneos desktop",
        description=(
            "Log in to the web desktop of the runtime running with this $ONEOS_HOME (the one 'oneos' "
            "opens the shell on) without a password: prints a one-time URL, valid once and for "
            f"{TOKEN_LIFETIME / 60:g} minutes. To use another runtime's desktop, open its address "
            "('desktop' in oneos status --json) and log in with a password from 'oneos user add'."
        ),
    )
    parser.add_argument("--open", action="store_true", help="also open the URL in the default web browser")
    parser.add_argument("--user", "-u", default=None, help="the OneOS user to log in as (default: your login name)")
    args = parser.parse_args(argv)
    home = oneos_home()
    user = args.user or getpass.getuser()
    try:
        validate_user_name(user)
    except UserError as e:
        raise DesktopClientError(f"{e}; give --user NAME") from None
    running = read_runtime_file(home)
    if not running:
        raise DesktopClientError(
            f"no runtime is running with ONEOS_HOME={home}: start one ('twistd -n oneosd'), "
            "or set ONEOS_HOME to the home of the one you mean"
        )
    url = str(running.get("desktop") or "")
    if not url:
        raise DesktopClientError(
            f"runtime {running.get('id', '?')} (pid {running.get('pid', '?')}) serves no desktop: listen.desktop "
            "is off, or its port was taken (its log says which); set listen.desktop (or --desktop) and restart it"
        )
    now = time.time()
    sweep_token_files(home, now)
    token = new_login_token(user, now)
    try:
        path = write_token_file(home, token)
        _give_to_runtime(running, home, path)
    except OSError as e:
        raise DesktopClientError(f"cannot write a login token into {home}: {e.strerror or e}") from None
    login = f"{url.rstrip('/')}/login?token={token.token}"
    print(login)
    if args.open and not webbrowser.open(login):
        print("oneos desktop: no web browser could be opened here; open the URL above yourself", file=sys.stderr)
    return 0
